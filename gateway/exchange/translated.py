"""The translated path: client body -> canonical -> upstream body, and back.

``translated`` parses the client's request into the canonical form (``parse_client``),
builds the upstream's body from it (``build_upstream_body``), and ``pump`` turns the
upstream's JSON, SSE or NDJSON answer into canonical events and those into the client's
protocol as they arrive. Codex-style upstreams always take this path (forced streaming,
fixed requests, XML tool text cleaned, non-stream answers aggregated).
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import orjson

from gateway.charging import Settlement
from gateway.context import RelayContext
from gateway.errors import GatewayError, InvalidRequest, UpstreamError, UpstreamTimeout
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
from gateway.providers.base import reported_error
from gateway.providers.decoding import EventDecoder
from gateway.providers.protocols import CLIENT_PROTOCOL, RESPONSES, WireProtocol
from gateway.respond import Send, end_stream, send_chunk, send_json, start_stream
from gateway.routing import Route
from gateway.rules import aget_rules, apply_rules
from gateway.stored import chain as stored
from gateway.translate import canonical as c
from gateway.translate import chat, responses

log = logging.getLogger(__name__)


async def translated(ctx: RelayContext, out: Outcome, operation: str, protocol: WireProtocol,
                     route: Route, payload: dict[str, Any], raw: bool, sealed: bool,
                     send: Send, settle: Settlement) -> None:
    """Build the upstream's request from the canonical one, send it, and pump the answer
    back in the client's protocol."""
    provider = route.upstream.provider
    req = parse_client(operation, payload)
    if ctx.effort:
        req.reasoning_effort = ctx.effort
    # Upstreams that only stream: a non-stream client gets the aggregated answer.
    req.stream = ctx.stream or provider.always_streams
    body, tool_map = await build_upstream_body(ctx, operation, protocol, route, payload, req,
                                               raw, sealed)
    encoder = client_encoder(ctx, operation, req, payload,
                             clean_xml=provider.clean_xml_tools and not raw)
    restorer = c.ToolCallRestorer(tool_map)
    out.relayed = encoder.relayed_text
    resp = await call_upstream(ctx, out, route, protocol, bool(body.get("stream")),
                               orjson.dumps(body))
    async with resp:
        await pump(ctx, out, Upstream(resp), protocol, encoder, restorer, send, settle)


def parse_client(operation: str, payload: dict[str, Any]) -> c.CanonicalRequest:
    """The client's request in the canonical form; one that cannot be read is a 400."""
    try:
        if operation == "chat":
            return chat.parse_request(payload)
        return responses.parse_request(payload)
    except c.TranslationError as exc:
        raise InvalidRequest(str(exc), param=exc.param) from None


def client_encoder(ctx: RelayContext, operation: str, req: c.CanonicalRequest,
                   payload: dict[str, Any], clean_xml: bool) -> chat.ChatEncoder | \
        responses.ResponsesEncoder:
    """The encoder of the client's protocol; a Responses answer echoes the request fields
    the client set."""
    if operation == "chat":
        return chat.ChatEncoder(ctx.model, req.include_usage, clean_xml_tools=clean_xml)
    echo = {k: payload.get(k) for k in ("instructions", "tools", "tool_choice",
                                        "parallel_tool_calls", "max_output_tokens",
                                        "previous_response_id", "reasoning", "store",
                                        "temperature", "top_p", "text", "metadata", "user")
            if payload.get(k) is not None}
    echo.update(stored.echo(ctx))  # previous_response_id and store, as the store sees them
    return responses.ResponsesEncoder(ctx.model, echo, clean_xml_tools=clean_xml)


async def build_upstream_body(ctx: RelayContext, operation: str, protocol: WireProtocol,
                              route: Route, payload: dict[str, Any], req: c.CanonicalRequest,
                              raw: bool, sealed: bool) -> tuple[dict[str, Any], c.ToolMap]:
    """The upstream's request body, and how the tools lowered for it map back.

    A Responses request to a Responses upstream keeps every field the client sent (unless
    it carries sealed items to open); any other is built from the canonical request. The
    provider's fixes (not in raw mode) and the model rules apply last."""
    provider = route.upstream.provider
    tool_map = c.ToolMap()
    if protocol is not RESPONSES:
        tool_map = c.lower_tools(req)
        if tool_map.dropped:
            log.info("%s: tools %s have no form upstream (%s) and were dropped",
                     ctx.request_id, ", ".join(tool_map.dropped), protocol.name)
    try:
        if protocol is RESPONSES and CLIENT_PROTOCOL[operation] is RESPONSES and not sealed:
            # Same protocol: keep every field the client sent.
            body = {**payload, "model": route.model, "stream": req.stream}
            if ctx.effort:
                body["reasoning"] = {**(body.get("reasoning") or {}), "effort": ctx.effort}
        else:
            assert protocol.build is not None, protocol.name
            body = protocol.build(req, route.model)
    except c.TranslationError as exc:
        raise InvalidRequest(str(exc), param=exc.param) from None
    if not raw:
        body = provider.fix_request(body)
    rules = await aget_rules()
    if rules:
        body, _ = apply_rules(rules, route.model, protocol.name, body)
    return body, tool_map


# Over the complexity limit (C901) on purpose: decode, encode, keep alive and fail over in one
# loop per chunk.
async def pump(ctx: RelayContext, out: Outcome, upstream: Upstream,  # noqa: C901
               protocol: WireProtocol,
               encoder: chat.ChatEncoder | responses.ResponsesEncoder,
               restorer: c.ToolCallRestorer, send: Send, settle: Settlement) -> None:
    """Upstream answer -> canonical events -> the client's protocol, as they arrive.

    A streaming client's status line waits for the first content (or a long silence, or
    the end): an upstream that fails before producing any (an error event, garbage, a cut)
    is then still an HTTP error, eligible for failover, instead of an empty stream. A
    failure after content ends the stream with the protocol's error event, and the request
    is charged for what was relayed; a failure with nothing delivered is charged nothing."""
    client_stream = ctx.stream
    decoder = EventDecoder(protocol)
    held: bytes | None = b""  # client bytes waiting for the status line; None once sent

    async def emit(events: list[c.Event]) -> None:
        nonlocal held
        data = b"".join(encoder.feed(e) for ev in events for e in restorer.feed(ev))
        if encoder.usage is not None:
            out.usage = encoder.usage
        if not client_stream:
            return
        if held is not None:
            if not decoder.saw_content or encoder.failure is not None:
                held += data
                return
            await start_stream(ctx, send)
            data, held = held + data, None
        out.served = decoder.saw_content
        await send_chunk(ctx, send, data)

    if not upstream.streaming:
        payload = await read_answer(out, upstream.resp)
        await emit(decoder.decode_body(parse_answer(out, upstream.resp, payload)))
    else:
        try:
            async for chunk in upstream.chunks():
                if chunk is None:
                    if client_stream:
                        if held is not None:  # a long silence: start the answer anyway
                            await start_stream(ctx, send)
                            await send_chunk(ctx, send, held)
                            held = None
                        await send_chunk(ctx, send, _keepalive(encoder))
                    continue
                await emit(decoder.feed(chunk))
                if encoder.failure is not None:
                    break  # nothing after an upstream's failure is read
            else:
                await emit(decoder.finish())
        except TimeoutError:
            await emit([c.Failure("upstream_timeout", "The upstream stopped sending.")])
        except aiohttp.ClientError:
            await emit([c.Failure("upstream_stream_cut",
                                  "The upstream connection broke mid-stream.")])
    await emit(restorer.close())
    failure = encoder.failure
    if failure is not None and (not client_stream or held is not None):
        out.served = False  # nothing reached the client: an HTTP error, no charge
        raise failed(out, _failure_error(out, failure))
    out.usage = encoder.usage
    if failure is not None:
        note_failure(out, _failure_error(out, failure))
        out.error_code = failure.code
        out.served = decoder.saw_content  # charged only for text the client got
    else:
        out.served = True
    if not client_stream:
        final = encoder.final()
        if isinstance(encoder, responses.ResponsesEncoder):
            stored.capture(ctx, final, passthrough=False)  # the store's copy (gateway.stored)
        await send_json(ctx, send, 200, orjson.dumps(final), settle=settle)
        return
    await announce_cost(out, encoder, settle)
    tail = encoder.close()
    if isinstance(encoder, responses.ResponsesEncoder):  # the store's copy (gateway.stored)
        stored.capture(ctx, encoder.response(encoder.status()), passthrough=False)
    if held is not None:  # the whole answer came before any content (or had none)
        await start_stream(ctx, send)
        tail = held + tail
    await end_stream(ctx, send, tail, settle)


async def announce_cost(out: Outcome, encoder: chat.ChatEncoder | responses.ResponsesEncoder,
                        settle: Settlement) -> None:
    """Price the stream before its last event is written, so the event's usage carries the
    cost (and, when the upstream reported no usage, the tokens Turnpike counted, which are
    what is charged)."""
    encoder.cost = await settle.price()
    if encoder.usage is None:
        encoder.usage = out.usage


# Failure codes the relay itself decides (the others are the upstream's own error codes).
_RELAY_FAILURES: dict[str, type[UpstreamError]] = {
    "upstream_timeout": UpstreamTimeout, "upstream_stream_cut": UpstreamError,
    "upstream_bad_response": UpstreamError,
}


def _failure_error(out: Outcome, failure: c.Failure) -> GatewayError:
    """The client-facing error for a translated stream's failure."""
    relay_error = _RELAY_FAILURES.get(failure.code)
    if relay_error is not None:
        return relay_error(failure.message, code=failure.code)
    return reported_error(failure.code, failure.message, credential_secret(out))


def _keepalive(encoder: chat.ChatEncoder | responses.ResponsesEncoder) -> bytes:
    if isinstance(encoder, responses.ResponsesEncoder) and encoder.started:
        return encoder.keepalive()
    return b": keepalive\n\n"
