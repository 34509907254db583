"""One request's exchange with its upstream: choose how, send, and relay the answer.

    passthrough   the upstream speaks the client's protocol and needs no fixing (an
                  ``openai`` upstream, or raw mode): the client's bytes go up (touched only
                  for the model name, effort, usage metering and model rules) and the
                  upstream's events come back byte for byte.
    translated    anything else: client body -> canonical -> upstream body; upstream
                  JSON/SSE/NDJSON -> canonical events -> the client's protocol. Codex-style
                  upstreams always take this path (forced streaming, fixed requests, XML
                  tool text cleaned, non-stream answers aggregated).
    compaction    /v1/responses/compact, or an input ending in ``compaction_trigger``, for an
                  upstream without native compaction: Turnpike summarises the history with
                  the routed model and answers with its own compaction item.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from asgiref.sync import sync_to_async
from django.conf import settings

from gateway import policy
from gateway.charging import Settlement
from gateway.context import RelayContext
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.outcome import Outcome
from gateway.providers.base import (
    error_answer,
    is_error_answer,
    reported_error,
    retry_after_seconds,
    upstream_error,
)
from gateway.providers.decoding import EventDecoder
from gateway.providers.failures import NEXT_UPSTREAM, UpstreamFailed, UpstreamFailure, classify
from gateway.providers.http import upstream_session
from gateway.providers.protocols import CLIENT_PROTOCOL, RESPONSES, WireProtocol
from gateway.respond import Send, end_stream, send_chunk, send_json, start_stream
from gateway.routing import Route
from gateway.rules import aget_rules, apply_rules
from gateway.stored import chain as stored
from gateway.streaming import ChatTap, ResponsesTap, StreamTap, bad_response
from gateway.translate import canonical as c
from gateway.translate import chat, responses
from gateway.wire import usage as usage_wire
from gateway.wire.sse import encode

log = logging.getLogger(__name__)

COMPACT_PROMPT = (
    "You are compacting a conversation so it can continue in a fresh context window. Write a "
    "handoff summary for another model: the user's goals and constraints, decisions made, work "
    "done so far (files, commands, results), open questions and the next steps. Be complete but "
    "concise; plain text."
)


def raw_mode(headers: dict[bytes, bytes]) -> bool:
    """``X-Codex-Mode: raw`` / ``X-Codex-Raw-Passthrough: true``: no compatibility fixes."""
    mode = headers.get(b"x-codex-mode", b"").strip().lower()
    flag = headers.get(b"x-codex-raw-passthrough", b"").strip().lower()
    return mode == b"raw" or flag in (b"true", b"1", b"yes")


def has_compaction_trigger(payload: dict[str, Any]) -> bool:
    items = payload.get("input")
    return (isinstance(items, list) and bool(items) and isinstance(items[-1], dict)
            and items[-1].get("type") == "compaction_trigger")


async def run(ctx: RelayContext, operation: str, routes: list[Route], payload: dict[str, Any],
              body: bytes, out: Outcome, send: Send, settle: Settlement) -> Outcome:
    """Try the routes in order until one answers. Before the first byte reaches the client,
    a connect error, timeout, 429, 5xx or credential refusal moves on to the next route
    (bounded attempts, growing backoff); a 429 cools its credential for the time the
    upstream asked, a 401/403 disables it. After the first byte, errors end the stream.

    Everything the exchange comes to is written to ``out`` (and nowhere else): the routes
    tried, the usage, whether the upstream served the request; ``settle`` is called just
    before the answer's last bytes are sent."""
    from keys.limits import limiter

    last: UpstreamFailed | None = None
    skip_upstreams: set[int] = set()
    attempts = 0
    for route in routes:
        if attempts >= settings.GATEWAY_MAX_ATTEMPTS:
            break
        if route.upstream.id in skip_upstreams:
            continue
        cred = route.credential
        if cred is not None and cred.rpm and not await limiter().hit_credential(cred.id,
                                                                                cred.rpm):
            out.attempts.append(_attempt(route, 0, "credential_rpm_full", 0.0))
            continue
        if attempts:
            await asyncio.sleep(settings.GATEWAY_RETRY_BACKOFF * 2 ** (attempts - 1))
        attempts += 1
        out.route = route
        try:
            await run_route(ctx, out, operation, route, payload, body, send, settle)
            return out
        except UpstreamFailed as exc:
            if exc.failure.retry is None or ctx.status:
                raise
            last = exc
            out.usage = None  # a failed attempt's figures are not this request's
            await _after_failure(route, exc.failure, exc.error)
            if exc.failure.retry == "upstream":
                skip_upstreams.add(route.upstream.id)
    if last is not None:
        raise last
    raise UpstreamUnavailable("Every upstream credential for this model is cooling down or "
                              "at its limit; try again shortly.", code="no_upstream_available")


async def _after_failure(route: Route, failure: UpstreamFailure,
                         error: GatewayError) -> None:
    from keys.limits import limiter

    cred = route.credential
    if cred is None:
        return
    if failure.disable:
        await limiter().cool(cred.id, 3600)  # every process skips it at once
        await sync_to_async(_disable_credential, thread_sensitive=False)(
            cred.id, f"Upstream answered {error.message[:200]}")
    elif failure.cool:
        await limiter().cool(cred.id, failure.cool_for or settings.GATEWAY_COOLDOWN_SECONDS)


def _disable_credential(credential_id: int, reason: str) -> None:
    from gateway.models import Credential
    from keys.models import Status

    credential = Credential.objects.filter(pk=credential_id).first()
    if credential is not None and credential.status == Status.ACTIVE:
        credential.status = Status.DISABLED
        credential.disabled_reason = reason[:300]
        credential.save(update_fields=["status", "disabled_reason"])  # drops the route table
        log.warning("disabled credential %s of %s: %s", credential_id,
                    credential.upstream_id, reason)


def _attempt(route: Route, status: int, error: str, started: float) -> dict[str, Any]:
    return {"upstream": route.upstream.name, "upstream_id": route.upstream.id,
            "credential_id": route.credential.id if route.credential else None,
            "status": status, "error": error,
            "ms": int((time.perf_counter() - started) * 1000) if started else 0}


async def run_route(ctx: RelayContext, out: Outcome, operation: str, route: Route,
                    payload: dict[str, Any], body: bytes, send: Send,
                    settle: Settlement) -> None:
    provider = route.upstream.provider
    protocol = provider.protocol(operation)
    raw = raw_mode(ctx.headers)
    if not provider.native_compaction and (operation == "compact"
                                           or has_compaction_trigger(payload)):
        await compact(ctx, out, operation, route, payload, send, settle)
        return
    # Turnpike's own sealed reasoning/compaction tokens must be opened, so such a body is
    # never relayed untouched (searched once, in the raw bytes).
    sealed = any(marker in body for marker in c.SEAL_MARKERS)
    if operation == "compact" and sealed:
        # The translated path has no compact form (it raised KeyError: a 500): open
        # Turnpike's own sealed items here and send the upstream a plain compact request.
        items = [responses.item_to_responses(i) for i in parse_client(operation, payload).items]
        payload = {**payload, "input": [i for i in items if i is not None]}
        body, sealed = orjson.dumps(payload), False
    if protocol is CLIENT_PROTOCOL[operation] and not sealed and (
            provider.relays_untouched or raw or operation == "compact"):
        # The Codex fixes are for /responses streams; /responses/compact is plain JSON.
        await passthrough(ctx, out, operation, route, payload, body, raw, send, settle)
    else:
        await translated(ctx, out, operation, protocol, route, payload, raw, sealed, send,
                         settle)


# --- upstream I/O -----------------------------------------------------------------------

class Upstream:
    """One open upstream answer."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp

    @property
    def streaming(self) -> bool:
        ctype = self.resp.headers.get("content-type", "")
        return ctype.startswith("text/event-stream") or ctype.startswith("application/x-ndjson")

    async def chunks(self) -> AsyncIterator[bytes | None]:
        """Body chunks as they arrive; None after GATEWAY_KEEPALIVE_SECONDS of silence."""
        content = self.resp.content
        wait = settings.GATEWAY_KEEPALIVE_SECONDS
        while True:
            try:
                async with asyncio.timeout(wait) as timer:
                    chunk = await content.readany()
            except TimeoutError:
                if timer.expired():
                    yield None
                    continue
                raise
            if not chunk:
                return
            yield chunk


async def call_upstream(ctx: RelayContext, out: Outcome, route: Route, protocol: WireProtocol,
                        stream: bool, body: bytes) -> aiohttp.ClientResponse:
    """Send the request and wait for the answer's start (the upstream's own timeouts);
    raise UpstreamFailed (what it means for routing, and the client-facing error) for
    anything but a 2xx.

    Redirects are never followed: a 3xx is an upstream (configuration) error. Following
    one would send the request, and the credential with it, wherever the upstream points
    (aiohttp strips only Authorization on a cross-host redirect, not Anthropic's x-api-key).

    A 2xx is not yet a success: the relay decides that from the answer itself (an error
    body, garbage, a stream cut before its first event are failures too), and sets
    ``out.served`` only then."""
    up = route.upstream
    secret = route.credential.secret if route.credential else None
    url = up.provider.url(up.base_url, protocol)
    headers = up.provider.headers(secret, stream, ctx.headers)
    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(
        total=None, connect=up.timeout_connect or settings.GATEWAY_CONNECT_TIMEOUT,
        sock_read=up.timeout_idle or settings.GATEWAY_READ_TIMEOUT)
    error: GatewayError
    try:
        async with asyncio.timeout(up.timeout_first_byte):
            resp = await upstream_session().post(url, data=body, headers=headers,
                                                 timeout=timeout, proxy=up.proxy,
                                                 allow_redirects=False)
    except TimeoutError:
        error = UpstreamTimeout("The upstream did not answer in time.")
        out.attempts.append(_attempt(route, 0, error.code, started))
        raise UpstreamFailed(NEXT_UPSTREAM, error) from None
    except aiohttp.ClientError as exc:
        error = UpstreamUnavailable(f"Could not reach the upstream: {type(exc).__name__}.")
        out.attempts.append(_attempt(route, 0, error.code, started))
        raise UpstreamFailed(NEXT_UPSTREAM, error) from None
    if 300 <= resp.status < 400:
        resp.release()
        error = UpstreamError(
            f"The upstream answered HTTP {resp.status}, a redirect; Turnpike does not follow "
            "upstream redirects. An operator needs to check the upstream's base URL.",
            code="upstream_redirect")
        out.attempts.append(_attempt(route, resp.status, error.code, started))
        raise UpstreamFailed(NEXT_UPSTREAM, error)
    if resp.status >= 400:
        try:
            error = upstream_error(resp.status, await resp.read(), resp.headers, secret)
        except (TimeoutError, aiohttp.ClientError):
            error = upstream_error(resp.status, b"", resp.headers, secret)
        finally:
            resp.release()
        out.attempts.append(_attempt(route, resp.status, error.code, started))
        raise UpstreamFailed(classify(resp.status, retry_after_seconds(resp.headers)), error)
    out.attempts.append(_attempt(route, resp.status, "", started))
    return resp


def _secret(out: Outcome) -> str | None:
    route = out.route
    return route.credential.secret if route is not None and route.credential else None


def _note_failure(out: Outcome, error: GatewayError) -> None:
    """Note on the attempt that its 2xx answer failed after all."""
    if out.attempts and not out.attempts[-1]["error"]:
        out.attempts[-1]["error"] = error.code


def _failed(out: Outcome, error: GatewayError) -> UpstreamFailed:
    """A 2xx answer that failed before the client got a byte: noted on the attempt, and
    classified by the status it is answered with (a 5xx or a bad answer fails over, a rate
    limit cools the credential, the request's own fault, a 4xx, goes back to the client:
    no other upstream would answer it better)."""
    _note_failure(out, error)
    return UpstreamFailed(classify(error.status), error)


async def read_answer(out: Outcome, resp: aiohttp.ClientResponse) -> bytes:
    """The whole body of a non-streamed answer. An upstream that goes silent (idle timeout)
    or breaks the body off (ClientPayloadError) is an upstream failure, 504/502, not ours."""
    try:
        return await resp.read()
    except TimeoutError:
        raise _failed(out, UpstreamTimeout("The upstream stopped sending its answer.")) from None
    except aiohttp.ClientError:
        raise _failed(out, UpstreamError(
            "The upstream connection broke before its answer was complete.",
            code="upstream_stream_cut")) from None


def parse_answer(out: Outcome, resp: aiohttp.ClientResponse, payload: bytes) -> Any:
    """A non-streamed answer as JSON; raise the client-facing error if it is not JSON, not
    an object, or an error object (which is mapped like the HTTP error it stands for)."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise _failed(out, bad_response(
            "The upstream answered with something that is not JSON.")) from None
    if not isinstance(data, dict):
        raise _failed(out, bad_response("The upstream's answer is not a JSON object."))
    if is_error_answer(data):
        raise _failed(out, error_answer(payload, resp.headers, _secret(out)))
    return data


# --- passthrough ------------------------------------------------------------------------

async def passthrough(ctx: RelayContext, out: Outcome, operation: str, route: Route,
                      payload: dict[str, Any], body: bytes, raw: bool, send: Send,
                      settle: Settlement) -> None:
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
            secret = _secret(out)
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
            raise _failed(out, failure)
        _note_failure(out, failure)
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


# --- translated -------------------------------------------------------------------------

def parse_client(operation: str, payload: dict[str, Any]) -> c.CanonicalRequest:
    try:
        if operation == "chat":
            return chat.parse_request(payload)
        return responses.parse_request(payload)
    except c.TranslationError as exc:
        raise InvalidRequest(str(exc), param=exc.param) from None


def client_encoder(ctx: RelayContext, operation: str, req: c.CanonicalRequest,
                   payload: dict[str, Any], clean_xml: bool) -> chat.ChatEncoder | \
        responses.ResponsesEncoder:
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


async def translated(ctx: RelayContext, out: Outcome, operation: str, protocol: WireProtocol,
                     route: Route, payload: dict[str, Any], raw: bool, sealed: bool,
                     send: Send, settle: Settlement) -> None:
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
        raise _failed(out, _failure_error(out, failure))
    out.usage = encoder.usage
    if failure is not None:
        _note_failure(out, _failure_error(out, failure))
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
    return reported_error(failure.code, failure.message, _secret(out))


def _keepalive(encoder: chat.ChatEncoder | responses.ResponsesEncoder) -> bytes:
    if isinstance(encoder, responses.ResponsesEncoder) and encoder.started:
        return encoder.keepalive()
    return b": keepalive\n\n"


# --- compaction by Turnpike ---------------------------------------------------------------

async def compact(ctx: RelayContext, out: Outcome, operation: str, route: Route,
                  payload: dict[str, Any], send: Send, settle: Settlement) -> None:
    """Summarise the history with the routed model and answer with a compaction item."""
    protocol = route.upstream.provider.protocol(operation)
    history = dict(payload)
    items = payload.get("input")
    if isinstance(items, list) and items and isinstance(items[-1], dict) and \
            items[-1].get("type") == "compaction_trigger":
        history["input"] = items[:-1]
    req = parse_client("responses", history)
    req.instructions = [COMPACT_PROMPT]
    req.items.append(c.Message(role="user", parts=[c.Part(
        "text", text="Write the handoff summary of the conversation above now.")]))
    req.tools, req.tool_choice, req.stream = [], None, False
    req.reasoning_effort = None
    body, _ = await build_upstream_body(ctx, operation, protocol, route, {}, req, raw=True,
                                        sealed=True)
    body["stream"] = False
    resp = await call_upstream(ctx, out, route, protocol, False, orjson.dumps(body))
    async with resp:
        events = EventDecoder(protocol).decode_body(
            parse_answer(out, resp, await read_answer(out, resp)))
    summary = "".join(e.text for e in events if isinstance(e, c.TextDelta))
    usage = next((e.usage for e in events if isinstance(e, c.UsageReport)), usage_wire.Usage())
    failure = next((e for e in events if isinstance(e, c.Failure)), None)
    if failure is not None or not summary:
        raise UpstreamError(failure.message if failure else "The model returned no summary.",
                            code=failure.code if failure else "compaction_failed")
    out.usage = usage
    out.served = True
    item = {"type": "compaction", "id": responses.new_id("cmp"),
            "encrypted_content": c.seal_compaction(summary)}
    if operation == "compact":
        # The user's messages, in the typed form the Responses output uses (clients such as
        # Codex deserialise the output as items).
        kept = [responses.item_to_responses(m) for m in parse_client(
            "responses", {"input": items}).items
            if isinstance(m, c.Message) and m.role == "user"] if items else []
        answer = {"id": item["id"], "object": "response.compaction",
                  "created_at": int(time.time()), "output": [*kept, item],
                  "usage": usage_wire.to_responses(usage)}
        await send_json(ctx, send, 200, orjson.dumps(answer), settle=settle)
        return
    encoder = responses.ResponsesEncoder(ctx.model)
    stream = b"".join(encoder.feed(e) for e in (c.Start(), c.OpaqueItem(item), c.Finish("stop"),
                                                  c.UsageReport(usage)))
    if ctx.stream:
        await announce_cost(out, encoder, settle)
        await start_stream(ctx, send)
        await end_stream(ctx, send, stream + encoder.close(), settle)
    else:
        await send_json(ctx, send, 200, orjson.dumps(encoder.final()), settle=settle)
