"""Ollama chat: ``POST /api/chat``, streamed as NDJSON lines unless ``"stream": false``."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from aiohttp import web

from tests.fakeupstream.reply import REASONING_PIECES, REASONING_TEXT, Reply, plan_reply
from tests.fakeupstream.script import Script
from tests.fakeupstream.wire import (
    CONTENT,
    NDJSON,
    OTHER,
    TERMINAL,
    Frame,
    Json,
    send_json,
    send_stream,
    wants_stream,
)


def _ollama_done(reply: Reply, created_at: str) -> Json:
    done: Json = {
        "model": reply.model,
        "created_at": created_at,
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "length" if reply.finish == "length" else "stop",
    }
    if reply.usage is not None:
        # Durations are fixed fakes (ns); only the counts carry meaning.
        done.update(
            total_duration=1_000_000,
            load_duration=1_000,
            prompt_eval_count=reply.usage.input,
            prompt_eval_duration=100_000,
            eval_count=reply.usage.output,
            eval_duration=500_000,
        )
    return done


def _ollama_tool_calls(reply: Reply) -> list[Json]:
    return [
        {"function": {"name": call.name, "arguments": orjson.loads(call.arguments)}}
        for call in reply.calls
    ]


def ollama_message(reply: Reply, created_at: str) -> Json:
    payload = _ollama_done(reply, created_at)
    message: Json = {"role": "assistant", "content": reply.text}
    if reply.reasoning:
        message["thinking"] = REASONING_TEXT
    if reply.calls:
        message["tool_calls"] = _ollama_tool_calls(reply)
    payload["message"] = message
    return payload


def ollama_frames(reply: Reply, created_at: str) -> list[Frame]:
    def line(message: Json, kind: int) -> Frame:
        obj = {"model": reply.model, "created_at": created_at, "message": message, "done": False}
        return orjson.dumps(obj) + b"\n", kind

    frames: list[Frame] = []
    if reply.reasoning:
        frames += [
            line({"role": "assistant", "content": "", "thinking": piece}, OTHER)
            for piece in REASONING_PIECES
        ]
    frames += [line({"role": "assistant", "content": piece}, CONTENT) for piece in reply.pieces]
    if reply.calls:
        # Ollama sends tool calls whole, in one line, never as argument fragments.
        message = {"role": "assistant", "content": "", "tool_calls": _ollama_tool_calls(reply)}
        frames.append(line(message, CONTENT))
    frames.append((orjson.dumps(_ollama_done(reply, created_at)) + b"\n", TERMINAL))
    return frames


async def reply_ollama(request: web.Request, body: Json, script: Script) -> web.StreamResponse:
    reply = plan_reply(body, script)
    created_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    # Real Ollama streams unless told "stream": false.
    if not wants_stream(body, script, default=True):
        return await send_json(request, ollama_message(reply, created_at))
    return await send_stream(request, NDJSON, ollama_frames(reply, created_at), script)

