"""Upstream health: probe one upstream cheaply (its model list), record what happened, and
take it out of routing after repeated failures (back in when it recovers)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import httpx
from django.conf import settings
from django.utils import timezone

from gateway import opsalerts
from gateway.models import Upstream, upstream_base_url
from gateway.providers.registry import PROVIDERS
from gateway.routing import route_tables
from keys.models import Status
from portal.audit.record import log_change

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    latency_ms: int
    error: str = ""


def probe(upstream: Upstream, timeout: float = 10.0) -> ProbeResult:
    """One request to the upstream with its first active credential (sync; for the task and
    the admin's "test now")."""
    credential = upstream.credentials.filter(status=Status.ACTIVE).first()
    secret = credential.get_secret() if credential is not None else None
    url, headers = PROVIDERS[upstream.kind].probe(
        upstream_base_url(upstream.kind, upstream.base_url), secret)
    started = time.perf_counter()
    try:
        with httpx.Client(timeout=timeout, proxy=upstream.proxy_url or None,
                          follow_redirects=False) as client:
            resp = client.get(url, headers=headers)
    except httpx.HTTPError as exc:
        return ProbeResult(False, int((time.perf_counter() - started) * 1000),
                           f"{type(exc).__name__}: {exc}"[:300])
    latency = int((time.perf_counter() - started) * 1000)
    if 300 <= resp.status_code < 400:
        # Not followed (a redirect would carry the credential to wherever it points), and
        # not healthy either: requests are not followed to it.
        return ProbeResult(False, latency, f"HTTP {resp.status_code}: a redirect; upstream "
                                           "redirects are not followed")
    if resp.status_code >= 400:
        return ProbeResult(False, latency, f"HTTP {resp.status_code}")
    return ProbeResult(True, latency)


def record(upstream: Upstream, result: ProbeResult) -> None:
    """Store the probe's outcome; disable after GATEWAY_HEALTH_FAILURES failures in a row,
    re-enable on the first success. Only the auto_disabled flag is touched, so an operator's
    own disable is never undone."""
    failures = 0 if result.ok else upstream.health_failures + 1
    auto_disabled = upstream.auto_disabled
    if result.ok:
        auto_disabled = False
    elif failures >= settings.GATEWAY_HEALTH_FAILURES:
        auto_disabled = True
    changed = auto_disabled != upstream.auto_disabled
    Upstream.objects.filter(pk=upstream.pk).update(
        health="healthy" if result.ok else "unhealthy", health_checked_at=timezone.now(),
        health_latency_ms=result.latency_ms, health_failures=failures,
        health_error=result.error, auto_disabled=auto_disabled,
    )
    if changed:
        # A queryset update sends no signal: the system's change is recorded here.
        log_change(upstream, {"auto_disabled": [upstream.auto_disabled, auto_disabled]})
        log.warning("upstream %s %s by the health probe (%s)", upstream.name,
                    "disabled" if auto_disabled else "re-enabled", result.error or "ok")
        route_tables.invalidate(["all"])
        opsalerts.upstream_changed(upstream.pk, upstream.name, auto_disabled,
                                   f"{failures} failures in a row, the last: {result.error}")


def probe_all() -> dict[str, bool]:
    """Probe every upstream an operator has enabled (auto-disabled ones included, so they can
    recover). Returns name -> healthy."""
    outcome = {}
    for upstream in Upstream.objects.filter(status=Status.ACTIVE):
        result = probe(upstream)
        record(upstream, result)
        outcome[upstream.name] = result.ok
    return outcome
