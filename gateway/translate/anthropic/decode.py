"""Anthropic answers (the JSON message, or its SSE events) -> canonical events, with
Anthropic's usage (cache reads outside ``input_tokens``) mapped to OpenAI's."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson

from gateway.translate.canonical import (
    Event,
    Failure,
    Finish,
    FinishReason,
    ReasoningDelta,
    ReasoningDone,
    Start,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    UsageReport,
)
from gateway.wire.usage import Usage

logger = logging.getLogger(__name__)

Json = dict[str, Any]

_STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",  # a server tool paused the turn; the client sees a normal end
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def finish_reason(stop_reason: str | None) -> FinishReason:
    """The canonical finish reason for an Anthropic ``stop_reason`` (unknown ones: stop)."""
    return _STOP_REASONS.get(stop_reason or "", "stop")


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def usage_from_anthropic(usage: Any) -> Usage | None:
    """Anthropic ``usage`` to canonical usage: OpenAI counts cache reads and writes as
    input, Anthropic reports them apart from ``input_tokens``."""
    if not isinstance(usage, dict):
        return None
    cache_read = _count(usage.get("cache_read_input_tokens"))
    cache_write = _count(usage.get("cache_creation_input_tokens"))
    return Usage(
        input_tokens=_count(usage.get("input_tokens")) + cache_read + cache_write,
        cached_tokens=cache_read,
        output_tokens=_count(usage.get("output_tokens")),
    )


def _failure(error: Any) -> Failure:
    error = error if isinstance(error, dict) else {}
    return Failure(
        code=str(error.get("type") or "api_error"),
        message=str(error.get("message") or "upstream error"),
    )


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def decode_response(body: dict[str, Any]) -> list[Event]:
    """A non-streamed Messages response as canonical events."""
    if body.get("type") == "error":
        return [_failure(body.get("error"))]
    events: list[Event] = [Start(response_id=body.get("id"), model=body.get("model"))]
    tool_index = 0
    for block in body.get("content") or ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            if block.get("text"):
                events.append(TextDelta(block["text"]))
        elif kind == "thinking":
            if block.get("thinking"):
                events.append(ReasoningDelta(block["thinking"]))
            events.append(ReasoningDone(signature=block.get("signature") or None))
        elif kind == "tool_use":
            tool_input = block.get("input")
            events.append(ToolCallStart(tool_index, block.get("id", ""), block.get("name", "")))
            events.append(ToolCallDelta(tool_index, _dumps(tool_input if tool_input else {})))
            tool_index += 1
        else:
            # redacted_thinking has no canonical form (its data is not a signature);
            # server tool blocks are Anthropic-side only.
            logger.debug("anthropic: skipped content block of type %r", kind)
    events.append(Finish(finish_reason(body.get("stop_reason"))))
    usage = usage_from_anthropic(body.get("usage"))
    if usage is not None:
        events.append(UsageReport(usage))
    return events


class StreamDecoder:
    """Anthropic SSE events to canonical events, one ``feed`` per SSE event.

    ``event`` is the SSE ``event:`` name (falls back to the data's ``type``), ``data`` the
    parsed JSON of its ``data:`` line. ``finished`` tells whether ``message_stop`` (or an
    error) arrived, so the caller can tell a complete stream from a cut one.
    """

    def __init__(self) -> None:
        self.finished = False
        self._usage: Json = {}
        self._stop_reason: str | None = None
        self._tools = 0  # tool_use blocks seen: their canonical index, 0, 1 …
        # Per open content block index: its type, tool index, whether arguments came,
        # and for thinking its signature.
        self._blocks: dict[int, _Block] = {}

    def feed(self, event: str | None, data: dict[str, Any]) -> list[Event]:
        kind = event or data.get("type")
        handler = _HANDLERS.get(kind or "")
        if handler is None:
            # ping and event types newer than this decoder carry nothing for the client.
            return []
        return handler(self, data)

    def _message_start(self, data: Json) -> list[Event]:
        message = data.get("message") or {}
        if isinstance(message.get("usage"), dict):
            self._usage.update(message["usage"])
        return [Start(response_id=message.get("id"), model=message.get("model"))]

    def _block_start(self, data: Json) -> list[Event]:
        block_data = data.get("content_block") or {}
        block = _Block(block_data.get("type"))
        self._blocks[data.get("index", 0)] = block
        if block.type == "tool_use":
            block.tool_index = self._tools
            self._tools += 1
            # The start normally carries input {}; a non-empty one is sent at the stop
            # when no partial JSON came.
            block.initial_input = block_data.get("input") or None
            return [ToolCallStart(block.tool_index, block_data.get("id", ""),
                                  block_data.get("name", ""))]
        if block.type == "text" and block_data.get("text"):
            return [TextDelta(block_data["text"])]
        if block.type == "thinking" and block_data.get("thinking"):
            return [ReasoningDelta(block_data["thinking"])]
        return []

    def _block_delta(self, data: Json) -> list[Event]:
        delta = data.get("delta") or {}
        block = self._blocks.get(data.get("index", 0))
        kind = delta.get("type")
        if kind == "text_delta":
            return [TextDelta(delta["text"])] if delta.get("text") else []
        if kind == "thinking_delta":
            return [ReasoningDelta(delta["thinking"])] if delta.get("thinking") else []
        if block is None:
            return []
        if kind == "input_json_delta" and block.tool_index is not None:
            piece = delta.get("partial_json") or ""
            if not piece:
                return []
            block.has_arguments = True
            return [ToolCallDelta(block.tool_index, piece)]
        if kind == "signature_delta":
            block.signature = (block.signature or "") + (delta.get("signature") or "")
        return []

    def _block_stop(self, data: Json) -> list[Event]:
        block = self._blocks.pop(data.get("index", 0), None)
        if block is None:
            return []
        if block.type == "thinking":
            return [ReasoningDone(signature=block.signature)]
        if block.tool_index is not None and not block.has_arguments:
            # Clients parse the arguments as JSON: a call without input still needs "{}".
            return [ToolCallDelta(block.tool_index, _dumps(block.initial_input or {}))]
        return []

    def _message_delta(self, data: Json) -> list[Event]:
        delta = data.get("delta") or {}
        if delta.get("stop_reason"):
            self._stop_reason = delta["stop_reason"]
        if isinstance(data.get("usage"), dict):
            # Counts here are cumulative, so they replace those from message_start.
            self._usage.update(
                {key: value for key, value in data["usage"].items() if value is not None}
            )
        return []

    def _message_stop(self, data: Json) -> list[Event]:
        self.finished = True
        events: list[Event] = [Finish(finish_reason(self._stop_reason))]
        if self._usage:
            usage = usage_from_anthropic(self._usage)
            if usage is not None:
                events.append(UsageReport(usage))
        return events

    def _error(self, data: Json) -> list[Event]:
        self.finished = True
        return [_failure(data.get("error"))]


class _Block:
    __slots__ = ("has_arguments", "initial_input", "signature", "tool_index", "type")

    def __init__(self, block_type: str | None) -> None:
        self.type = block_type
        self.tool_index: int | None = None
        self.has_arguments = False
        self.initial_input: Any = None
        self.signature: str | None = None


_HANDLERS: dict[str, Callable[[StreamDecoder, Json], list[Event]]] = {
    "message_start": StreamDecoder._message_start,
    "content_block_start": StreamDecoder._block_start,
    "content_block_delta": StreamDecoder._block_delta,
    "content_block_stop": StreamDecoder._block_stop,
    "message_delta": StreamDecoder._message_delta,
    "message_stop": StreamDecoder._message_stop,
    "error": StreamDecoder._error,
}
