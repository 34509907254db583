"""record_usage(): the only writer of UsageLog.

The gateway calls ``record_usage(event)`` when a request ends; it appends to an in-memory
queue and returns at once. A background task on the same event loop writes the queue in
batches (one INSERT per batch, in a worker thread), so a slow database never delays a
response. At shutdown (daphne's reactor stopping) the queue is flushed before exit.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from asgiref.sync import sync_to_async
from django.conf import settings

log = logging.getLogger(__name__)


@dataclass(slots=True)
class UsageEvent:
    created_at: datetime
    request_id: str
    endpoint: str
    status_code: int
    key_id: int | None = None
    key_prefix: str = ""
    tenant_id: int | None = None
    model: str = ""
    upstream_id: int | None = None
    credential_id: int | None = None
    error_code: str = ""
    stream: bool = False
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost: Decimal = field(default_factory=Decimal)
    latency_ms: int = 0
    ttfb_ms: int | None = None
    client_ip: str | None = None
    user_agent: str = ""
    attempts: list[dict[str, object]] = field(default_factory=list)
    estimated: bool = False


def _drop_dangling_links(events: list[UsageEvent]) -> None:
    """Null links to rows deleted while the request ran (a key or upstream removed by an
    admin mid-stream): one bad FK must not sink the whole batch's INSERT."""
    from gateway.models import Credential, Upstream
    from keys.models import ApiKey, Tenant

    for attr, model in (("key_id", ApiKey), ("tenant_id", Tenant),
                        ("upstream_id", Upstream), ("credential_id", Credential)):
        ids = {getattr(e, attr) for e in events} - {None}
        if not ids:
            continue
        existing = set(model.objects.filter(pk__in=ids).values_list("pk", flat=True))
        if len(existing) == len(ids):
            continue
        for e in events:
            if getattr(e, attr) is not None and getattr(e, attr) not in existing:
                setattr(e, attr, None)


def write_events(events: list[UsageEvent]) -> None:
    """Insert a batch and charge it (sync), in one transaction."""
    from django.db import IntegrityError, close_old_connections

    # Worker threads live outside Django's request cycle, so nothing else retires a
    # connection that broke (a database restart) or outlived CONN_MAX_AGE.
    close_old_connections()
    try:
        _insert(events)
    except IntegrityError:
        # A key, tenant, upstream or credential was deleted while its request ran: keep
        # the rows, without the links. (Checked only now: it costs a query per model.)
        _drop_dangling_links(events)
        _insert(events)


COPY_COLUMNS = (
    "created_at", "request_id", "endpoint", "status_code", "key_id", "key_prefix", "tenant_id",
    "model", "upstream_id", "credential_id", "error_code", "stream", "input_tokens",
    "cached_tokens", "output_tokens", "reasoning_tokens", "cost", "latency_ms", "ttfb_ms",
    "client_ip", "user_agent", "attempts", "estimated",
)


def _insert(events: list[UsageEvent]) -> None:
    from django.db import connection, transaction

    if connection.vendor == "postgresql":
        # COPY: the rows go to PostgreSQL with almost no Python per row (the ORM's
        # bulk_create held the GIL for milliseconds per batch, which a gateway process
        # shows as tail latency).
        import orjson

        with transaction.atomic(), connection.cursor() as cursor:
            sql = f"COPY billing_usagelog ({', '.join(COPY_COLUMNS)}) FROM STDIN"
            with cursor.cursor.copy(sql) as copy:
                for e in events:
                    copy.write_row((
                        e.created_at, e.request_id, e.endpoint, e.status_code, e.key_id,
                        e.key_prefix, e.tenant_id, e.model[:200], e.upstream_id,
                        e.credential_id, e.error_code[:64], e.stream, e.input_tokens,
                        e.cached_tokens, e.output_tokens, e.reasoning_tokens, e.cost,
                        e.latency_ms, e.ttfb_ms, e.client_ip, e.user_agent[:300],
                        orjson.dumps(e.attempts).decode(), e.estimated))
            _charge(events)
        return
    _insert_orm(events)


def _insert_orm(events: list[UsageEvent]) -> None:
    from django.db import transaction

    from billing.models import UsageLog
    rows = [
        UsageLog(
            created_at=e.created_at, request_id=e.request_id, endpoint=e.endpoint,
            status_code=e.status_code, key_id=e.key_id, key_prefix=e.key_prefix,
            tenant_id=e.tenant_id, model=e.model[:200], upstream_id=e.upstream_id,
            credential_id=e.credential_id, error_code=e.error_code[:64], stream=e.stream,
            input_tokens=e.input_tokens, cached_tokens=e.cached_tokens,
            output_tokens=e.output_tokens, reasoning_tokens=e.reasoning_tokens, cost=e.cost,
            latency_ms=e.latency_ms, ttfb_ms=e.ttfb_ms, client_ip=e.client_ip,
            user_agent=e.user_agent[:300], attempts=e.attempts, estimated=e.estimated,
        )
        for e in events
    ]
    with transaction.atomic():
        UsageLog.objects.bulk_create(rows)
        _charge(events)


def _charge(events: list[UsageEvent]) -> None:
    """Take the batch's costs off tenant balances (one ledger entry per tenant) and onto key
    quotas, in the transaction that logs them. The limiter settled the same amounts when
    each request ended, so its copy of the balance is already right."""
    from django.db.models import F

    from billing.services import ledger_post
    from keys.models import ApiKey, Tenant

    by_tenant: dict[int, list[UsageEvent]] = {}
    by_key: dict[int, Decimal] = {}
    for e in events:
        if e.cost:
            if e.tenant_id is not None:
                by_tenant.setdefault(e.tenant_id, []).append(e)
            if e.key_id is not None:
                by_key[e.key_id] = by_key.get(e.key_id, Decimal(0)) + e.cost
    tenants = Tenant.objects.in_bulk(list(by_tenant))
    for tenant_id, charged in sorted(by_tenant.items()):  # sorted: a fixed lock order
        tenant = tenants.get(tenant_id)
        if tenant is None:
            continue
        total = sum((e.cost for e in charged), Decimal(0))
        ledger_post(tenant=tenant, kind="charge", amount=-total, limiter_knows=True,
                    reference=charged[0].request_id,
                    note=f"{len(charged)} request(s) from {charged[0].request_id}")
    for key_id, amount in sorted(by_key.items()):
        ApiKey.objects.filter(pk=key_id).update(quota_used=F("quota_used") + amount)


SPOOL_BATCH = 500


def _to_json(e: UsageEvent) -> dict[str, object]:
    return {**{name: getattr(e, name) for name in e.__dataclass_fields__},
            "created_at": e.created_at.isoformat(), "cost": str(e.cost)}


def _from_json(data: dict[str, object]) -> UsageEvent:
    data = dict(data)
    data["created_at"] = datetime.fromisoformat(str(data["created_at"]))
    data["cost"] = Decimal(str(data["cost"]))
    return UsageEvent(**data)  # type: ignore[arg-type]


def spool(events: list[UsageEvent]) -> bool:
    """Keep a batch the database refused in Redis until it can be written (sync). False
    when there is no Redis or it failed too."""
    import orjson

    from portal.redis import rkey, sync_redis

    client = sync_redis()
    if client is None:
        return False
    try:
        client.rpush(rkey("usage", "spool"), orjson.dumps([_to_json(e) for e in events]))
    except Exception:
        log.exception("could not spool %d usage rows to Redis either", len(events))
        return False
    return True


def drain_spool(max_batches: int = 100) -> int:
    """Write spooled batches to the database (sync; from the writer and a Celery task).
    A batch taken from Redis goes back to the front if the write fails. Returns rows
    written."""
    import orjson

    from portal.redis import rkey, sync_redis

    client = sync_redis()
    if client is None:
        return 0
    key = rkey("usage", "spool")
    written = 0
    for _ in range(max_batches):
        raw = client.lpop(key)
        if raw is None:
            break
        events = [_from_json(d) for d in orjson.loads(raw)]
        try:
            write_events(events)
        except Exception:
            client.lpush(key, raw)
            log.warning("usage spool: database still unavailable; %d rows wait", len(events))
            break
        written += len(events)
    if written:
        log.info("usage spool: wrote %d rows kept while the database was unavailable", written)
    return written


async def _push(events: list[UsageEvent]) -> bool:
    """GATEWAY_USAGE_SINK=redis: hand the batch to Redis for ``manage.py usagewriter``, with
    no database work (and no GIL-holding worker thread) in the serving process."""
    import orjson

    from portal.redis import fast_redis, rkey

    client = fast_redis()
    if client is None:
        return False
    try:
        await client.execute("RPUSH", rkey("usage", "spool"),
                             orjson.dumps([_to_json(e) for e in events]))
    except Exception:
        log.exception("could not hand %d usage rows to Redis; writing them here", len(events))
        return False
    return True


class UsageWriter:
    """Per-event-loop queue plus the task that drains it. A batch the database refuses is
    spooled to Redis (or, without Redis, kept in memory) and written when it is back."""

    def __init__(self) -> None:
        self._queue: list[UsageEvent] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed: asyncio.Future[None] | None = None
        self._writing = 0
        self._ticks = 0

    @property
    def pending(self) -> int:
        """Rows queued or being written right now."""
        return len(self._queue) + self._writing

    def add(self, event: UsageEvent) -> None:
        self._queue.append(event)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
            _flush_at_reactor_shutdown(self)
        if len(self._queue) >= settings.GATEWAY_USAGE_BATCH_SIZE:
            self._wake.set()

    async def _run(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), settings.GATEWAY_USAGE_FLUSH_INTERVAL)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()
            self._ticks += 1
            if self._ticks % 4 == 0 and settings.REDIS_URL and \
                    settings.GATEWAY_USAGE_SINK != "redis":
                try:
                    await sync_to_async(drain_spool, thread_sensitive=False)()
                except Exception:
                    log.exception("draining the usage spool failed")

    async def flush(self) -> None:
        while self._queue:
            batch = self._queue[: settings.GATEWAY_USAGE_BATCH_SIZE]
            del self._queue[: len(batch)]
            self._writing = len(batch)
            if settings.GATEWAY_USAGE_SINK == "redis" and await _push(batch):
                self._writing = 0
                continue
            try:
                await sync_to_async(write_events, thread_sensitive=False)(batch)
            except Exception:
                log.exception("usage write failed for %d rows", len(batch))
                if await sync_to_async(spool, thread_sensitive=False)(batch):
                    continue
                # No Redis: keep the rows and retry on the next tick (bounded).
                self._queue[:0] = batch
                if len(self._queue) > 100_000:
                    dropped = len(self._queue) - 100_000
                    del self._queue[:dropped]
                    log.error("usage queue over 100000 rows: dropped the %d oldest", dropped)
                return
            finally:
                self._writing = 0

    async def close(self) -> None:
        """Flush and stop. Every caller awaits the same flush: the reactor's shutdown
        triggers run at once, and the upstream sessions are closed only after it."""
        if self._closed is None:
            self._closed = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closed)

    async def _close(self) -> None:
        self._closing = True
        self._wake.set()
        await self.flush()


_writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, UsageWriter] = (
    weakref.WeakKeyDictionary()
)


def _writer() -> UsageWriter:
    loop = asyncio.get_running_loop()
    writer = _writers.get(loop)
    if writer is None:
        writer = _writers[loop] = UsageWriter()
    return writer


def record_usage(event: UsageEvent) -> None:
    """Queue one usage row; never blocks, never raises into the request."""
    _writer().add(event)


def pending_usage() -> int:
    return _writer().pending


async def close_usage() -> None:
    """Flush this event loop's usage queue and stop its writer, if it has one (shutdown)."""
    writer = _writers.get(asyncio.get_running_loop())
    if writer is not None:
        await writer.close()


def _flush_at_reactor_shutdown(writer: UsageWriter) -> None:
    """Under daphne (Twisted on asyncio) flush the queue before the reactor stops."""
    try:
        from twisted.internet import reactor
        from twisted.internet.defer import Deferred
    except ImportError:
        return
    if not getattr(reactor, "running", False):
        return
    reactor.addSystemEventTrigger(  # type: ignore[attr-defined]
        "before", "shutdown", lambda: Deferred.fromFuture(asyncio.ensure_future(writer.close()))
    )
