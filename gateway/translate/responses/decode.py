"""A Responses upstream's answer (the JSON Response object, or its SSE events) -> canonical
events."""

from __future__ import annotations

from typing import Any

from gateway.translate import canonical as c
from gateway.wire import usage as usage_wire


def _finish_and_usage(response: dict[str, Any], saw_calls: bool) -> list[c.Event]:
    events: list[c.Event] = []
    status = response.get("status")
    if status == "failed":
        error = response.get("error") or {}
        events.append(c.Failure(code=str(error.get("code") or "upstream_error"),
                                message=str(error.get("message") or "The upstream failed.")))
    elif status == "incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        events.append(c.Finish("content_filter" if reason == "content_filter" else "length"))
    else:
        events.append(c.Finish("tool_calls" if saw_calls else "stop"))
    usage = usage_wire.from_responses(response.get("usage"))
    if usage is not None:
        events.append(c.UsageReport(usage))
    return events


def decode_item(item: dict[str, Any], index: int) -> tuple[list[c.Event], int]:
    """Events for one complete output item; returns them and the next tool-call index."""
    kind = item.get("type")
    events: list[c.Event] = []
    if kind == "message":
        for part in item.get("content") or []:
            if part.get("type") == "output_text" and part.get("text"):
                events.append(c.TextDelta(str(part["text"])))
            elif part.get("type") == "refusal":
                events.append(c.RefusalDelta(str(part.get("refusal", ""))))
    elif kind == "reasoning":
        for summary in item.get("summary") or []:
            events.append(c.ReasoningDelta(str(summary.get("text", ""))))
        events.append(c.ReasoningDone(encrypted_content=item.get("encrypted_content")))
    elif kind in ("function_call", "custom_tool_call"):
        custom = kind == "custom_tool_call"
        events.append(c.ToolCallStart(index=index, call_id=str(item.get("call_id")),
                                      name=str(item.get("name")),
                                      kind="custom" if custom else "function",
                                      namespace=item.get("namespace")))
        events.append(c.ToolCallDelta(index=index, arguments=str(
            item.get("input" if custom else "arguments") or "")))
        index += 1
    else:
        events.append(c.OpaqueItem(item))
    return events, index


def decode_response(body: dict[str, Any]) -> list[c.Event]:
    events: list[c.Event] = [c.Start(response_id=body.get("id"), model=body.get("model"),
                                     created=body.get("created_at"))]
    index = 0
    for item in body.get("output") or []:
        if isinstance(item, dict):
            more, index = decode_item(item, index)
            events += more
    return events + _finish_and_usage(body, index > 0)


class StreamDecoder:
    """Responses events -> canonical events. Items that arrive whole (no deltas streamed
    for them) are decoded from their ``output_item.done``."""

    def __init__(self) -> None:
        self._started = False
        self._items: dict[str, dict[str, Any]] = {}  # item id -> {"index", "streamed"}
        self._next_call = 0

    def feed(self, data: dict[str, Any]) -> list[c.Event]:
        kind = data.get("type")
        events: list[c.Event] = []
        if not self._started:
            self._started = True
            started = data.get("response")
            response: dict[str, Any] = started if isinstance(started, dict) else {}
            events.append(c.Start(response_id=response.get("id"), model=response.get("model"),
                                  created=response.get("created_at")))
        if kind == "response.output_item.added":
            item = data.get("item") or {}
            state: dict[str, Any] = {"streamed": False}
            if item.get("type") in ("function_call", "custom_tool_call"):
                state["index"] = self._next_call
                self._next_call += 1
                custom = item.get("type") == "custom_tool_call"
                events.append(c.ToolCallStart(index=state["index"],
                                              call_id=str(item.get("call_id")),
                                              name=str(item.get("name")),
                                              kind="custom" if custom else "function",
                                              namespace=item.get("namespace")))
            self._items[str(item.get("id"))] = state
        elif kind == "response.output_text.delta":
            self._mark(data)
            events.append(c.TextDelta(str(data.get("delta", ""))))
        elif kind == "response.refusal.delta":
            self._mark(data)
            events.append(c.RefusalDelta(str(data.get("delta", ""))))
        elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            self._mark(data)
            events.append(c.ReasoningDelta(str(data.get("delta", "")),
                                           kind="raw" if "reasoning_text" in kind
                                           else "summary"))
        elif kind in ("response.function_call_arguments.delta",
                      "response.custom_tool_call_input.delta"):
            streaming = self._items.get(str(data.get("item_id")))
            if streaming is not None and "index" in streaming:
                streaming["streamed"] = True
                events.append(c.ToolCallDelta(index=streaming["index"],
                                              arguments=str(data.get("delta", ""))))
        elif kind == "response.output_item.done":
            events += self._item_done(data.get("item") or {})
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            response = data.get("response") or {}
            events += _finish_and_usage(response, self._next_call > 0)
        elif kind == "error":
            events.append(c.Failure(code=str(data.get("code") or "upstream_error"),
                                    message=str(data.get("message") or "upstream error")))
        return events

    def _mark(self, data: dict[str, Any]) -> None:
        state = self._items.setdefault(str(data.get("item_id")), {})
        state["streamed"] = True

    def _item_done(self, item: dict[str, Any]) -> list[c.Event]:
        state = self._items.get(str(item.get("id")), {})
        kind = item.get("type")
        if kind == "reasoning":
            events: list[c.Event] = []
            if not state.get("streamed"):
                events += [c.ReasoningDelta(str(s.get("text", "")))
                           for s in item.get("summary") or [] if s.get("text")]
            return [*events, c.ReasoningDone(encrypted_content=item.get("encrypted_content"))]
        if kind in ("function_call", "custom_tool_call"):
            if "index" not in state:  # never announced: decode it whole
                events, self._next_call = decode_item(item, self._next_call)
                return events
            if not state.get("streamed"):
                field = "input" if kind == "custom_tool_call" else "arguments"
                return [c.ToolCallDelta(index=state["index"],
                                        arguments=str(item.get(field) or ""))]
            return []
        if kind == "message":
            if state.get("streamed"):
                return []
            return decode_item(item, self._next_call)[0]
        return [c.OpaqueItem(item)]
