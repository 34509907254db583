"""OpenAI Chat Completions: ``POST /v1/chat/completions``, as JSON or as ``data:`` SSE chunks."""

from __future__ import annotations

import orjson
from aiohttp import web

from tests.fakeupstream.reply import REASONING_PIECES, REASONING_TEXT, Reply, Usage, plan_reply
from tests.fakeupstream.script import Script
from tests.fakeupstream.wire import (
    CONTENT,
    OTHER,
    SSE,
    TERMINAL,
    Frame,
    Json,
    new_hex,
    send_json,
    send_stream,
    wants_stream,
)


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
    completion_id = f"chatcmpl-{new_hex()}"
    if not wants_stream(body, script):
        return await send_json(request, chat_completion(reply, completion_id))
    stream_options = body.get("stream_options")
    include_usage = isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))
    frames = chat_frames(reply, completion_id, include_usage)
    return await send_stream(request, SSE, frames, script)

