"""The attempt loop: try a request's routes in order, and pick the path for each.

``run`` walks the routes (bounded attempts, growing backoff, a credential's own RPM limit),
and after a failure that allows another try cools or disables the credential and moves on;
``run_route`` decides, for one route, which of the three paths (see the package docstring)
the request takes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings

from gateway import tracing
from gateway.charging import Settlement
from gateway.context import RelayContext
from gateway.errors import GatewayError, UpstreamUnavailable
from gateway.exchange.compaction import compact, has_compaction_trigger
from gateway.exchange.passthrough import passthrough
from gateway.exchange.translated import parse_client, translated
from gateway.exchange.upstream import attempt_entry
from gateway.outcome import Outcome
from gateway.providers.failures import UpstreamFailed, UpstreamFailure
from gateway.providers.protocols import CLIENT_PROTOCOL
from gateway.respond import Send
from gateway.routing import Route
from gateway.translate import canonical as c
from gateway.translate import responses
from keys import limits
from portal.infra.hotsettings import hot
from portal.infra.metrics import credential_cooled

log = logging.getLogger(__name__)


async def run(ctx: RelayContext, operation: str, routes: list[Route], payload: dict[str, Any],
              body: bytes, out: Outcome, send: Send, settle: Settlement) -> Outcome:
    """Try the routes in order until one answers. Before the first byte reaches the client,
    a connect error, timeout, 429, 5xx or credential refusal moves on to the next route
    (bounded attempts, growing backoff); a 429 cools its credential for the time the
    upstream asked, a 401/403 disables it. After the first byte, errors end the stream.

    Everything the exchange comes to is written to ``out`` (and nowhere else): the routes
    tried, the usage, whether the upstream served the request; ``settle`` is called just
    before the answer's last bytes are sent."""
    last: UpstreamFailed | None = None
    skip_upstreams: set[int] = set()
    attempts = 0
    for route in routes:
        if attempts >= hot.GATEWAY_MAX_ATTEMPTS:
            break
        if route.upstream.id in skip_upstreams:
            continue
        cred = route.credential
        if cred is not None and cred.rpm and not await limits.limiter().hit_credential(
                cred.id, cred.rpm):
            out.attempts.append(attempt_entry(route, 0, "credential_rpm_full", 0.0))
            continue
        if attempts:
            await asyncio.sleep(settings.GATEWAY_RETRY_BACKOFF * 2 ** (attempts - 1))
        attempts += 1
        out.route = route
        try:
            with tracing.attempt(ctx, out, route):
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
    if failure.disable or failure.cool:
        credential_cooled(route.upstream.name, failure.disable)
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
        from gateway import opsalerts

        opsalerts.credential_changed(credential_id, str(credential), True, reason)


async def run_route(ctx: RelayContext, out: Outcome, operation: str, route: Route,
                    payload: dict[str, Any], body: bytes, send: Send,
                    settle: Settlement) -> None:
    """One attempt on one route, by the path it takes: compaction when the request asks to
    compact and the upstream cannot; passthrough when the upstream speaks the client's
    protocol, the body holds nothing sealed, and the upstream needs no fixing (or raw mode,
    or a compact request); translated otherwise."""
    provider = route.upstream.provider
    protocol = provider.protocol(operation)
    raw = raw_mode(ctx.headers)
    turn = ctx.turn
    if turn is not None and turn.references:  # items named by id, resolved by the store
        payload, body = turn.body_for(route.upstream, payload, body)
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


def raw_mode(headers: dict[bytes, bytes]) -> bool:
    """``X-Codex-Mode: raw`` / ``X-Codex-Raw-Passthrough: true``: no compatibility fixes."""
    mode = headers.get(b"x-codex-mode", b"").strip().lower()
    flag = headers.get(b"x-codex-raw-passthrough", b"").strip().lower()
    return mode == b"raw" or flag in (b"true", b"1", b"yes")
