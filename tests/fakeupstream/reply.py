"""The protocol-neutral answer (text pieces or tool calls, finish, usage) planned from a script.

Every protocol module renders the same :class:`Reply`, so a conversation gets the same answer
and the same token counts whichever protocol carries it.

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

import time
from dataclasses import dataclass, field
from typing import Any

from tests.fakeupstream.script import TOKEN_TEXT_RE, Script
from tests.fakeupstream.wire import Json, new_hex

REASONING_TEXT = "thinking about it"
REASONING_PIECES: tuple[str, ...] = ("thinking ", "about ", "it")
ENCRYPTED_REASONING = "enc_fake"
THINKING_SIGNATURE = "sig_fake"
_COUNTED_KEYS = frozenset({"content", "text", "output"})


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
    """Input tokens per the usage rule in this module's docstring."""
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
            calls.append(ToolCall(name, script.args, arg_pieces, new_hex()))
        output = sum(len(call.pieces) for call in calls)
    else:
        if script.echo:
            echoed = TOKEN_TEXT_RE.sub("", last_user_text(body)).strip()
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
