"""Sending: JSON bodies, and streams as precomputed frames that ``cut=``/``delay=`` act on.

A stream is built whole before the first byte goes out, as a list of ``(bytes, kind)`` frames.
The kind tells ``cut=K`` what to count (CONTENT) and where it must stop at the latest
(TERMINAL: ``[DONE]``, ``response.completed``, ``message_stop``, Ollama's ``done`` line).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from aiohttp import web

from tests.fakeupstream.script import Script

Json = dict[str, Any]

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"

# Frame kinds: what cut=K counts and where it must stop.
OTHER, CONTENT, TERMINAL = 0, 1, 2
Frame = tuple[bytes, int]


def new_hex() -> str:
    return os.urandom(12).hex()


class EventFrames:
    """Collects `event:` + `data:` SSE frames; numbered=True adds OpenAI's sequence_number."""

    def __init__(self, numbered: bool) -> None:
        self.frames: list[Frame] = []
        self._numbered = numbered
        self._sequence = 0

    def add(self, event_type: str, kind: int = OTHER, **fields: Any) -> None:
        payload: Json = {"type": event_type}
        if self._numbered:
            payload["sequence_number"] = self._sequence
            self._sequence += 1
        payload.update(fields)
        data = b"event: " + event_type.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
        self.frames.append((data, kind))


def _truncate(frames: Sequence[Frame], cut: int) -> list[Frame]:
    kept: list[Frame] = []
    seen = 0
    for frame in frames:
        kind = frame[1]
        if kind == TERMINAL or (kind == CONTENT and seen == cut):
            break
        kept.append(frame)
        seen += kind == CONTENT
    return kept


async def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is None:
        return
    # abort() discards what is still buffered in user space; wait until the frames reached the
    # kernel so the client sees exactly the K chunks, then break the chunked body mid-way.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2.0
    # asyncio offers no event for "write buffer empty", hence the short poll.
    while transport.get_write_buffer_size() and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    transport.abort()


async def send_stream(
    request: web.Request, content_type: str, frames: list[Frame], script: Script
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": content_type,
            "Cache-Control": "no-cache",
            "X-Request-Id": f"req_{new_hex()}",
        }
    )
    if script.cut is not None:
        frames = _truncate(frames, script.cut)
    await response.prepare(request)
    if script.delay > 0:
        for index, (data, _kind) in enumerate(frames):
            if index:
                await asyncio.sleep(script.delay)
            await response.write(data)
    elif frames:
        # One write for the whole body: nobody can observe pacing without a delay anyway.
        await response.write(b"".join(data for data, _kind in frames))
    if script.cut is not None and script.cut_mode == "abort":
        await _abort(request)
        return response
    await response.write_eof()
    return response


async def send_json(
    request: web.Request, payload: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    # Sent here rather than by aiohttp after return, so /_fake/stats inflight covers the send.
    response = web.Response(
        body=orjson.dumps(payload),
        status=status,
        content_type="application/json",
        headers={"X-Request-Id": f"req_{new_hex()}", **(headers or {})},
    )
    await response.prepare(request)
    await response.write_eof()
    return response


def wants_stream(body: Json, script: Script, default: bool = False) -> bool:
    return bool(body.get("stream", default)) and not script.force_json

