"""The gateway's Prometheus metrics (README, "Metrics"): what each request moved, and
``GET /metrics``.

``observe(ctx)`` is the one call per request (from ``pipeline.handle``, after the usage
row): it reads the finished RelayContext and its Outcome (endpoint, model, upstream, status
class, error code, stream, latency, time to first byte, tokens, cost, every upstream
attempt) and adds them to the in-memory tally of ``portal.infra.metrics``, which a timer
writes into the metrics once a second. Labels are bounded: the model is labelled only once
the key policy admitted the request (a name no upstream serves never becomes a label), and
models and error codes past the first few hundred distinct ones a process saw are counted
as "other"; key and request ids are never labels.

``metrics_app`` serves the exposition, to addresses in METRICS_ALLOW and, when
METRICS_TOKEN is set, to requests bearing it. Values only a scrape needs are read then, by
the process answering it: the Redis journals' lengths, each enabled upstream's health (its
row in the database), whether Redis answers, the Celery queues' lengths on the broker.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import time
from collections.abc import Iterable
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.context import RelayContext
from gateway.respond import Receive, Send
from keys.limits import fallback_limiter
from portal.infra import metrics as m
from portal.infra.metrics import tally

log = logging.getLogger(__name__)

# The router's endpoint names (gateway.pipeline.ENDPOINTS), and the run of a background
# response (gateway.stored.background: its POST is counted as "responses" when it is
# queued, its run, wherever it runs, as this); any other path is "other".
BACKGROUND = "responses/background"
ENDPOINTS = frozenset({"responses", "responses/compact", "chat/completions", "models",
                       "dashboard/billing/subscription", "dashboard/billing/usage",
                       "responses/stored", BACKGROUND})
# Refusals by the key policy's limits (gateway.policy, checks 5-9), by Redis being away
# (GATEWAY_REDIS_FAILURE=closed), and because every credential was cooling down.
LIMITER_CODES = frozenset({"quota_exceeded", "rate_limit_rpm", "rate_limit_rpd",
                           "rate_limit_tpm", "concurrent_limit", "max_tokens_exceeded",
                           "limits_unavailable", "upstream_rate_limited"})
_STATUS_CLASS = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")
OTHER = "other"


class Bounded:
    """A label's values as a process first saw them, up to ``limit`` distinct ones; any
    value after that is ``other``."""

    __slots__ = ("seen", "limit")

    def __init__(self, limit: int) -> None:
        self.seen: dict[str, str] = {}
        self.limit = limit

    def __call__(self, value: str) -> str:
        label = self.seen.get(value)
        if label is None:
            if len(self.seen) >= self.limit:
                return OTHER
            label = self.seen[value] = value[:100]
        return label


LOCAL_LIMITER = fallback_limiter()  # admits while Redis is away (GATEWAY_REDIS_FAILURE=open)
models = Bounded(500)
error_codes = Bounded(200)


def attempt_outcome(entry: dict[str, Any]) -> str:
    """How one upstream attempt (an ``Outcome.attempts`` entry) ended, in a few words."""
    error, status = entry["error"], entry["status"]
    if not error:
        return "ok"
    if error == "credential_rpm_full":
        return "rpm_full"  # skipped: the credential's own RPM was used up, nothing sent
    if status == 0:
        return "timeout" if error == "upstream_timeout" else "unreachable"
    if status < 300:
        return "bad_answer"  # a 2xx whose body was an error or not an answer
    if status < 400:
        return "redirect"
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "refused"
    return "client_error" if status < 500 else "server_error"


def observe(ctx: RelayContext, endpoint: str | None = None) -> None:
    """Count one finished request (after ``pipeline.record``: its cost is settled), as
    ``endpoint`` if given. Never raises: a metrics bug must not reach the request."""
    on = tally.enabled
    if not on and (on is False or not m.configure()):
        return
    try:
        _observe(ctx, endpoint or ctx.endpoint)
    except Exception:
        log.exception("metrics: counting request %s failed", ctx.request_id)


def _observe(ctx: RelayContext, endpoint: str) -> None:  # noqa: C901 (one flat pass)
    tally.keep_flushing()
    out = ctx.outcome
    route = out.route
    upstream = route.upstream.name if route is not None else ""
    ticket = ctx.ticket
    model = models(ctx.model) if ticket is not None else ""
    if endpoint not in ENDPOINTS:
        endpoint = OTHER
    stream = "true" if ctx.stream else "false"
    status = ctx.status or 500
    code = out.error_code or ctx.error_code
    count = tally.count
    count(m.REQUESTS, (endpoint, model, upstream,
                       _STATUS_CLASS[status // 100] if status < 600 else "5xx",
                       error_codes(code) if code else "", stream))
    timing = (endpoint, model, upstream, stream)
    tally.observe(m.REQUEST_SECONDS, timing, time.perf_counter() - ctx.started)
    if out.served and ctx.first_byte_at is not None:
        tally.observe(m.FIRST_BYTE_SECONDS, timing, ctx.first_byte_at - ctx.started)
    usage = out.usage
    if usage is not None:
        if usage.input_tokens:
            count(m.TOKENS, (model, upstream, "input"), usage.input_tokens)
        if usage.cached_tokens:
            count(m.TOKENS, (model, upstream, "cached"), usage.cached_tokens)
        if usage.output_tokens:
            count(m.TOKENS, (model, upstream, "output"), usage.output_tokens)
        if usage.reasoning_tokens:
            count(m.TOKENS, (model, upstream, "reasoning"), usage.reasoning_tokens)
    settlement = ctx.settlement
    if settlement is not None and settlement.cost:
        count(m.COST, (model, upstream), float(settlement.cost))
    attempts = out.attempts
    if attempts:
        last = len(attempts) - 1
        for i, entry in enumerate(attempts):
            name, outcome = entry["upstream"], attempt_outcome(entry)
            count(m.UPSTREAM_ATTEMPTS, (name, outcome))
            if outcome != "rpm_full":
                tally.observe(m.UPSTREAM_SECONDS, (name, outcome), entry["ms"] / 1000)
            if i < last:
                count(m.FAILOVERS, (name,))
    if code in LIMITER_CODES:
        count(m.LIMITER_REFUSALS, (code,))
    if ticket is not None and ticket.limiter is LOCAL_LIMITER:
        count(m.LOCAL_ADMISSIONS, ())


# This process's own gauges, read at every flush (gateway.pipeline imports this module, so
# these import it when called).

def _in_flight() -> float:
    from gateway.pipeline import in_flight

    return in_flight()


def _open_streams() -> float:
    from gateway.pipeline import open_streams

    return open_streams()


def _usage_pending() -> float:
    from billing.usage import pending_usage

    return pending_usage()


def _store_pending() -> float:
    from gateway.stored import store

    return store.pending()


for _gauge_, _read in ((m.IN_FLIGHT, _in_flight), (m.OPEN_STREAMS, _open_streams),
                       (m.USAGE_PENDING, _usage_pending), (m.STORE_PENDING, _store_pending)):
    tally.sampler(_gauge_, _read)


# --- GET /metrics -------------------------------------------------------------------------

_networks: tuple[tuple[str, ...], list[Any]] = ((), [])


def allowed_networks() -> list[Any]:
    global _networks
    wanted = tuple(settings.METRICS_ALLOW)
    if _networks[0] != wanted:
        _networks = (wanted, [ipaddress.ip_network(n, strict=False) for n in wanted])
    return _networks[1]


# Headers a proxy puts the client's address in; daphne --proxy-headers (the Dockerfile's
# command) takes the address from X-Forwarded-For whoever sent it.
PROXY_HEADERS = (b"x-forwarded-for", b"forwarded", b"x-real-ip")


def refusal(scope: dict[str, Any]) -> tuple[int, str] | None:
    """(status, message) when this scrape may not read the metrics: 403 for an address
    outside METRICS_ALLOW, or for a scrape that came through a proxy (its address may be
    whatever the client claimed) while no METRICS_TOKEN is set; 401 without the
    METRICS_TOKEN bearer token when one is set."""
    headers = dict(scope.get("headers") or [])
    token = settings.METRICS_TOKEN
    if not token and any(name in headers for name in PROXY_HEADERS):
        return 403, ("Forbidden: this scrape came through a proxy (it carries "
                     "X-Forwarded-For or Forwarded), so its address cannot be trusted; set "
                     "METRICS_TOKEN to scrape through a proxy, or scrape the gateway "
                     "directly.\n")
    client = scope.get("client")
    try:
        address: Any = ipaddress.ip_address(client[0]) if client else None
    except ValueError:
        address = None
    if address is not None and getattr(address, "ipv4_mapped", None) is not None:
        address = address.ipv4_mapped
    if address is None or not any(address in net for net in allowed_networks()
                                  if net.version == address.version):
        shown = client[0] if client else "an unknown address"
        return 403, (f"Forbidden: /metrics is not served to {shown}; add its address or "
                     "network to METRICS_ALLOW.\n")
    if token:
        scheme, _, value = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(),
                                                                 token.encode()):
            return 401, ("Unauthorized: /metrics needs the header "
                         "'Authorization: Bearer <METRICS_TOKEN>'.\n")
    return None


async def _plain(send: Send, status: int, text: str,
                 extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store"),
        *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


async def metrics_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """GET /metrics: the Prometheus exposition (OpenMetrics when the scraper asks for it)."""
    if scope["type"] != "http":
        return
    if not m.enabled():
        await _plain(send, 404, "Not found: metrics are off on this gateway "
                                "(GATEWAY_METRICS=false).\n")
        return
    if scope["method"] not in ("GET", "HEAD"):
        await _plain(send, 405, "Method not allowed: use GET for /metrics.\n",
                     [(b"allow", b"GET, HEAD")])
        return
    refused = refusal(scope)
    if refused is not None:
        status, message = refused
        await _plain(send, status, message,
                     [(b"www-authenticate", b'Bearer realm="metrics"')] if status == 401
                     else None)
        return
    accept = dict(scope.get("headers") or []).get(b"accept", b"").decode("latin-1")
    tally.flush()  # this process's own figures, up to now
    values = await scrape_values()
    body, content_type = await sync_to_async(render, thread_sensitive=False)(accept, values)
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body",
                "body": b"" if scope["method"] == "HEAD" else body})


# --- values read at scrape time -----------------------------------------------------------

async def scrape_values() -> dict[str, Any]:
    """What the event loop reads for a scrape: the journals' lengths and a PING."""
    from billing.usage import journal_pending
    from gateway.stored import store

    usage, stored, redis_up = await asyncio.gather(
        journal_pending(), store.journal_pending(), _redis_answers())
    return {"usage": usage, "stored": stored, "redis_up": redis_up}


async def _redis_answers() -> bool | None:
    from portal.infra.redis import fast_redis

    if not settings.REDIS_URL:
        return None
    client = fast_redis()
    assert client is not None
    try:
        async with asyncio.timeout(2.0):
            return bool(await client.execute("PING"))
    except Exception:
        return False


class Scraped(Collector):
    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self.families = families

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return self.families


def _gauge(name: str, doc: str, value: float | None = None,
           labels: Iterable[str] = (), rows: Iterable[tuple[list[str], float]] = ()
           ) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, value=value, labels=list(labels) or None)
    for label_values, row_value in rows:
        family.add_metric(label_values, row_value)
    return family


def render(accept: str, values: dict[str, Any]) -> tuple[bytes, str]:
    """The exposition (sync: a worker thread): the upstreams' rows, the Celery queues,
    then every process's values."""
    families = []
    if values["usage"] is not None:
        families.append(_gauge(m.USAGE_SPOOLED, "Usage rows in the Redis journal, not yet in "
                               "the database.", values["usage"]))
    if values["stored"] is not None:
        families.append(_gauge(m.STORE_SPOOLED, "Stored responses in the Redis journal, not "
                               "yet in the database.", values["stored"]))
    if values["redis_up"] is not None:
        families.append(_gauge(m.REDIS_UP, "1 when Redis answered this scrape's PING.",
                               1.0 if values["redis_up"] else 0.0))
    if settings.REDIS_URL:
        families.append(_gauge(m.REDIS_FAILURE_MODE, "What requests get while Redis is "
                               "unreachable (GATEWAY_REDIS_FAILURE): closed refuses, open "
                               "serves with per-process limits.", labels=["mode"],
                               rows=[([settings.GATEWAY_REDIS_FAILURE], 1.0)]))
    families.extend(_upstream_families())
    queues = _queue_lengths()
    if queues is not None:
        families.append(_gauge(m.CELERY_QUEUE, "Tasks waiting in the Celery queue on the "
                               "broker.", labels=["queue"],
                               rows=[([q], float(n)) for q, n in queues.items()]))
    try:
        return m.exposition(accept, Scraped(families))
    except FileNotFoundError:  # a process removed its empty files while this one read them
        return m.exposition(accept, Scraped(families))


def _upstream_families() -> list[GaugeMetricFamily]:
    from django.db import close_old_connections

    from gateway.models import Upstream
    from keys.models import Status

    close_old_connections()
    try:
        rows = list(Upstream.objects.filter(status=Status.ACTIVE).values_list(
            "name", "health", "auto_disabled", "health_failures"))
    except Exception:
        log.exception("metrics: could not read the upstreams")
        return []
    up = [([name], 0.0 if auto_disabled or health == "unhealthy" else 1.0)
          for name, health, auto_disabled, _ in rows]
    failures = [([name], float(n)) for name, _, _, n in rows]
    return [
        _gauge(m.UPSTREAM_UP, "Enabled upstreams: 1 when in routing and not failing its "
               "health probe, 0 when its last probe failed or the probe took it out.",
               labels=["upstream"], rows=up),
        _gauge(m.UPSTREAM_PROBE_FAILURES, "Health probes failed in a row, per enabled "
               "upstream.", labels=["upstream"], rows=failures),
    ]


def _queue_lengths() -> dict[str, int] | None:
    """Each METRICS_CELERY_QUEUES queue's length on the broker; None when tasks run in the
    serving process (CELERY_TASK_ALWAYS_EAGER, the embedded default) or the broker does not
    answer."""
    broker = settings.CELERY_BROKER_URL or ""
    if settings.CELERY_TASK_ALWAYS_EAGER or broker.startswith("memory://"):
        return None
    from kombu.exceptions import ChannelError

    from portal.celery import app

    lengths: dict[str, int] = {}
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            channel = conn.default_channel
            for queue in settings.METRICS_CELERY_QUEUES:
                try:
                    lengths[queue] = int(channel.queue_declare(queue, passive=True)[1])
                except ChannelError:  # no such queue yet: nothing waiting
                    lengths[queue] = 0
    except Exception as exc:
        log.warning("metrics: could not read the Celery queues: %r", exc)
        return None
    return lengths
