"""Canonical events -> Chat Completions client answer: SSE chunks as they come, or one
completion at the end."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Any

from gateway.translate import canonical as c
from gateway.translate.xmltools import XmlToolUseFilter
from gateway.wire import usage as usage_wire
from gateway.wire.sse import encode


class ChatEncoder:
    """Events -> Chat Completions chunks (``feed``/``close``) or one completion (``final``)."""

    def __init__(self, model: str, include_usage: bool, clean_xml_tools: bool = False) -> None:
        self.xml = XmlToolUseFilter() if clean_xml_tools else None
        self.id = "chatcmpl-" + uuid.uuid4().hex[:24]
        self.model = model
        self.created = int(time.time())
        self.include_usage = include_usage
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.refusal: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish: c.FinishReason | None = None
        self.usage: usage_wire.Usage | None = None
        self.cost: Decimal | None = None  # set: the usage chunk carries it (usage.cost)
        self.failure: c.Failure | None = None
        self._opened = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return encode({"id": self.id, "object": "chat.completion.chunk",
                       "created": self.created, "model": self.model,
                       "system_fingerprint": None,
                       "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                    "finish_reason": finish}]})

    def _open(self) -> bytes:
        if self._opened:
            return b""
        self._opened = True
        return self._chunk({"role": "assistant", "content": ""})

    def feed(self, event: c.Event) -> bytes:
        if isinstance(event, c.Start):
            return self._open()
        if isinstance(event, c.TextDelta):
            text = self.xml.feed(event.text) if self.xml is not None else event.text
            if not text:
                return self._open()
            self.text.append(text)
            return self._open() + self._chunk({"content": text})
        if isinstance(event, c.ReasoningDelta):
            self.reasoning.append(event.text)
            return self._open() + self._chunk({"reasoning_content": event.text})
        if isinstance(event, c.RefusalDelta):
            self.refusal.append(event.text)
            return self._open() + self._chunk({"refusal": event.text})
        if isinstance(event, c.ToolCallStart):
            call: dict[str, Any] = {"id": event.call_id, "name": event.name, "arguments": [],
                                    "kind": event.kind}
            self.calls[event.index] = call
            if event.kind == "custom":
                fragment: dict[str, Any] = {"index": event.index, "id": event.call_id,
                                            "type": "custom",
                                            "custom": {"name": event.name, "input": ""}}
            else:
                fragment = {"index": event.index, "id": event.call_id, "type": "function",
                            "function": {"name": event.name, "arguments": ""}}
            return self._open() + self._chunk({"tool_calls": [fragment]})
        if isinstance(event, c.ToolCallDelta):
            open_call = self.calls.get(event.index)
            if open_call is None:
                return b""
            open_call["arguments"].append(event.arguments)
            key = "custom" if open_call["kind"] == "custom" else "function"
            field = "input" if key == "custom" else "arguments"
            return self._chunk({"tool_calls": [{"index": event.index,
                                                key: {field: event.arguments}}]})
        if isinstance(event, c.Finish):
            self.finish = event.reason
        elif isinstance(event, c.UsageReport):
            self.usage = event.usage
        elif isinstance(event, c.Failure):
            self.failure = event
        return b""

    def relayed_text(self) -> str:
        args = ["".join(call["arguments"]) for _, call in sorted(self.calls.items())]
        return "".join([*self.reasoning, *self.text, *self.refusal, *args])

    def finish_reason(self) -> str:
        if self.finish in (None, "stop") and self.calls:
            return "tool_calls"
        return self.finish or "stop"

    def _flush_xml(self) -> bytes:
        tail = self.xml.flush() if self.xml is not None else ""
        if not tail:
            return b""
        self.text.append(tail)
        return self._chunk({"content": tail})

    def close(self) -> bytes:
        out = self._open() + self._flush_xml()
        if self.failure is not None:
            return out + encode({"error": {"message": self.failure.message,
                                           "type": "upstream_error", "param": None,
                                           "code": self.failure.code}})
        out += self._chunk({}, self.finish_reason())
        if self.include_usage:
            usage = usage_wire.to_chat(self.usage or usage_wire.Usage())
            if self.cost is not None:
                usage_wire.with_cost(usage, self.cost)
            out += encode({"id": self.id, "object": "chat.completion.chunk",
                           "created": self.created, "model": self.model,
                           "system_fingerprint": None, "choices": [], "usage": usage})
        return out + b"data: [DONE]\n\n"

    def final(self) -> dict[str, Any]:
        self._flush_xml()
        message: dict[str, Any] = {"role": "assistant",
                                   "content": "".join(self.text) if self.text or not self.calls
                                   else None,
                                   "refusal": "".join(self.refusal) or None,
                                   "annotations": []}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.calls:
            message["tool_calls"] = [
                {"id": call["id"], "type": "custom",
                 "custom": {"name": call["name"], "input": "".join(call["arguments"])}}
                if call["kind"] == "custom" else
                {"id": call["id"], "type": "function",
                 "function": {"name": call["name"], "arguments": "".join(call["arguments"])}}
                for _, call in sorted(self.calls.items())
            ]
        return {"id": self.id, "object": "chat.completion", "created": self.created,
                "model": self.model, "system_fingerprint": None,
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": self.finish_reason()}],
                "usage": usage_wire.to_chat(self.usage or usage_wire.Usage())}
