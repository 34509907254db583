"""Ollama ``/api/chat``: build the upstream body from a canonical request and decode its
answers (one JSON object, or an NDJSON stream of them) into canonical events.

Ollama's chat API differs from OpenAI's in ways that shape this module:

* it streams unless told otherwise, so ``stream`` is always written out;
* images travel inline only, as bare base64 strings in a message's ``images`` list;
* tool call arguments are JSON objects, not JSON text, and (before Ollama 0.12.10) calls
  carry no ids, so the decoder makes ids up and results are matched by ``tool_name``;
* sampling settings live under ``options`` and the output limit is ``num_predict``;
* tool calls arrive whole, each in one stream line, never as argument fragments;
* usage is ``prompt_eval_count`` / ``eval_count`` on the final (``done``) object.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from gateway.translate.canonical import (
    CanonicalRequest,
    Event,
    Failure,
    Finish,
    FinishReason,
    Message,
    Opaque,
    Part,
    Reasoning,
    ReasoningDelta,
    ReasoningDone,
    Start,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolResult,
    TranslationError,
    UsageReport,
    open_reasoning,
)
from gateway.wire.usage import Usage

log = logging.getLogger(__name__)

Json = dict[str, Any]

# Ollama's ``think`` takes true/false or, for models with levels (gpt-oss), "low" |
# "medium" | "high". OpenAI's extra levels fold onto the nearest one; "none" turns it off.
_THINK: dict[str, str | bool] = {
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "high",
    "none": False,
}

_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length"}


# --- request ------------------------------------------------------------------------------


def build_request(req: CanonicalRequest, model: str) -> dict[str, Any]:
    """The ``/api/chat`` body for ``req``, addressed to the upstream's ``model`` name."""
    body: Json = {
        "model": model,
        "messages": _messages(req),
        # Explicit either way: Ollama streams when "stream" is absent.
        "stream": req.stream,
    }
    # Ollama has no tool_choice. "none" is honoured by not offering tools at all; "required"
    # and a named tool cannot be forced, so the model keeps its own choice (like "auto")
    # rather than failing a request that usually works out anyway.
    if req.tool_choice != "none":
        tools = [_tool(tool) for tool in req.tools if _is_function(tool)]
        if tools:
            body["tools"] = tools
    options = _options(req)
    if options:
        body["options"] = options
    if req.reasoning_effort is not None:
        think = _THINK.get(req.reasoning_effort)
        if think is not None:
            body["think"] = think
        else:
            log.debug("ollama: unknown reasoning effort %r not sent", req.reasoning_effort)
    response_format = _format(req.response_format)
    if response_format is not None:
        body["format"] = response_format
    return body


def _messages(req: CanonicalRequest) -> list[Json]:
    messages: list[Json] = []
    instructions = "\n\n".join(text for text in req.instructions if text)
    if instructions:
        messages.append({"role": "system", "content": instructions})
    # Ollama pairs a tool result with its call by tool name; results that do not carry
    # the name get it from the call with the same id.
    call_names = {item.call_id: item.name for item in req.items if isinstance(item, ToolCall)}
    # Raw reasoning replayed by the client belongs to the assistant turn that follows it.
    thinking: list[str] = []
    for item in req.items:
        if isinstance(item, Message):
            message = _message(item)
            if message["role"] == "assistant" and thinking:
                message["thinking"] = "".join(thinking)
            # Reasoning not followed by its assistant turn has nowhere to go.
            thinking.clear()
            messages.append(message)
        elif isinstance(item, ToolCall):
            last = messages[-1] if messages else None
            # Calls right after the assistant's text (or after other calls) join that
            # message: Ollama, like Chat Completions, keeps one assistant turn per message.
            if last is None or last["role"] != "assistant":
                last = {"role": "assistant", "content": ""}
                messages.append(last)
            if thinking:
                last["thinking"] = last.get("thinking", "") + "".join(thinking)
                thinking.clear()
            last.setdefault("tool_calls", []).append(_tool_call(item))
        elif isinstance(item, ToolResult):
            thinking.clear()
            result: Json = {"role": "tool", "content": item.output}
            name = item.name or call_names.get(item.call_id)
            if name:
                result["tool_name"] = name
            # Ollama 0.12.10+ also pairs results by id; older versions ignore the field.
            if item.call_id:
                result["tool_call_id"] = item.call_id
            messages.append(result)
        elif isinstance(item, Reasoning):
            text = _reasoning_text(item)
            if text:
                thinking.append(text)
        elif isinstance(item, Opaque):
            log.debug("ollama: dropped opaque item %r", item.item.get("type"))
    return messages


def _message(message: Message) -> Json:
    # Ollama has no developer role; developer text is system text.
    role = "system" if message.role in ("system", "developer") else message.role
    texts: list[str] = []
    images: list[str] = []
    for part in message.parts:
        if part.type in ("text", "refusal"):
            if part.text:
                texts.append(part.text)
        elif part.type == "image":
            images.append(_image(part))
        else:
            name = f" ({part.filename})" if part.filename else ""
            raise TranslationError(
                f"Ollama upstreams do not accept file inputs{name}; send the content as text.",
                param="input",
            )
    # Separate parts are separate paragraphs (Codex sends context and prompt as two
    # parts); gluing them with "" would run their words together.
    out: Json = {"role": role, "content": "\n".join(texts)}
    if images:
        out["images"] = images
    return out


def _image(part: Part) -> str:
    url = part.url
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if sep and header.endswith(";base64") and payload:
            return payload
        raise TranslationError(
            "Image data URLs must be base64-encoded (data:image/...;base64,...).",
            param="input",
        )
    if url.startswith(("http://", "https://")):
        raise TranslationError(
            "Ollama upstreams accept only inline images; send the image as a base64 data URL "
            "(data:image/...;base64,...) instead of an http(s) URL.",
            param="input",
        )
    raise TranslationError(
        "Unsupported image: send it as a base64 data URL (data:image/...;base64,...).",
        param="input",
    )


def _tool_call(call: ToolCall) -> Json:
    out: Json = {"function": {"name": call.name, "arguments": _arguments(call)}}
    # Ollama 0.12.10+ reads call ids; older versions ignore the field.
    if call.call_id:
        out["id"] = call.call_id
    return out


def _arguments(call: ToolCall) -> dict[str, Any]:
    """Ollama wants the arguments as a JSON object, the canonical form holds JSON text."""
    if call.kind == "custom":
        # Custom tools reach Ollama lowered to a function taking one string "input".
        return {"input": call.arguments}
    if not call.arguments.strip():
        return {}
    try:
        parsed = json.loads(call.arguments)
    except ValueError:
        parsed = None
    # A model can emit broken or non-object arguments; keep the text rather than lose it.
    return parsed if isinstance(parsed, dict) else {"input": call.arguments}


def _reasoning_text(item: Reasoning) -> str | None:
    if item.text:
        return item.text
    # Raw reasoning may come back sealed inside encrypted_content (see seal_reasoning).
    opened = open_reasoning(item.encrypted_content)
    return opened[0] if opened else None


def _is_function(tool: Tool) -> bool:
    if tool.kind == "function":
        return True
    log.debug("ollama: skipped %s tool %r", tool.kind, tool.name or (tool.raw or {}).get("type"))
    return False


def _tool(tool: Tool) -> Json:
    function: Json = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    # Ollama's templates render the schema; an empty object schema beats a missing one.
    function["parameters"] = tool.parameters or {"type": "object", "properties": {}}
    return {"type": "function", "function": function}


def _options(req: CanonicalRequest) -> Json:
    values: Json = {
        "temperature": req.temperature,
        "top_p": req.top_p,
        "stop": req.stop or None,
        "seed": req.seed,
        "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty,
        "num_predict": req.max_output_tokens,
    }
    return {key: value for key, value in values.items() if value is not None}


def _format(response_format: dict[str, Any] | None) -> dict[str, Any] | str | None:
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "json_schema":
        schema = response_format.get("schema")
        # Ollama enforces a schema given as "format"; without one, plain JSON mode is all
        # that can be asked for.
        return schema if isinstance(schema, dict) else "json"
    if kind == "json_object":
        return "json"
    return None


# --- answers ------------------------------------------------------------------------------


def decode_response(body: dict[str, Any]) -> list[Event]:
    """Events for a non-stream ``/api/chat`` answer (``"stream": false``)."""
    error = _error(body)
    if error is not None:
        return [error]
    decoder = StreamDecoder()
    # A whole answer is a stream of one line that is also the last: same events, same rules.
    return decoder.feed({**body, "done": True})


class StreamDecoder:
    """Turns the NDJSON lines of a streamed ``/api/chat`` answer into events.

    Feed each line parsed as JSON, in order. ``done`` becomes true once the final line
    (``"done": true``) or an error line has been seen; later lines yield nothing.
    """

    def __init__(self) -> None:
        self.done = False
        self._started = False
        self._thinking = False  # a reasoning part is open
        self._calls = 0  # tool calls seen so far: the next call's index
        self._ids: set[str] = set()

    def feed(self, line: dict[str, Any]) -> list[Event]:
        if self.done:
            return []
        error = _error(line)
        if error is not None:
            self.done = True
            return [error]
        events: list[Event] = []
        if not self._started:
            self._started = True
            model = line.get("model")
            events.append(
                Start(model=model if isinstance(model, str) else None,
                      created=_created(line.get("created_at")))
            )
        message = line.get("message")
        if isinstance(message, dict):
            self._message(message, events)
        if line.get("done") is True:
            self.done = True
            self._close_thinking(events)
            reason = line.get("done_reason")
            if self._calls:
                events.append(Finish("tool_calls"))
            else:
                events.append(Finish(_FINISH.get(reason, "stop") if isinstance(reason, str)
                                     else "stop"))
            usage = _usage(line)
            if usage is not None:
                events.append(usage)
        return events

    def _message(self, message: Json, events: list[Event]) -> None:
        thinking = message.get("thinking")
        if isinstance(thinking, str) and thinking:
            self._thinking = True
            events.append(ReasoningDelta(thinking, kind="raw"))
        content = message.get("content")
        if isinstance(content, str) and content:
            self._close_thinking(events)
            events.append(TextDelta(content))
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if isinstance(call, dict):
                    self._close_thinking(events)
                    self._tool_call(call, events)

    def _tool_call(self, call: Json, events: list[Event]) -> None:
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        name = function.get("name")
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            text = arguments  # not Ollama's shape, but already JSON text if it happens
        else:
            text = json.dumps(arguments if arguments is not None else {},
                              ensure_ascii=False, separators=(",", ":"))
        index = self._calls
        self._calls += 1
        events.append(ToolCallStart(index, self._call_id(call.get("id")),
                                    name if isinstance(name, str) else ""))
        events.append(ToolCallDelta(index, text))

    def _call_id(self, given: Any) -> str:
        # Ollama 0.12.10+ sends ids; older versions none, so make ids up, unique per answer.
        if isinstance(given, str) and given and given not in self._ids:
            call_id = given
        else:
            call_id = f"call_{uuid.uuid4().hex[:24]}"
        self._ids.add(call_id)
        return call_id

    def _close_thinking(self, events: list[Event]) -> None:
        if self._thinking:
            self._thinking = False
            events.append(ReasoningDone())


def _error(line: dict[str, Any]) -> Failure | None:
    error = line.get("error")
    if error is None:
        return None
    if isinstance(error, dict):  # not Ollama's shape; tolerate OpenAI-style errors
        error = error.get("message") or json.dumps(error)
    return Failure(code="upstream_error", message=str(error))


def _created(value: Any) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def _usage(line: dict[str, Any]) -> UsageReport | None:
    prompt, output = line.get("prompt_eval_count"), line.get("eval_count")
    if prompt is None and output is None:
        return None  # usage unknown: better no report than a report of zeros
    # Ollama drops zero fields (omitempty): a fully cached prompt has no prompt_eval_count.
    return UsageReport(Usage(input_tokens=_count(prompt), output_tokens=_count(output)))


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
