"""OpenAI Responses: ``POST /v1/responses`` (JSON, or numbered SSE events) and
``POST /v1/responses/compact``."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from tests.fakeupstream.reply import (
    ENCRYPTED_REASONING,
    REASONING_PIECES,
    REASONING_TEXT,
    Reply,
    ToolCall,
    Usage,
    plan_reply,
)
from tests.fakeupstream.script import Script
from tests.fakeupstream.wire import (
    CONTENT,
    SSE,
    TERMINAL,
    EventFrames,
    Frame,
    Json,
    new_hex,
    send_json,
    send_stream,
    wants_stream,
)


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
    response_id = f"resp_{new_hex()}"
    items = ResponseItems(f"rs_{new_hex()}", f"msg_{new_hex()}", reply)
    if not wants_stream(body, script):
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
        "id": f"cmp_{new_hex()}",
        "encrypted_content": f"enc_compact_{new_hex()}",
    }
    payload: Json = {
        "id": f"cmp_{new_hex()}",
        "object": "response.compaction",
        "created_at": reply.created,
        "output": [*_user_messages(body), compaction],
    }
    if reply.usage is not None:
        payload["usage"] = _responses_usage(reply.usage)
    return await send_json(request, payload)

