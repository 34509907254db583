"""The passthrough path: the upstream speaks the client's protocol and needs no fixing.

The client's bytes go up, re-encoded only when the model name, effort, usage metering
(``stream_options.include_usage`` on a chat stream) or a model rule changed them; the answer
comes back byte for byte, a JSON answer whole (``_relay_json``) and a stream event by event
through a tap that meters and checks it (``_relay_tapped``, taps in ``gateway.streaming``).
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from gateway import policy
from gateway.charging import Settlement
from gateway.context import RelayContext
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout
from gateway.exchange.upstream import (
    Upstream,
    call_upstream,
    credential_secret,
    failed,
    note_failure,
    parse_answer,
    read_answer,
)
from gateway.outcome import Outcome
from gateway.providers.protocols import CLIENT_PROTOCOL
from gateway.respond import Send, end_stream, send_chunk, send_json, start_stream
from gateway.routing import Route
from gateway.rules import aget_rules, apply_rules
from gateway.stored import chain as stored
from gateway.streaming import ChatTap, ResponsesTap, StreamTap, bad_response
from gateway.wire import usage as usage_wire
from gateway.wire.sse import encode


async def passthrough(ctx: RelayContext, out: Outcome, operation: str, route: Route,
                      payload: dict[str, Any], body: bytes, raw: bool, send: Send,
                      settle: Settlement) -> None:
    """Send the client's request, adjusted only where it must be, and relay the answer as
    the upstream gave it: a stream through a tap (``_relay_tapped``), anything else whole."""
    changed = False
    client_wants_usage = False
    if not raw:
        payload, changed = await _adjust_same_protocol(ctx, operation, route, payload)
        if operation == "chat" and ctx.stream:
            options = payload.get("stream_options")
            client_wants_usage = isinstance(options, dict) and options.get("include_usage") is True
            if not client_wants_usage:  # meter every stream: ask for usage, drop it again
                payload = {**payload, "stream_options": {
                    **(options if isinstance(options, dict) else {}), "include_usage": True}}
                changed = True
    sent = orjson.dumps(payload) if changed else body
    resp = await call_upstream(ctx, out, route, CLIENT_PROTOCOL[operation], ctx.stream, sent)
    async with resp:
        upstream = Upstream(resp)
        if ctx.stream and upstream.streaming:
            secret = credential_secret(out)
            tap: StreamTap = ChatTap(client_wants_usage or raw, secret) if operation == "chat" \
                else ResponsesTap(secret)
            ticket = ctx.ticket
            if not raw and ticket is not None:  # raw mode: events pass through untouched
                tap.pricer = lambda usage, served: policy.charge(ticket, usage, served)
            out.relayed = tap.relayed_text
            await _relay_tapped(ctx, out, upstream, tap, send, settle)
        else:
            await _relay_json(ctx, out, operation, resp, send, settle)


async def _adjust_same_protocol(ctx: RelayContext, operation: str, route: Route,
                                payload: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Model name, effort from a model suffix, the session_id alias and model rules."""
    changed = False
    if payload.get("model") != route.model:
        payload = {**payload, "model": route.model}
        changed = True
    if ctx.effort:
        if operation == "chat":
            payload = {**payload, "reasoning_effort": ctx.effort}
        else:
            given = payload.get("reasoning")
            reasoning: dict[str, Any] = given if isinstance(given, dict) else {}
            payload = {**payload, "reasoning": {**reasoning, "effort": ctx.effort}}
        changed = True
    if operation != "chat" and "session_id" in payload:
        payload = dict(payload)
        session = payload.pop("session_id")
        payload.setdefault("prompt_cache_key", session)
        changed = True
    rules = await aget_rules()
    if rules:
        payload, matched = apply_rules(rules, route.model, CLIENT_PROTOCOL[operation].name,
                                       payload)
        changed = changed or matched
    return payload, changed


async def _relay_json(ctx: RelayContext, out: Outcome, operation: str,
                      resp: aiohttp.ClientResponse, send: Send, settle: Settlement) -> None:
    payload = await read_answer(out, resp)
    data = parse_answer(out, resp, payload)
    out.usage = (usage_wire.from_chat if operation == "chat"
                 else usage_wire.from_responses)(data.get("usage"))
    out.served = True
    if operation == "responses":
        stored.capture(ctx, data, passthrough=True)  # the store's copy (gateway.stored)
    await send_json(ctx, send, 200, payload, settle=settle)


# Most bytes held back before the first event has shown what the stream is (a Responses
# stream's first event echoes instructions and tools, so it can be large).
MAX_HELD_BYTES = 4 * 1024 * 1024


# Over the complexity limit (C901) on purpose: one stream's life in order (first event, failover
# window, keep-alives, end).
async def _relay_tapped(ctx: RelayContext, out: Outcome, upstream: Upstream,  # noqa: C901
                        tap: StreamTap,
                        send: Send, settle: Settlement) -> None:
    """Relay a passthrough stream event by event.

    The status line waits for the first event: until it proves the stream (see the tap),
    nothing has been promised, so an error event, garbage or a cut there is still an HTTP
    error, eligible for failover. A long silence before it (GATEWAY_KEEPALIVE_SECONDS)
    starts the stream anyway, and a failure then ends it with the protocol's error event,
    as any failure after the first byte does. A failed stream is charged only if text
    reached the client."""
    failure: GatewayError | None = None
    held: bytes | None = b""  # bytes waiting for the status line; None once it is sent
    keepalive = (b": keepalive\n\n" if isinstance(tap, ChatTap) else None)
    try:
        async for chunk in upstream.chunks():
            if chunk is None:
                data = keepalive or encode({"type": "keepalive", "sequence_number": tap.events},
                                           event="keepalive")
            else:
                data = tap.feed(chunk)
                if tap.failure is not None:
                    break
                if held is not None and not tap.verified:
                    held += data
                    if len(held) + tap.buffered() > MAX_HELD_BYTES:
                        tap.failure = bad_response("The upstream's stream has no event in its "
                                                   "first 4 MiB.")
                        break
                    continue
            if held is not None:  # proved (or a long silence): the answer starts
                await start_stream(ctx, send)
                data, held = held + data, None
            out.served = tap.verified
            await send_chunk(ctx, send, data)
            if tap.usage is not None:
                out.usage = tap.usage
    except TimeoutError:
        failure = UpstreamTimeout("The upstream stopped sending mid-stream.")
    except aiohttp.ClientError:
        failure = UpstreamError("The upstream connection broke mid-stream.",
                                code="upstream_stream_cut")
    # A partial last event of a broken stream is dropped, never relayed half.
    tail = tap.finish() if failure is None and tap.failure is None else b""
    failure = tap.failure or failure
    relayed_error = False
    if failure is None and not tap.verified:
        failure = bad_response("The upstream's stream ended before its first event.")
    elif tap.verified and (failure is not None or not tap.complete
                           or tap.ended_failed):
        reported = tap.ended_with()  # the error its last event reported, if any
        if reported is not None:
            failure, relayed_error = reported
        elif failure is None:
            failure = UpstreamError("The upstream ended the stream before it was complete.",
                                    code="upstream_stream_cut")
    if failure is not None:
        if held is not None:  # nothing was sent: still an HTTP error
            out.served = False
            raise failed(out, failure)
        note_failure(out, failure)
        out.error_code = failure.code
        out.served = tap.delivered()  # nothing usable reached the client: no charge
        if not relayed_error:
            tail += tap.error_event(failure)
    else:
        out.served = True
        if held is not None:  # a whole stream in the first read
            await start_stream(ctx, send)
            tail = held + tail
    out.usage = tap.usage
    if isinstance(tap, ResponsesTap):
        stored.capture(ctx, tap.final, passthrough=True)  # the store's copy (gateway.stored)
    await end_stream(ctx, send, tail, settle)
