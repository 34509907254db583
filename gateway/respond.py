"""Writing the answer to the client: JSON bodies, stream starts, the end of a stream, and
ending a stream that broke. The calls that write an answer's last bytes take the request's
``settle`` step (``gateway.charging.Settlement``) and await it just before writing them."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from gateway.context import RelayContext
from gateway.errors import GatewayError
from gateway.wire.sse import encode
from gateway.wire.usage import cost_text

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]
# Settle the request (charge it, free its slot) and return its cost: awaited right before
# the answer's last bytes go out. None for a request that was never admitted.
Settle = Callable[[], Awaitable[Decimal]]

SSE_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
# What a JSON answer cost, as charged (group multiplier applied), in the currency's units
# with 6 places, "0.000000" when nothing was charged. A stream has it in its final usage
# event instead (see gateway.wire.usage.with_cost): its headers go out before it is known.
COST_HEADER = b"x-turnpike-cost"


def base_headers(ctx: RelayContext, content_type: bytes) -> list[tuple[bytes, bytes]]:
    """``x-request-id`` is the client's own id when it sent a valid one (Turnpike's is then
    in ``x-turnpike-request-id``), else Turnpike's (``gateway.requestids``)."""
    if ctx.client_request_id:
        return [(b"content-type", content_type),
                (b"x-request-id", ctx.client_request_id.encode()),
                (b"x-turnpike-request-id", ctx.request_id.encode()), *ctx.extra_headers]
    return [(b"content-type", content_type), (b"x-request-id", ctx.request_id.encode()),
            *ctx.extra_headers]


NOTHING = Decimal(0)


async def send_json(ctx: RelayContext, send: Send, status: int, body: bytes,
                    extra: list[tuple[bytes, bytes]] | None = None,
                    settle: Settle | None = None) -> None:
    ctx.status = status
    ctx.mark_first_byte()  # the answer starts now: the row, settled next, says so
    cost = await settle() if settle is not None else NOTHING
    headers = base_headers(ctx, b"application/json")
    headers.append((b"content-length", str(len(body)).encode()))
    headers.append((COST_HEADER, cost_text(cost)))
    if extra:
        headers.extend(extra)
    if ctx.capture is not None:
        ctx.capture.response(body)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(ctx: RelayContext, send: Send, error: GatewayError,
                     settle: Settle | None = None) -> None:
    ctx.error_code = error.code
    await send_json(ctx, send, error.status, error.render(), error.headers(), settle)


async def start_stream(ctx: RelayContext, send: Send) -> None:
    ctx.status = 200
    ctx.stream_open = True
    headers = base_headers(ctx, b"text/event-stream; charset=utf-8") + SSE_HEADERS
    await send({"type": "http.response.start", "status": 200, "headers": headers})


async def send_chunk(ctx: RelayContext, send: Send, data: bytes) -> None:
    if data:
        # Events end with a blank line: counting them (C speed) is what lets a Responses
        # stream that breaks later end with a correctly numbered error event, and what a
        # trace's stream span reports. Nothing else reads the count: a Chat stream's events
        # go uncounted unless traced (a scan of every byte relayed).
        if ctx.trace is not None or ctx.endpoint.startswith("responses"):
            ctx.events_sent += data.count(b"\n\n")
        if ctx.capture is not None:
            ctx.capture.response(data)
        await send({"type": "http.response.body", "body": data, "more_body": True})
        ctx.mark_first_byte()


async def end_stream(ctx: RelayContext, send: Send, tail: bytes, settle: Settle) -> None:
    await settle()
    if ctx.capture is not None:
        ctx.capture.response(tail)
    await send({"type": "http.response.body", "body": tail, "more_body": False})
    ctx.stream_open = False
    ctx.mark_first_byte()


def stream_error_event(ctx: RelayContext, error: GatewayError) -> bytes:
    """The client protocol's terminal error event: ``response.failed`` for Responses (both
    the Codex CLI and the SDK stop on it; an ``error`` event alone leaves them waiting for
    the end), a ``data: {"error": ...}`` chunk for Chat Completions (the SDK raises on it).
    The same shapes as ``gateway.streaming``'s taps, for failures outside any tap."""
    if not ctx.endpoint.startswith("responses"):
        return encode(error.body())
    return encode({
        "type": "response.failed",
        "sequence_number": ctx.events_sent,
        "response": {
            "id": "resp_" + ctx.request_id.removeprefix("req_"),
            "object": "response",
            "status": "failed",
            "output": [],
            "error": {"code": error.code, "message": error.message},
            "incomplete_details": None,
        },
    }, event="response.failed")


async def abort_stream(ctx: RelayContext, send: Send, error: GatewayError,
                       settle: Settle | None) -> None:
    """End a stream that failed after its first byte: settle, send the protocol's error
    event and finish the response, so the client is never left waiting on an open
    connection. A JSON answer already sent whole needs nothing more."""
    if not ctx.stream_open:
        return
    ctx.stream_open = False
    try:
        if settle is not None:
            await settle()  # charged for what was relayed, like any ended stream
    except Exception as exc:  # often the very failure being reported: no second traceback
        log.warning("settling the broken stream of %s failed too: %r", ctx.request_id, exc)
    event = stream_error_event(ctx, error)
    if ctx.capture is not None:
        ctx.capture.response(event)
    try:
        await send({"type": "http.response.body", "body": event, "more_body": False})
    except Exception:  # the client is gone; there is nobody left to tell
        log.debug("could not end the broken stream of %s", ctx.request_id, exc_info=True)
