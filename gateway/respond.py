"""Writing the answer to the client: JSON bodies, stream starts, settling just before the
last bytes go out."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from gateway import policy
from gateway.context import RelayContext
from gateway.errors import GatewayError
from gateway.estimate import estimate_if_needed

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

SSE_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


def base_headers(ctx: RelayContext, content_type: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", content_type), (b"x-request-id", ctx.request_id.encode()),
            *ctx.extra_headers]


async def finish_policy(ctx: RelayContext) -> None:
    """Settle the request just before its last bytes go out, and wait for it: the slot is
    free, the reservation closed and the usage row journaled (with Redis) before the client
    has its whole answer, so its next request finds the slot free on any process and a
    crash of this process after this point loses nothing. One round trip, which the
    client's answer waits for (measured in BENCHMARKS.md)."""
    if ctx.ticket is None or ctx.settled:
        return
    await estimate_if_needed(ctx)
    ctx.settled = True
    ctx.cost = policy.charge(ctx.ticket, ctx.usage, ctx.upstream_ok)
    await policy.settle(ctx.ticket, ctx.cost, ctx.usage, served_binding(ctx), ctx.usage_event())


def served_binding(ctx: RelayContext) -> str | None:
    """The route to bind the session to: the one that served it (re-set to renew its TTL)."""
    return ctx.route.binding if ctx.route is not None and ctx.upstream_ok else None


async def send_json(ctx: RelayContext, send: Send, status: int, body: bytes,
                    extra: list[tuple[bytes, bytes]] | None = None) -> None:
    ctx.status = status
    ctx.mark_first_byte()  # the answer starts now: the row, settled next, says so
    await finish_policy(ctx)
    headers = base_headers(ctx, b"application/json")
    headers.append((b"content-length", str(len(body)).encode()))
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(ctx: RelayContext, send: Send, error: GatewayError) -> None:
    ctx.error_code = error.code
    await send_json(ctx, send, error.status, error.render(), error.headers())


async def start_stream(ctx: RelayContext, send: Send) -> None:
    ctx.status = 200
    headers = base_headers(ctx, b"text/event-stream; charset=utf-8") + SSE_HEADERS
    await send({"type": "http.response.start", "status": 200, "headers": headers})


async def send_chunk(ctx: RelayContext, send: Send, data: bytes) -> None:
    if data:
        await send({"type": "http.response.body", "body": data, "more_body": True})
        ctx.mark_first_byte()


async def end_stream(ctx: RelayContext, send: Send, tail: bytes) -> None:
    await finish_policy(ctx)
    await send({"type": "http.response.body", "body": tail, "more_body": False})
    ctx.mark_first_byte()
