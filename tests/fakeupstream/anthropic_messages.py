"""Anthropic Messages: ``POST /v1/messages``, as one message or as named SSE events."""

from __future__ import annotations

import orjson
from aiohttp import web

from tests.fakeupstream.reply import (
    REASONING_PIECES,
    REASONING_TEXT,
    THINKING_SIGNATURE,
    Reply,
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
        block: Json = {"type": "thinking", "thinking": "", "signature": ""}
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
    message_id = f"msg_{new_hex()}"
    if not wants_stream(body, script):
        return await send_json(request, anthropic_message(reply, message_id))
    return await send_stream(request, SSE, anthropic_frames(reply, message_id), script)

