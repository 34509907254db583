"""A scriptable fake LLM upstream: OpenAI (Chat Completions, Responses, Models), Anthropic
Messages and Ollama chat, served by aiohttp on loopback.

It is a real HTTP server so that tests, the ``make run`` demo and the benchmarks exercise real
sockets, real SSE/NDJSON framing and real disconnects. It must never be the bottleneck: no
per-request logging, orjson, replies precomputed as a list of frames, uvloop when importable.

Start it::

    python -m gateway.fakeupstream --port 9100 [--host 127.0.0.1] [--api-key K ...] [--models a,b]
    python manage.py fakeupstream --port 9100 ...

It prints ``fake upstream listening on http://HOST:PORT`` (the real port when ``--port 0``).

Endpoints (upstream base URL ``http://host:port/v1`` for OpenAI kinds, ``http://host:port`` for
Anthropic and Ollama)::

    POST /v1/chat/completions   POST /v1/responses   POST /v1/responses/compact   GET /v1/models
    POST /v1/messages           POST /api/chat       GET /api/tags
    GET|DELETE /_fake/requests  GET /_fake/stats     POST /_fake/stats/reset     GET /_fake/health
    POST|DELETE /_fake/keys     (per-credential failures: {"key", "status", "retry_after",
                                 "hold", "count"})

Auth: with one or more ``--api-key``, protocol requests must present one of them
(``Authorization: Bearer K``; Anthropic also ``x-api-key: K``, OpenAI also ``api-key: K``),
else 401 in the protocol's error shape. Without ``--api-key`` anything is accepted.
``/_fake/*`` never needs a key.

Directives (per request) come from headers ``x-fake-<name>: <value>`` (``-`` and ``_`` are
interchangeable in the name) and from ``[[fake name=value ...]]`` tokens anywhere in the raw
request body. Tokens override headers; with several tokens, later ones in the body win. Values
cannot contain whitespace or ``]``. Unknown names or bad values answer 400.

=================  ========================================================================
chunks=N           number of text deltas, default 3; chunk i is ``f"tok{i} "`` (max 100000)
echo=1             reply with the last user message's text (token removed, stripped), split
                   into ``chunks`` near-equal pieces
delay=S            seconds between streamed frames (events / chunks / lines)
hold=S             seconds to wait before sending status and headers (errors from status=
                   included; 401s for a bad key are not held)
status=CODE        answer this 4xx/5xx with the protocol's error body,
                   message ``fake upstream error CODE``
retry_after=S      with ``status``: add ``Retry-After: S``
cut=K              streams only: stop after the K-th content frame, before any terminal event
                   (with K >= the number of content frames, everything but the terminal events
                   is sent)
cut_mode=M         ``abort`` (default): drop the TCP connection mid-body; ``clean``: end the
                   body normally without the terminal events
tool=NAME          reply with a function call to NAME instead of text (``tool=`` with no
                   name turns it off again, e.g. from a later tool result in the history)
tools=N            N parallel calls named NAME, NAME_1, ... (default 1)
args=JSON          call arguments, a JSON object without spaces (default ``{"city":"Paris"}``);
                   each call's argument string is streamed in max(2, chunks) pieces
reasoning=1        add reasoning: Responses reasoning item (summary "thinking about it",
                   encrypted_content "enc_fake"), chat ``reasoning_content`` deltas, Anthropic
                   thinking block (signature "sig_fake"), Ollama ``message.thinking``
finish=length      truncated ending: chat ``length``, Responses ``incomplete``
                   (max_output_tokens), Anthropic ``max_tokens``, Ollama ``length``
usage=0            omit usage entirely
cached=N           cached input tokens (chat/Responses cached_tokens, Anthropic
                   cache_read_input_tokens)
reasoning_tokens=N reasoning_tokens in the output details (not added to output tokens)
json=1             answer with JSON even when a stream was requested
=================  ========================================================================

Usage rule (deterministic):

* input tokens = the number of whitespace-separated words (``len(s.split())``) summed over the
  strings found under the body's top-level ``messages``, ``input``, ``instructions`` and
  ``system`` keys, where a string counts when it is that top-level value itself (or an element of
  a top-level list) or sits under a key named ``content``, ``text`` or ``output`` (at any depth).
  So tool-call ``arguments``, ``name``, ``role``, ids, image URLs and ``encrypted_content`` do not
  count; ``[[fake ...]]`` tokens count like any other words. The text of a conversation gives
  the same number in chat, Responses, Anthropic or Ollama form (structured tool inputs aside).
* output tokens = the number of text chunks, or for tool calls the number of argument pieces
  over all calls; total = input + output.
* Anthropic reports ``input_tokens = max(0, input - cached)`` and
  ``cache_read_input_tokens = cached``, as Anthropic excludes cache reads from input_tokens.
* Ollama reports ``prompt_eval_count`` = input and ``eval_count`` = output.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

Json = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DEFAULT_MODELS: tuple[str, ...] = (
    "gpt-4o-mini",
    "gpt-5",
    "gpt-5-codex",
    "claude-sonnet-4-5",
    "llama3.2",
)
MODEL_CREATED = 1_700_000_000
RECORD_LIMIT = 500
MAX_CHUNKS = 100_000
DEFAULT_TOOL_ARGS = '{"city":"Paris"}'
REASONING_TEXT = "thinking about it"
REASONING_PIECES: tuple[str, ...] = ("thinking ", "about ", "it")
ENCRYPTED_REASONING = "enc_fake"
THINKING_SIGNATURE = "sig_fake"
SSE = "text/event-stream"
NDJSON = "application/x-ndjson"

# Frame kinds: what cut=K counts and where it must stop.
OTHER, CONTENT, TERMINAL = 0, 1, 2
Frame = tuple[bytes, int]

_TOKEN_RE = re.compile(rb"\[\[fake(?:\s([^\]]*))?\]\]")
_TOKEN_TEXT_RE = re.compile(r"\[\[fake(?:\s[^\]]*)?\]\]")
_TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_COUNTED_KEYS = frozenset({"content", "text", "output"})


def _new_hex() -> str:
    return os.urandom(12).hex()


# --------------------------------------------------------------------------- directives


class DirectiveError(ValueError):
    """A directive name or value the fake does not understand (answered with 400)."""


@dataclass(slots=True)
class Script:
    """What one request asked the fake to do; defaults give a plain 3-chunk text reply."""

    chunks: int = 3
    echo: bool = False
    delay: float = 0.0
    hold: float = 0.0
    status: int = 0
    retry_after: str | None = None
    cut: int | None = None
    cut_mode: str = "abort"
    tool: str | None = None
    tools: int = 1
    args: str = DEFAULT_TOOL_ARGS
    reasoning: bool = False
    finish: str = "stop"
    usage: bool = True
    cached: int = 0
    reasoning_tokens: int = 0
    force_json: bool = False


def _number(cast: Callable[[str], Any], low: float, high: float) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        number = cast(value)
        if not low <= number <= high:
            raise ValueError(value)
        return number

    return parse


_count = _number(int, 0, sys.maxsize)
_seconds = _number(float, 0, 86_400)


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _retry_after(value: str) -> str:
    _seconds(value)
    return value


def _tool_name(value: str) -> str | None:
    # An empty value switches a tool call asked for earlier in the history back to text, so a
    # tool round trip can end: put "[[fake tool=]]" in the tool result.
    if not value:
        return None
    if not _TOOL_NAME_RE.match(value):
        raise ValueError(value)
    return value


def _tool_args(value: str) -> str:
    parsed = orjson.loads(value)
    if not isinstance(parsed, dict):
        raise ValueError(value)
    # Re-serialise compactly so every protocol streams the very same argument string.
    return orjson.dumps(parsed).decode()


def _one_of(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in allowed:
            raise ValueError(value)
        return value

    return parse


_DIRECTIVES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "chunks": ("chunks", _number(int, 0, MAX_CHUNKS)),
    "echo": ("echo", _flag),
    "delay": ("delay", _seconds),
    "hold": ("hold", _seconds),
    "status": ("status", _number(int, 400, 599)),
    "retry_after": ("retry_after", _retry_after),
    "cut": ("cut", _count),
    "cut_mode": ("cut_mode", _one_of("abort", "clean")),
    "tool": ("tool", _tool_name),
    "tools": ("tools", _number(int, 1, 128)),
    "args": ("args", _tool_args),
    "reasoning": ("reasoning", _flag),
    "finish": ("finish", _one_of("stop", "length")),
    "usage": ("usage", _flag),
    "cached": ("cached", _count),
    "reasoning_tokens": ("reasoning_tokens", _count),
    "json": ("force_json", _flag),
}


def _token_pairs(raw_token: bytes) -> list[tuple[str, str]]:
    # The token sits inside a JSON string, so quotes in args= arrive escaped (\"): unescape it.
    try:
        text = orjson.loads(b'"' + raw_token + b'"')
    except orjson.JSONDecodeError:
        text = raw_token.decode("utf-8", "replace")
    pairs = []
    for word in text.split():
        name, sep, value = word.partition("=")
        if not sep:
            raise DirectiveError(f"fake directive {word!r} is not name=value")
        pairs.append((name, value))
    return pairs


def parse_script(headers: Mapping[str, str], raw_body: bytes) -> Script:
    """Collect directives from x-fake-* headers, then [[fake ...]] tokens in the body."""
    pairs = [
        (key[7:], value) for key, value in headers.items() if key.lower().startswith("x-fake-")
    ]
    if b"[[fake" in raw_body:
        for match in _TOKEN_RE.finditer(raw_body):
            if match.group(1):
                pairs.extend(_token_pairs(match.group(1)))
    script = Script()
    for name, value in pairs:
        key = name.strip().lower().replace("-", "_")
        if key not in _DIRECTIVES:
            raise DirectiveError(f"unknown fake directive {name!r}")
        attr, parse = _DIRECTIVES[key]
        try:
            setattr(script, attr, parse(value.strip()))
        except (ValueError, orjson.JSONDecodeError) as exc:
            raise DirectiveError(f"invalid fake directive {name}={value}") from exc
    return script


# --------------------------------------------------------------------------- reply plan


@dataclass(frozen=True, slots=True)
class Usage:
    input: int
    output: int
    cached: int
    reasoning: int

    @property
    def total(self) -> int:
        return self.input + self.output


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: str
    pieces: list[str]
    # One hex suffix per call so call_/fc_/toolu_ ids stay recognisably the same call.
    hex: str

    @property
    def call_id(self) -> str:
        return f"call_{self.hex}"


@dataclass(slots=True)
class Reply:
    """The protocol-neutral answer; each protocol only renders it."""

    model: str
    pieces: list[str]
    calls: list[ToolCall]
    reasoning: bool
    finish: str  # chat vocabulary: stop | length | tool_calls
    usage: Usage | None
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def count_input_words(body: Json) -> int:
    """Input tokens per the module docstring's usage rule."""
    return sum(
        _words(body.get(key), True) for key in ("messages", "input", "instructions", "system")
    )


def _words(node: Any, counted: bool) -> int:
    if isinstance(node, str):
        return len(node.split()) if counted else 0
    if isinstance(node, list):
        return sum(_words(item, counted) for item in node)
    if isinstance(node, dict):
        return sum(_words(value, key in _COUNTED_KEYS) for key, value in node.items())
    return 0


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def last_user_text(body: Json) -> str:
    """The text of the last user message that has any, across all four request shapes."""
    items = body.get("messages")
    if items is None:
        items = body.get("input")
    if isinstance(items, str):
        return items
    for item in reversed(items if isinstance(items, list) else []):
        if isinstance(item, dict) and item.get("role") == "user":
            text = _content_text(item.get("content"))
            if text:
                return text
    return ""


def split_text(text: str, parts: int) -> list[str]:
    """Split into `parts` contiguous near-equal pieces (fewer when the text is shorter)."""
    parts = min(parts, len(text))
    if parts <= 0:
        return []
    size, extra = divmod(len(text), parts)
    pieces, start = [], 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces


def plan_reply(body: Json, script: Script) -> Reply:
    calls: list[ToolCall] = []
    pieces: list[str] = []
    if script.tool:
        for index in range(script.tools):
            name = script.tool if index == 0 else f"{script.tool}_{index}"
            arg_pieces = split_text(script.args, max(2, script.chunks))
            calls.append(ToolCall(name, script.args, arg_pieces, _new_hex()))
        output = sum(len(call.pieces) for call in calls)
    else:
        if script.echo:
            echoed = _TOKEN_TEXT_RE.sub("", last_user_text(body)).strip()
            pieces = split_text(echoed, script.chunks)
        else:
            pieces = [f"tok{index} " for index in range(script.chunks)]
        output = len(pieces)
    if script.finish == "length":
        finish = "length"
    else:
        finish = "tool_calls" if calls else "stop"
    usage = None
    if script.usage:
        usage = Usage(count_input_words(body), output, script.cached, script.reasoning_tokens)
    model = body.get("model")
    return Reply(
        model=model if isinstance(model, str) and model else "fake-model",
        pieces=pieces,
        calls=calls,
        reasoning=script.reasoning,
        finish=finish,
        usage=usage,
    )


# --------------------------------------------------------------------------- sending


class EventFrames:
    """Collects `event:` + `data:` SSE frames; numbered=True adds OpenAI's sequence_number."""

    def __init__(self, numbered: bool) -> None:
        self.frames: list[Frame] = []
        self._numbered = numbered
        self._sequence = 0

    def add(self, event_type: str, kind: int = OTHER, **fields: Any) -> None:
        payload: Json = {"type": event_type}
        if self._numbered:
            payload["sequence_number"] = self._sequence
            self._sequence += 1
        payload.update(fields)
        data = b"event: " + event_type.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
        self.frames.append((data, kind))


def _truncate(frames: Sequence[Frame], cut: int) -> list[Frame]:
    kept: list[Frame] = []
    seen = 0
    for frame in frames:
        kind = frame[1]
        if kind == TERMINAL or (kind == CONTENT and seen == cut):
            break
        kept.append(frame)
        seen += kind == CONTENT
    return kept


async def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is None:
        return
    # abort() discards what is still buffered in user space; wait until the frames reached the
    # kernel so the client sees exactly the K chunks, then break the chunked body mid-way.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2.0
    # asyncio offers no event for "write buffer empty", hence the short poll.
    while transport.get_write_buffer_size() and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    transport.abort()


async def send_stream(
    request: web.Request, content_type: str, frames: list[Frame], script: Script
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": content_type,
            "Cache-Control": "no-cache",
            "X-Request-Id": f"req_{_new_hex()}",
        }
    )
    if script.cut is not None:
        frames = _truncate(frames, script.cut)
    await response.prepare(request)
    if script.delay > 0:
        for index, (data, _kind) in enumerate(frames):
            if index:
                await asyncio.sleep(script.delay)
            await response.write(data)
    elif frames:
        # One write for the whole body: nobody can observe pacing without a delay anyway.
        await response.write(b"".join(data for data, _kind in frames))
    if script.cut is not None and script.cut_mode == "abort":
        await _abort(request)
        return response
    await response.write_eof()
    return response


async def send_json(
    request: web.Request, payload: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    # Sent here rather than by aiohttp after return, so /_fake/stats inflight covers the send.
    response = web.Response(
        body=orjson.dumps(payload),
        status=status,
        content_type="application/json",
        headers={"X-Request-Id": f"req_{_new_hex()}", **(headers or {})},
    )
    await response.prepare(request)
    await response.write_eof()
    return response


def _wants_stream(body: Json, script: Script, default: bool = False) -> bool:
    return bool(body.get("stream", default)) and not script.force_json


# --------------------------------------------------------------------------- errors


_OPENAI_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request_error"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "permission_denied"),
    404: ("not_found_error", "not_found"),
    429: ("rate_limit_exceeded", "rate_limit_exceeded"),
}
_ANTHROPIC_ERRORS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def openai_error(status: int, message: str) -> Json:
    default = ("server_error", "server_error") if status >= 500 else _OPENAI_ERRORS[400]
    error_type, code = _OPENAI_ERRORS.get(status, default)
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


def anthropic_error(status: int, message: str) -> Json:
    default = "api_error" if status >= 500 else "invalid_request_error"
    error_type = _ANTHROPIC_ERRORS.get(status, default)
    return {"type": "error", "error": {"type": error_type, "message": message}}


def ollama_error(status: int, message: str) -> Json:
    return {"error": message}


@dataclass(frozen=True, slots=True)
class Protocol:
    name: str
    error_body: Callable[[int, str], Json]
    accepts_x_api_key: bool = False


OPENAI = Protocol("openai", openai_error)
ANTHROPIC = Protocol("anthropic", anthropic_error, accepts_x_api_key=True)
OLLAMA = Protocol("ollama", ollama_error)


# --------------------------------------------------------------------------- chat completions


def _chat_usage(usage: Usage) -> Json:
    return {
        "prompt_tokens": usage.input,
        "completion_tokens": usage.output,
        "total_tokens": usage.total,
        "prompt_tokens_details": {"cached_tokens": usage.cached},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning},
    }


def _chat_tool_calls(reply: Reply) -> list[Json]:
    return [
        {
            "id": call.call_id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        for call in reply.calls
    ]


def chat_completion(reply: Reply, completion_id: str) -> Json:
    message: Json = {
        "role": "assistant",
        "content": None if reply.calls else reply.text,
        "refusal": None,
        "annotations": [],
    }
    if reply.reasoning:
        message["reasoning_content"] = REASONING_TEXT
    if reply.calls:
        message["tool_calls"] = _chat_tool_calls(reply)
    payload: Json = {
        "id": completion_id,
        "object": "chat.completion",
        "created": reply.created,
        "model": reply.model,
        "system_fingerprint": None,
        "choices": [
            {"index": 0, "finish_reason": reply.finish, "logprobs": None, "message": message}
        ],
    }
    if reply.usage is not None:
        payload["usage"] = _chat_usage(reply.usage)
    return payload


def chat_frames(reply: Reply, completion_id: str, include_usage: bool) -> list[Frame]:
    base: Json = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": reply.created,
        "model": reply.model,
        "system_fingerprint": None,
    }
    if include_usage:
        base["usage"] = None

    def chunk(delta: Json, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"

    frames: list[Frame] = [
        (chunk({"role": "assistant", "content": None if reply.calls else ""}), OTHER)
    ]
    if reply.reasoning:
        frames += [(chunk({"reasoning_content": piece}), OTHER) for piece in REASONING_PIECES]
    frames += [(chunk({"content": piece}), CONTENT) for piece in reply.pieces]
    for index, call in enumerate(reply.calls):
        opening = {
            "index": index,
            "id": call.call_id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        frames.append((chunk({"tool_calls": [opening]}), OTHER))
        for piece in call.pieces:
            fragment = {"index": index, "function": {"arguments": piece}}
            frames.append((chunk({"tool_calls": [fragment]}), CONTENT))
    frames.append((chunk({}, reply.finish), TERMINAL))
    if include_usage and reply.usage is not None:
        usage_chunk = {**base, "choices": [], "usage": _chat_usage(reply.usage)}
        frames.append((b"data: " + orjson.dumps(usage_chunk) + b"\n\n", TERMINAL))
    frames.append((b"data: [DONE]\n\n", TERMINAL))
    return frames


async def reply_chat(request: web.Request, body: Json, script: Script) -> web.StreamResponse:
    reply = plan_reply(body, script)
    completion_id = f"chatcmpl-{_new_hex()}"
    if not _wants_stream(body, script):
        return await send_json(request, chat_completion(reply, completion_id))
    stream_options = body.get("stream_options")
    include_usage = isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))
    frames = chat_frames(reply, completion_id, include_usage)
    return await send_stream(request, SSE, frames, script)


# --------------------------------------------------------------------------- responses


def _responses_usage(usage: Usage) -> Json:
    return {
        "input_tokens": usage.input,
        "input_tokens_details": {"cached_tokens": usage.cached, "cache_write_tokens": 0},
        "output_tokens": usage.output,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning},
        "total_tokens": usage.total,
    }


def _response_object(
    body: Json, reply: Reply, response_id: str, output: list[Json], done: bool
) -> Json:
    incomplete = reply.finish == "length"
    status = ("incomplete" if incomplete else "completed") if done else "in_progress"
    payload: Json = {
        "id": response_id,
        "object": "response",
        "created_at": reply.created,
        "status": status,
        "model": reply.model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if done and incomplete else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "top_p": body.get("top_p", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "truncation": body.get("truncation", "disabled"),
        "background": False,
        "metadata": body.get("metadata") or {},
        "user": body.get("user"),
        "usage": None,
    }
    if done:
        if reply.usage is None:
            del payload["usage"]
        else:
            payload["usage"] = _responses_usage(reply.usage)
    return payload


@dataclass(frozen=True, slots=True)
class ResponseItems:
    """Final output items of one response, with the ids shared by stream and JSON forms."""

    reasoning_id: str
    message_id: str
    reply: Reply

    def reasoning(self) -> Json:
        summary = [{"type": "summary_text", "text": REASONING_TEXT}]
        return {
            "id": self.reasoning_id,
            "type": "reasoning",
            "summary": summary,
            "encrypted_content": ENCRYPTED_REASONING,
        }

    def message(self) -> Json:
        status = "incomplete" if self.reply.finish == "length" else "completed"
        return {
            "id": self.message_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [_output_text(self.reply.text)],
        }

    def function_call(self, call: ToolCall, arguments: str, status: str = "completed") -> Json:
        return {
            "id": f"fc_{call.hex}",
            "type": "function_call",
            "status": status,
            "call_id": call.call_id,
            "name": call.name,
            "arguments": arguments,
        }

    def output(self) -> list[Json]:
        items = [self.reasoning()] if self.reply.reasoning else []
        if not self.reply.calls:
            items.append(self.message())
        items += [self.function_call(call, call.arguments) for call in self.reply.calls]
        return items


def _output_text(text: str) -> Json:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _reasoning_events(events: EventFrames, items: ResponseItems, index: int) -> None:
    item_id = items.reasoning_id
    added = {"id": item_id, "type": "reasoning", "summary": []}
    where: Json = {"item_id": item_id, "output_index": index, "summary_index": 0}
    events.add("response.output_item.added", output_index=index, item=added)
    events.add(
        "response.reasoning_summary_part.added", **where, part={"type": "summary_text", "text": ""}
    )
    for piece in REASONING_PIECES:
        events.add("response.reasoning_summary_text.delta", **where, delta=piece)
    events.add("response.reasoning_summary_text.done", **where, text=REASONING_TEXT)
    part = {"type": "summary_text", "text": REASONING_TEXT}
    events.add("response.reasoning_summary_part.done", **where, part=part)
    events.add("response.output_item.done", output_index=index, item=items.reasoning())


def _message_events(events: EventFrames, items: ResponseItems, index: int) -> None:
    reply = items.reply
    added = {
        "id": items.message_id,
        "type": "message",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    where: Json = {"item_id": items.message_id, "output_index": index, "content_index": 0}
    events.add("response.output_item.added", output_index=index, item=added)
    events.add("response.content_part.added", **where, part=_output_text(""))
    for piece in reply.pieces:
        events.add("response.output_text.delta", CONTENT, **where, delta=piece, logprobs=[])
    events.add("response.output_text.done", **where, text=reply.text, logprobs=[])
    events.add("response.content_part.done", **where, part=_output_text(reply.text))
    events.add("response.output_item.done", output_index=index, item=items.message())


def _function_call_events(
    events: EventFrames, items: ResponseItems, call: ToolCall, index: int
) -> None:
    item_id = f"fc_{call.hex}"
    added = items.function_call(call, "", status="in_progress")
    where: Json = {"item_id": item_id, "output_index": index}
    events.add("response.output_item.added", output_index=index, item=added)
    for piece in call.pieces:
        events.add("response.function_call_arguments.delta", CONTENT, **where, delta=piece)
    events.add("response.function_call_arguments.done", **where, arguments=call.arguments)
    events.add(
        "response.output_item.done",
        output_index=index,
        item=items.function_call(call, call.arguments),
    )


def responses_frames(
    body: Json, reply: Reply, response_id: str, items: ResponseItems
) -> list[Frame]:
    events = EventFrames(numbered=True)
    pending = _response_object(body, reply, response_id, [], done=False)
    events.add("response.created", response=pending)
    events.add("response.in_progress", response=pending)
    index = 0
    if reply.reasoning:
        _reasoning_events(events, items, index)
        index += 1
    if not reply.calls:
        _message_events(events, items, index)
        index += 1
    for call in reply.calls:
        _function_call_events(events, items, call, index)
        index += 1
    final = _response_object(body, reply, response_id, items.output(), done=True)
    terminal = "response.incomplete" if reply.finish == "length" else "response.completed"
    events.add(terminal, TERMINAL, response=final)
    return events.frames


async def reply_responses(request: web.Request, body: Json, script: Script) -> web.StreamResponse:
    reply = plan_reply(body, script)
    response_id = f"resp_{_new_hex()}"
    items = ResponseItems(f"rs_{_new_hex()}", f"msg_{_new_hex()}", reply)
    if not _wants_stream(body, script):
        payload = _response_object(body, reply, response_id, items.output(), done=True)
        return await send_json(request, payload)
    frames = responses_frames(body, reply, response_id, items)
    return await send_stream(request, SSE, frames, script)


def _user_messages(body: Json) -> list[Json]:
    source = body.get("input")
    if isinstance(source, str):
        source = [{"role": "user", "content": source}]
    messages = []
    for item in source if isinstance(source, list) else []:
        if not isinstance(item, dict) or item.get("role") != "user":
            continue
        if item.get("type", "message") != "message":
            continue
        content = item.get("content")
        if isinstance(content, str):
            content = [{"type": "input_text", "text": content}]
        messages.append({"type": "message", "role": "user", "content": content})
    return messages


async def reply_compact(request: web.Request, body: Json, script: Script) -> web.StreamResponse:
    """PROTOCOL.md 5.1: the user messages followed by one opaque compaction item."""
    reply = plan_reply(body, script)
    compaction = {
        "type": "compaction",
        "id": f"cmp_{_new_hex()}",
        "encrypted_content": f"enc_compact_{_new_hex()}",
    }
    payload: Json = {
        "id": f"cmp_{_new_hex()}",
        "object": "response.compaction",
        "created_at": reply.created,
        "output": [*_user_messages(body), compaction],
    }
    if reply.usage is not None:
        payload["usage"] = _responses_usage(reply.usage)
    return await send_json(request, payload)


# --------------------------------------------------------------------------- anthropic


_STOP_REASONS = {"stop": "end_turn", "tool_calls": "tool_use", "length": "max_tokens"}


def _anthropic_usage(usage: Usage) -> Json:
    return {
        "input_tokens": max(0, usage.input - usage.cached),
        "output_tokens": usage.output,
        "cache_read_input_tokens": usage.cached,
        "cache_creation_input_tokens": 0,
    }


def anthropic_message(reply: Reply, message_id: str) -> Json:
    content: list[Json] = []
    if reply.reasoning:
        content.append(
            {"type": "thinking", "thinking": REASONING_TEXT, "signature": THINKING_SIGNATURE}
        )
    if not reply.calls:
        content.append({"type": "text", "text": reply.text})
    for call in reply.calls:
        tool_input = orjson.loads(call.arguments)
        content.append(
            {"type": "tool_use", "id": f"toolu_{call.hex}", "name": call.name, "input": tool_input}
        )
    payload: Json = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": content,
        "stop_reason": _STOP_REASONS[reply.finish],
        "stop_sequence": None,
    }
    if reply.usage is not None:
        payload["usage"] = _anthropic_usage(reply.usage)
    return payload


def anthropic_frames(reply: Reply, message_id: str) -> list[Frame]:
    events = EventFrames(numbered=False)
    start = anthropic_message(reply, message_id)
    start.update(content=[], stop_reason=None)
    if reply.usage is not None:
        # Anthropic sends the final output count in message_delta; start carries input only.
        start["usage"] = {**_anthropic_usage(reply.usage), "output_tokens": 0}
    events.add("message_start", message=start)
    events.add("ping")
    index = 0
    if reply.reasoning:
        block = {"type": "thinking", "thinking": "", "signature": ""}
        events.add("content_block_start", index=index, content_block=block)
        for piece in REASONING_PIECES:
            delta = {"type": "thinking_delta", "thinking": piece}
            events.add("content_block_delta", index=index, delta=delta)
        signature = {"type": "signature_delta", "signature": THINKING_SIGNATURE}
        events.add("content_block_delta", index=index, delta=signature)
        events.add("content_block_stop", index=index)
        index += 1
    if not reply.calls:
        events.add("content_block_start", index=index, content_block={"type": "text", "text": ""})
        for piece in reply.pieces:
            delta = {"type": "text_delta", "text": piece}
            events.add("content_block_delta", CONTENT, index=index, delta=delta)
        events.add("content_block_stop", index=index)
        index += 1
    for call in reply.calls:
        block = {"type": "tool_use", "id": f"toolu_{call.hex}", "name": call.name, "input": {}}
        events.add("content_block_start", index=index, content_block=block)
        for piece in call.pieces:
            delta = {"type": "input_json_delta", "partial_json": piece}
            events.add("content_block_delta", CONTENT, index=index, delta=delta)
        events.add("content_block_stop", index=index)
        index += 1
    final: Json = {"delta": {"stop_reason": _STOP_REASONS[reply.finish], "stop_sequence": None}}
    if reply.usage is not None:
        final["usage"] = {"output_tokens": reply.usage.output}
    events.add("message_delta", TERMINAL, **final)
    events.add("message_stop", TERMINAL)
    return events.frames


async def reply_anthropic(request: web.Request, body: Json, script: Script) -> web.StreamResponse:
    reply = plan_reply(body, script)
    message_id = f"msg_{_new_hex()}"
    if not _wants_stream(body, script):
        return await send_json(request, anthropic_message(reply, message_id))
    return await send_stream(request, SSE, anthropic_frames(reply, message_id), script)


# --------------------------------------------------------------------------- ollama


def _ollama_done(reply: Reply, created_at: str) -> Json:
    done: Json = {
        "model": reply.model,
        "created_at": created_at,
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "length" if reply.finish == "length" else "stop",
    }
    if reply.usage is not None:
        # Durations are fixed fakes (ns); only the counts carry meaning.
        done.update(
            total_duration=1_000_000,
            load_duration=1_000,
            prompt_eval_count=reply.usage.input,
            prompt_eval_duration=100_000,
            eval_count=reply.usage.output,
            eval_duration=500_000,
        )
    return done


def _ollama_tool_calls(reply: Reply) -> list[Json]:
    return [
        {"function": {"name": call.name, "arguments": orjson.loads(call.arguments)}}
        for call in reply.calls
    ]


def ollama_message(reply: Reply, created_at: str) -> Json:
    payload = _ollama_done(reply, created_at)
    message: Json = {"role": "assistant", "content": reply.text}
    if reply.reasoning:
        message["thinking"] = REASONING_TEXT
    if reply.calls:
        message["tool_calls"] = _ollama_tool_calls(reply)
    payload["message"] = message
    return payload


def ollama_frames(reply: Reply, created_at: str) -> list[Frame]:
    def line(message: Json, kind: int) -> Frame:
        obj = {"model": reply.model, "created_at": created_at, "message": message, "done": False}
        return orjson.dumps(obj) + b"\n", kind

    frames: list[Frame] = []
    if reply.reasoning:
        frames += [
            line({"role": "assistant", "content": "", "thinking": piece}, OTHER)
            for piece in REASONING_PIECES
        ]
    frames += [line({"role": "assistant", "content": piece}, CONTENT) for piece in reply.pieces]
    if reply.calls:
        # Ollama sends tool calls whole, in one line, never as argument fragments.
        message = {"role": "assistant", "content": "", "tool_calls": _ollama_tool_calls(reply)}
        frames.append(line(message, CONTENT))
    frames.append((orjson.dumps(_ollama_done(reply, created_at)) + b"\n", TERMINAL))
    return frames


async def reply_ollama(request: web.Request, body: Json, script: Script) -> web.StreamResponse:
    reply = plan_reply(body, script)
    created_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    # Real Ollama streams unless told "stream": false.
    if not _wants_stream(body, script, default=True):
        return await send_json(request, ollama_message(reply, created_at))
    return await send_stream(request, NDJSON, ollama_frames(reply, created_at), script)


# --------------------------------------------------------------------------- app state


@dataclass(slots=True)
class FakeState:
    api_keys: frozenset[str]
    models_body: Json
    tags_body: Json
    requests: deque[Json] = field(default_factory=lambda: deque(maxlen=RECORD_LIMIT))
    total: int = 0
    inflight: int = 0
    max_inflight: int = 0
    # Per-credential behaviour set through POST /_fake/keys: credential -> {"status",
    # "retry_after", "hold", "count"} (count: how many requests it applies to; -1: all).
    by_key: dict[str, Json] = field(default_factory=dict)

    def record(self, request: web.Request, body: Any) -> None:
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "headers": {key.lower(): value for key, value in request.headers.items()},
                "body": body,
                "time": time.time(),
            }
        )

    def stats(self) -> Json:
        return {"total": self.total, "inflight": self.inflight, "max_inflight": self.max_inflight}


STATE = web.AppKey("fake_state", FakeState)
ReplyFn = Callable[[web.Request, Json, Script], Awaitable[web.StreamResponse]]


def _presented_key(request: web.Request, protocol: Protocol) -> str | None:
    if protocol.accepts_x_api_key and "x-api-key" in request.headers:
        return request.headers["x-api-key"]
    if protocol is OPENAI and "api-key" in request.headers:  # Azure OpenAI's header
        return request.headers["api-key"]
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


async def _serve_protocol(
    request: web.Request, state: FakeState, protocol: Protocol, reply: ReplyFn
) -> web.StreamResponse:
    raw = await request.read()
    body: Any = None
    valid = True
    if raw:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            valid = False
    state.record(request, body)

    async def error(
        status: int, message: str, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        return await send_json(request, protocol.error_body(status, message), status, headers)

    presented = _presented_key(request, protocol)
    if state.api_keys and presented not in state.api_keys:
        return await error(401, "invalid api key")
    scripted = state.by_key.get(presented or "")
    if scripted is not None:
        if scripted.get("count", -1) > 0:
            scripted["count"] -= 1
            if scripted["count"] == 0:
                del state.by_key[presented or ""]
        if scripted.get("hold"):
            await asyncio.sleep(float(scripted["hold"]))
        if scripted.get("status"):
            status = int(scripted["status"])
            after = scripted.get("retry_after")
            return await error(status, f"fake upstream error {status}",
                               {"Retry-After": str(after)} if after else None)
    if not valid or (raw and not isinstance(body, dict)):
        return await error(400, "request body must be a JSON object")
    try:
        script = parse_script(request.headers, raw)
    except DirectiveError as exc:
        return await error(400, str(exc))
    if script.hold:
        await asyncio.sleep(script.hold)
    if script.status:
        headers = {"Retry-After": script.retry_after} if script.retry_after else None
        return await error(script.status, f"fake upstream error {script.status}", headers)
    return await reply(request, body or {}, script)


def _endpoint(protocol: Protocol, reply: ReplyFn) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        state.total += 1
        state.inflight += 1
        state.max_inflight = max(state.max_inflight, state.inflight)
        try:
            return await _serve_protocol(request, state, protocol, reply)
        except ConnectionError:
            # The client went away while we wrote; there is nobody left to answer.
            return web.Response(status=499)
        finally:
            state.inflight -= 1

    return handle


def _listing(key: str) -> ReplyFn:
    async def reply(request: web.Request, body: Json, script: Script) -> web.StreamResponse:
        state = request.app[STATE]
        return await send_json(request, state.models_body if key == "models" else state.tags_body)

    return reply


# --------------------------------------------------------------------------- control endpoints


async def get_requests(request: web.Request) -> web.Response:
    return web.json_response(list(request.app[STATE].requests), dumps=_dumps)


async def clear_requests(request: web.Request) -> web.Response:
    request.app[STATE].requests.clear()
    return web.json_response({"ok": True}, dumps=_dumps)


async def get_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].stats(), dumps=_dumps)


async def reset_stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.total = 0
    # Requests still running keep counting; restart the high-water mark from them.
    state.max_inflight = state.inflight
    return web.json_response(state.stats(), dumps=_dumps)


async def script_key(request: web.Request) -> web.Response:
    """POST {"key", "status"?, "retry_after"?, "hold"?, "count"?}: make every request that
    presents this credential fail (or wait) so tests can fail one credential of many."""
    spec = await request.json(loads=orjson.loads)
    if not isinstance(spec, dict) or not isinstance(spec.get("key"), str):
        return web.json_response({"error": "send an object with a string 'key'"}, status=400,
                                 dumps=_dumps)
    request.app[STATE].by_key[spec["key"]] = spec
    return web.json_response({"ok": True}, dumps=_dumps)


async def clear_keys(request: web.Request) -> web.Response:
    request.app[STATE].by_key.clear()
    return web.json_response({"ok": True}, dumps=_dumps)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True}, dumps=_dumps)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


# --------------------------------------------------------------------------- app and server


def _models_body(models: Sequence[str]) -> Json:
    data = [
        {"id": name, "object": "model", "created": MODEL_CREATED, "owned_by": "fakeupstream"}
        for name in models
    ]
    return {"object": "list", "data": data}


def _tags_body(models: Sequence[str]) -> Json:
    details = {
        "format": "gguf",
        "family": "fake",
        "parameter_size": "1B",
        "quantization_level": "Q4_0",
    }
    tags = [
        {
            "name": name,
            "model": name,
            "modified_at": "2024-01-01T00:00:00Z",
            "size": 1_000_000,
            "digest": f"sha256:{index:064x}",
            "details": details,
        }
        for index, name in enumerate(models)
    ]
    return {"models": tags}


def build_app(
    api_keys: list[str] | None = None, models: list[str] | None = None
) -> web.Application:
    """The fake upstream app. Run it with handler_cancellation=True (as serve() does) so a
    client disconnect cancels the handler at once, even while it sleeps between frames."""
    model_names = tuple(models) if models else DEFAULT_MODELS
    # Codex-sized histories grow past aiohttp's 1 MiB default body limit.
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app[STATE] = FakeState(
        api_keys=frozenset(api_keys or ()),
        models_body=_models_body(model_names),
        tags_body=_tags_body(model_names),
    )
    app.router.add_post("/v1/chat/completions", _endpoint(OPENAI, reply_chat))
    app.router.add_post("/v1/responses", _endpoint(OPENAI, reply_responses))
    app.router.add_post("/v1/responses/compact", _endpoint(OPENAI, reply_compact))
    app.router.add_get("/v1/models", _endpoint(OPENAI, _listing("models")), allow_head=False)
    app.router.add_post("/v1/messages", _endpoint(ANTHROPIC, reply_anthropic))
    app.router.add_post("/api/chat", _endpoint(OLLAMA, reply_ollama))
    app.router.add_get("/api/tags", _endpoint(OLLAMA, _listing("tags")), allow_head=False)
    app.router.add_get("/_fake/requests", get_requests, allow_head=False)
    app.router.add_delete("/_fake/requests", clear_requests)
    app.router.add_get("/_fake/stats", get_stats, allow_head=False)
    app.router.add_post("/_fake/stats/reset", reset_stats)
    app.router.add_get("/_fake/health", health, allow_head=False)
    app.router.add_post("/_fake/keys", script_key)
    app.router.add_delete("/_fake/keys", clear_keys)
    return app


async def _run(app: web.Application, host: str, port: int,
               announce: Callable[[str], None] | None = None) -> None:
    runner = web.AppRunner(
        app,
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=1.0,
        # Codex sends large metadata headers (x-codex-turn-metadata).
        max_field_size=65_536,
        max_line_size=65_536,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
    await site.start()
    bound_port = runner.addresses[0][1] if port == 0 else port
    url_host = f"[{host}]" if ":" in host else host
    url = f"http://{url_host}:{bound_port}"
    if announce is None:
        print(f"fake upstream listening on {url}", flush=True)
    else:
        announce(url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):
            pass  # not on the main thread or not supported: rely on the default handlers
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    api_keys: list[str] | None = None,
    models: list[str] | None = None,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Run the fake upstream until SIGINT/SIGTERM (blocking). ``announce`` is called with
    its URL once it listens (default: print ``fake upstream listening on URL``)."""
    app = build_app(api_keys, models)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_run(app, host, port, announce))


def split_models(value: str | None) -> list[str] | None:
    names = [name.strip() for name in (value or "").split(",") if name.strip()]
    return names or None


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.fakeupstream", description="Scriptable fake LLM upstream."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--api-key", action="append", dest="api_keys", help="repeatable")
    parser.add_argument("--models", help="comma-separated model ids for /v1/models and /api/tags")
    args = parser.parse_args(list(argv) if argv is not None else None)
    serve(args.host, args.port, args.api_keys, split_models(args.models))


if __name__ == "__main__":
    main(sys.argv[1:])
