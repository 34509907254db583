"""Canonical events -> the Responses answer a client reads: the full event sequence strict
clients and the Codex CLI need, or the Response object."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Any

from gateway.translate import canonical as c
from gateway.translate.xmltools import XmlToolUseFilter
from gateway.wire import usage as usage_wire
from gateway.wire.sse import encode


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


class ResponsesEncoder:
    """Events -> the Responses event sequence (``feed``/``close``) or the Response object
    (``final``). Items are emitted strictly one after another, each closed by
    ``response.output_item.done`` with the complete item (the Codex CLI reads only those)."""

    def __init__(self, model: str, echo: dict[str, Any] | None = None,
                 clean_xml_tools: bool = False) -> None:
        self.id = new_id("resp")
        self.model = model
        self.created = int(time.time())
        self.echo = echo or {}
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.current: dict[str, Any] | None = None  # the open item
        self.calls: dict[int, dict[str, Any]] = {}
        self.pending_deltas: dict[int, list[str]] = {}
        self.finish: c.FinishReason | None = None
        self.usage: usage_wire.Usage | None = None
        self.cost: Decimal | None = None  # set: the final usage carries it (usage.cost)
        self.failure: c.Failure | None = None
        self.started = False
        self.xml = XmlToolUseFilter() if clean_xml_tools else None
        self._reasoning_text: list[str] = []

    # framing
    def _event(self, kind: str, payload: dict[str, Any]) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **payload}
        self.seq += 1
        return encode(data, event=kind)

    def response(self, status: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id, "object": "response", "created_at": self.created, "status": status,
            "model": self.model, "output": self.output if status != "in_progress" else [],
            "parallel_tool_calls": self.echo.get("parallel_tool_calls", True),
            "tool_choice": self.echo.get("tool_choice", "auto"),
            "tools": self.echo.get("tools", []),
            "error": None, "incomplete_details": None,
            "instructions": self.echo.get("instructions"),
            "max_output_tokens": self.echo.get("max_output_tokens"),
            "previous_response_id": self.echo.get("previous_response_id"),
            "reasoning": self.echo.get("reasoning") or {"effort": None, "summary": None},
            "store": self.echo.get("store", False),
            "temperature": self.echo.get("temperature", 1.0),
            "top_p": self.echo.get("top_p", 1.0),
            "text": self.echo.get("text") or {"format": {"type": "text"}},
            "truncation": "disabled", "metadata": self.echo.get("metadata") or {},
            "user": self.echo.get("user"),
            "usage": None,
        }
        if status in ("completed", "incomplete", "failed"):
            body["usage"] = usage_wire.to_responses(self.usage or usage_wire.Usage())
            if self.cost is not None:
                usage_wire.with_cost(body["usage"], self.cost)
        if status == "incomplete":
            body["incomplete_details"] = {
                "reason": "content_filter" if self.finish == "content_filter"
                else "max_output_tokens"}
        if status == "failed" and self.failure is not None:
            body["error"] = {"code": self.failure.code, "message": self.failure.message}
        return body

    def _start(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        snapshot = self.response("in_progress")
        return (self._event("response.created", {"response": snapshot})
                + self._event("response.in_progress", {"response": snapshot}))

    # items
    def _close_current(self, status: str = "completed") -> bytes:
        """Close the open item; ``status`` is "incomplete" for the item the answer ended in
        when it was cut or truncated (a client must not act on a half-streamed call)."""
        item = self.current
        if item is None:
            return b""
        self.current = None
        index = item["_index"]
        out = b""
        kind = item["type"]
        if kind == "message":
            if self.xml is not None:
                tail = self.xml.flush()
                if tail:
                    out += self._text_delta(item, tail)
            part = item["content"][-1]
            key = "refusal" if part["type"] == "refusal" else "text"
            done = "response.refusal.done" if key == "refusal" else "response.output_text.done"
            payload: dict[str, Any] = {"item_id": item["id"], "output_index": index,
                                       "content_index": 0, key: part[key]}
            if key == "text":
                payload["logprobs"] = []
            out += self._event(done, payload)
            out += self._event("response.content_part.done", {
                "item_id": item["id"], "output_index": index, "content_index": 0,
                "part": part})
        elif kind == "reasoning":
            if item["summary"]:
                text = item["summary"][0]["text"]
                out += self._event("response.reasoning_summary_text.done", {
                    "item_id": item["id"], "output_index": index, "summary_index": 0,
                    "text": text})
                out += self._event("response.reasoning_summary_part.done", {
                    "item_id": item["id"], "output_index": index, "summary_index": 0,
                    "part": {"type": "summary_text", "text": text}})
        elif kind == "function_call":
            out += self._event("response.function_call_arguments.done", {
                "item_id": item["id"], "output_index": index, "arguments": item["arguments"]})
        elif kind == "custom_tool_call":
            out += self._event("response.custom_tool_call_input.done", {
                "item_id": item["id"], "output_index": index, "input": item["input"]})
        if kind != "reasoning":
            item["status"] = status
        clean = {k: v for k, v in item.items() if not k.startswith("_")}
        self.output[index] = clean
        return out + self._event("response.output_item.done",
                                 {"output_index": index, "item": clean})

    def _open(self, item: dict[str, Any]) -> bytes:
        out = self._close_current()
        item["_index"] = len(self.output)
        self.output.append({})
        self.current = item
        announced = {k: (v if k != "content" else []) for k, v in item.items()
                     if not k.startswith("_")}
        if item["type"] == "reasoning":
            announced = {"id": item["id"], "type": "reasoning", "summary": []}
        out += self._event("response.output_item.added",
                           {"output_index": item["_index"], "item": announced})
        return out

    def _message(self, part_type: str) -> bytes:
        item = self.current
        if item is not None and item["type"] == "message" and \
                item["content"][-1]["type"] == part_type:
            return b""
        part: dict[str, Any] = ({"type": "output_text", "text": "", "annotations": [],
                                 "logprobs": []} if part_type == "output_text"
                                else {"type": "refusal", "refusal": ""})
        out = self._open({"id": new_id("msg"), "type": "message", "status": "in_progress",
                          "role": "assistant", "content": [part]})
        out += self._event("response.content_part.added", {
            "item_id": self.current["id"], "output_index": self.current["_index"],  # type: ignore[index]
            "content_index": 0, "part": dict(part)})
        return out

    def _text_delta(self, item: dict[str, Any], text: str) -> bytes:
        item["content"][-1]["text"] += text
        return self._event("response.output_text.delta", {
            "item_id": item["id"], "output_index": item["_index"], "content_index": 0,
            "delta": text, "logprobs": []})

    # Over the complexity limit (C901) on purpose: one branch per canonical event type,
    # each a few lines of framing.
    def feed(self, event: c.Event) -> bytes:  # noqa: C901
        out = self._start()
        if isinstance(event, c.TextDelta):
            text = self.xml.feed(event.text) if self.xml is not None else event.text
            if not text:
                return out
            out += self._message("output_text")
            return out + self._text_delta(self.current, text)  # type: ignore[arg-type]
        if isinstance(event, c.RefusalDelta):
            out += self._message("refusal")
            item = self.current
            item["content"][-1]["refusal"] += event.text  # type: ignore[index]
            return out + self._event("response.refusal.delta", {
                "item_id": item["id"], "output_index": item["_index"],  # type: ignore[index]
                "content_index": 0, "delta": event.text})
        if isinstance(event, c.ReasoningDelta):
            item = self.current
            if item is None or item["type"] != "reasoning":
                out += self._open({"id": new_id("rs"), "type": "reasoning", "summary": []})
                item = self.current
                self._reasoning_text = []
            assert item is not None
            if not item["summary"]:
                item["summary"].append({"type": "summary_text", "text": ""})
                out += self._event("response.reasoning_summary_part.added", {
                    "item_id": item["id"], "output_index": item["_index"], "summary_index": 0,
                    "part": {"type": "summary_text", "text": ""}})
            item["summary"][0]["text"] += event.text
            self._reasoning_text.append(event.text)
            return out + self._event("response.reasoning_summary_text.delta", {
                "item_id": item["id"], "output_index": item["_index"], "summary_index": 0,
                "delta": event.text})
        if isinstance(event, c.ReasoningDone):
            item = self.current
            if item is None or item["type"] != "reasoning":
                if not (event.encrypted_content or event.signature):
                    return out
                out += self._open({"id": new_id("rs"), "type": "reasoning", "summary": []})
                item = self.current
                assert item is not None
            token = event.encrypted_content or (
                c.seal_reasoning("".join(self._reasoning_text), event.signature)
                if event.signature else None)
            if token:
                item["encrypted_content"] = token
            return out + self._close_current()
        if isinstance(event, c.ToolCallStart):
            if event.kind == "custom":
                item = {"id": new_id("ctc"), "type": "custom_tool_call", "status": "in_progress",
                        "call_id": event.call_id, "name": event.name, "input": ""}
            else:
                item = {"id": new_id("fc"), "type": "function_call", "status": "in_progress",
                        "call_id": event.call_id, "name": event.name, "arguments": ""}
                if event.namespace:
                    item["namespace"] = event.namespace
            self.calls[event.index] = item
            out += self._open(item)
            for piece in self.pending_deltas.pop(event.index, []):
                out += self._tool_delta(item, piece)
            return out
        if isinstance(event, c.ToolCallDelta):
            item = self.calls.get(event.index)
            if item is None or item is not self.current:
                # Not the open item (interleaved calls): kept until that call is open.
                if item is None:
                    self.pending_deltas.setdefault(event.index, []).append(event.arguments)
                else:
                    key = "input" if item["type"] == "custom_tool_call" else "arguments"
                    item[key] += event.arguments
                return out
            return out + self._tool_delta(item, event.arguments)
        if isinstance(event, c.OpaqueItem):
            out += self._close_current()
            item = dict(event.item)
            item.setdefault("id", new_id(str(item.get("type", "item"))[:4]))
            index = len(self.output)
            self.output.append(item)
            return (out + self._event("response.output_item.added",
                                      {"output_index": index, "item": item})
                    + self._event("response.output_item.done",
                                  {"output_index": index, "item": item}))
        if isinstance(event, c.Finish):
            self.finish = event.reason
        elif isinstance(event, c.UsageReport):
            self.usage = event.usage
        elif isinstance(event, c.Failure):
            self.failure = event
        return out

    def _tool_delta(self, item: dict[str, Any], piece: str) -> bytes:
        if item["type"] == "custom_tool_call":
            item["input"] += piece
            return self._event("response.custom_tool_call_input.delta", {
                "item_id": item["id"], "output_index": item["_index"], "delta": piece})
        item["arguments"] += piece
        return self._event("response.function_call_arguments.delta", {
            "item_id": item["id"], "output_index": item["_index"], "delta": piece})

    def relayed_text(self) -> str:
        out: list[str] = []
        items = [*self.output, *([self.current] if self.current is not None else [])]
        for item in items:
            for part in item.get("content") or []:
                out.append(part.get("text") or part.get("refusal") or "")
            for summary in item.get("summary") or []:
                out.append(summary.get("text", ""))
            out.append(item.get("arguments") or item.get("input") or "")
        return "".join(out)

    def status(self) -> str:
        if self.failure is not None:
            return "failed"
        if self.finish in ("length", "content_filter"):
            return "incomplete"
        return "completed"

    def close(self) -> bytes:
        status = self.status()
        out = self._start() + self._close_current(
            "completed" if status == "completed" else "incomplete")
        kind = {"failed": "response.failed", "incomplete": "response.incomplete"}.get(
            status, "response.completed")
        return out + self._event(kind, {"response": self.response(status)})

    def keepalive(self) -> bytes:
        """A data-bearing event: the Codex CLI's idle timer ignores SSE comments."""
        return encode({"type": "keepalive", "sequence_number": self.seq}, event="keepalive")

    def final(self) -> dict[str, Any]:
        self.close()
        return self.response(self.status())
