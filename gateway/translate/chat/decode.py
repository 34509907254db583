"""Chat Completions upstream answer (one JSON completion, or its stream of chunks) ->
canonical events."""

from __future__ import annotations

import uuid
from typing import Any

from gateway.translate import canonical as c
from gateway.wire import usage as usage_wire

FINISH_FROM_CHAT: dict[str, c.FinishReason] = {
    "stop": "stop", "length": "length", "tool_calls": "tool_calls",
    "function_call": "tool_calls", "content_filter": "content_filter",
}


def decode_response(body: dict[str, Any]) -> list[c.Event]:
    events: list[c.Event] = [c.Start(response_id=body.get("id"), model=body.get("model"),
                                     created=body.get("created"))]
    choices = body.get("choices") or []
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        events += [c.ReasoningDelta(reasoning, kind="raw"), c.ReasoningDone()]
    if isinstance(message.get("content"), str) and message["content"]:
        events.append(c.TextDelta(message["content"]))
    if message.get("refusal"):
        events.append(c.RefusalDelta(str(message["refusal"])))
    for index, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") or {}
        events.append(c.ToolCallStart(index=index, call_id=str(call.get("id")),
                                      name=str(function.get("name"))))
        events.append(c.ToolCallDelta(index=index, arguments=str(function.get("arguments")
                                                                  or "")))
    events.append(c.Finish(FINISH_FROM_CHAT.get(str(choice.get("finish_reason")), "stop")))
    usage = usage_wire.from_chat(body.get("usage"))
    if usage is not None:
        events.append(c.UsageReport(usage))
    return events


class StreamDecoder:
    """Chat chunks -> events. Tool-call fragments are keyed by their ``index``."""

    def __init__(self) -> None:
        self._started = False
        self._calls: dict[int, int] = {}  # chat tool index -> canonical index
        self._reasoning = False

    def feed(self, chunk: dict[str, Any]) -> list[c.Event]:
        events: list[c.Event] = []
        if not self._started:
            self._started = True
            events.append(c.Start(response_id=chunk.get("id"), model=chunk.get("model"),
                                  created=chunk.get("created")))
        if isinstance(chunk.get("error"), dict):
            err = chunk["error"]
            events.append(c.Failure(code=str(err.get("code") or err.get("type") or "error"),
                                    message=str(err.get("message") or "upstream error")))
            return events
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                self._reasoning = True
                events.append(c.ReasoningDelta(reasoning, kind="raw"))
            content = delta.get("content")
            if (content or delta.get("tool_calls")) and self._reasoning:
                self._reasoning = False
                events.append(c.ReasoningDone())
            if isinstance(content, str) and content:
                events.append(c.TextDelta(content))
            if delta.get("refusal"):
                events.append(c.RefusalDelta(str(delta["refusal"])))
            for call in delta.get("tool_calls") or []:
                position = call.get("index", 0)
                function = call.get("function") or {}
                if position not in self._calls:
                    self._calls[position] = len(self._calls)
                    events.append(c.ToolCallStart(index=self._calls[position],
                                                  call_id=str(call.get("id") or
                                                              f"call_{uuid.uuid4().hex[:24]}"),
                                                  name=str(function.get("name"))))
                if function.get("arguments"):
                    events.append(c.ToolCallDelta(index=self._calls[position],
                                                  arguments=str(function["arguments"])))
            if choice.get("finish_reason"):
                if self._reasoning:
                    self._reasoning = False
                    events.append(c.ReasoningDone())
                events.append(c.Finish(FINISH_FROM_CHAT.get(choice["finish_reason"], "stop")))
        usage = usage_wire.from_chat(chunk.get("usage"))
        if usage is not None:
            events.append(c.UsageReport(usage))
        return events
