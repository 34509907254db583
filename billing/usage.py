"""record_usage(): the only writer of UsageLog. The row itself (its fields, its journal
format, its columns) is defined once, in ``billing.usagerow``.

With Redis, an admitted request's row goes to the Redis journal with its settlement
(``keys/lua/settle.lua``), before the answer ends, so it survives the serving process. Other
rows (requests refused before the limiter, or served while Redis was away) go through
``record_usage(event)``: an in-memory queue that returns at once. A background task on the
event loop writes the queue, and the journal, in batches (COPY plus one INSERT per batch,
in a worker thread), so a slow database never delays a response. At shutdown (daphne's
reactor stopping) the queue is flushed before exit.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.dispatch import Signal

from billing import usagerow
from billing.usagerow import UsageEvent
from portal.infra import rediskeys
from portal.infra.journal import PerLoop, RedisJournal, SinkWriter

log = logging.getLogger(__name__)

# Sent with ``rows`` (the UsageEvents just inserted) once their transaction has committed,
# from the writer's thread, never on a /v1 response path. Billing sits below the portal,
# so the portal subscribes here rather than billing calling it.
usage_written = Signal()


def _drop_dangling_links(events: list[UsageEvent]) -> None:
    """Null links to rows deleted while the request ran (a key or upstream removed by an
    admin mid-stream): one bad FK must not sink the whole batch's INSERT."""
    from django.apps import apps

    for attr, label in usagerow.LINKS.items():
        model = apps.get_model(label)
        ids = {getattr(e, attr) for e in events} - {None}
        if not ids:
            continue
        existing = set(model._default_manager.filter(pk__in=ids).values_list("pk", flat=True))
        if len(existing) == len(ids):
            continue
        for e in events:
            if getattr(e, attr) is not None and getattr(e, attr) not in existing:
                setattr(e, attr, None)


def write_events(events: list[UsageEvent]) -> list[UsageEvent]:
    """Insert a batch and charge it (sync), in one transaction. Rows whose request id is
    already in the table are skipped and not charged again, so writing a batch twice (a
    writer that died after its commit, before it could say so) changes nothing. Returns the
    rows inserted."""
    from django.db import IntegrityError, close_old_connections

    # Worker threads live outside Django's request cycle, so nothing else retires a
    # connection that broke (a database restart) or outlived CONN_MAX_AGE.
    close_old_connections()
    events = _unique(events)
    try:
        fresh = _insert(events)
    except IntegrityError:
        # A key, tenant, upstream or credential was deleted while its request ran: keep
        # the rows, without the links. (Checked only now: it costs a query per model.)
        _drop_dangling_links(events)
        fresh = _insert(events)
    _publish_after_commit(fresh)
    return fresh


def _publish_after_commit(fresh: list[UsageEvent]) -> None:
    """Tell ``usage_written``'s receivers about the rows just written, once they are
    committed (the portal's live events: portal.live, connected by portal.apps; its
    receiver never raises)."""
    if not fresh:
        return
    from django.db import transaction

    transaction.on_commit(lambda: usage_written.send(UsageEvent, rows=fresh))


def _unique(events: list[UsageEvent]) -> list[UsageEvent]:
    seen: set[str] = set()
    out = []
    for e in events:
        if e.request_id not in seen:
            seen.add(e.request_id)
            out.append(e)
    return out


COPY_COLUMNS = usagerow.FIELDS


def _insert(events: list[UsageEvent]) -> list[UsageEvent]:
    from django.db import connection, transaction

    if connection.vendor == "postgresql":
        # COPY into a temporary table, then one INSERT ... ON CONFLICT DO NOTHING: the rows
        # reach PostgreSQL with almost no Python per row (the ORM's bulk_create held the GIL
        # for milliseconds per batch, which a gateway process shows as tail latency), and a
        # row written before is skipped by its unique (request id, created_at): a row keeps
        # its created_at through the journal and every retry. (The partitioned table's
        # default partition takes rows of a month without a partition: never refused.)
        columns = ", ".join(COPY_COLUMNS)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "CREATE TEMP TABLE IF NOT EXISTS usage_incoming ON COMMIT DELETE ROWS AS "
                f"SELECT {columns} FROM billing_usagelog WITH NO DATA")
            with cursor.cursor.copy(f"COPY usage_incoming ({columns}) FROM STDIN") as copy:
                for e in events:
                    copy.write_row(usagerow.db_values(e))
            cursor.execute(
                f"INSERT INTO billing_usagelog ({columns}) SELECT {columns} FROM "
                "usage_incoming ON CONFLICT (request_id, created_at) DO NOTHING "
                "RETURNING request_id")
            inserted = {row[0] for row in cursor.fetchall()}
            fresh = [e for e in events if e.request_id in inserted]
            _charge(fresh)
        return fresh
    return _insert_orm(events)


def _insert_orm(events: list[UsageEvent]) -> list[UsageEvent]:
    from django.db import transaction

    from billing.models import UsageLog
    with transaction.atomic():
        known = set(UsageLog.objects.filter(request_id__in=[e.request_id for e in events])
                    .values_list("request_id", flat=True))
        fresh = [e for e in events if e.request_id not in known]
        UsageLog.objects.bulk_create([
            UsageLog(**dict(zip(COPY_COLUMNS, usagerow.db_values(e, attempts_as_text=False),
                                strict=True)))
            for e in fresh
        ])
        _charge(fresh)
    return fresh


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


# --- the journal ---------------------------------------------------------------------------
#
# With Redis, usage rows wait in Redis lists, the journal (``{G}usage:spool``), until a
# writer puts them in the database: the settle script appends an admitted request's row in
# the same step that moves its money, before the answer's last bytes, so a row survives the
# crash of the process that served it. Rows the database refused, and rows of requests that
# never reached the limiter, are appended too. Each element is one row, as JSON.
#
# Claims are ``portal.infra.journal.RedisJournal``'s; releasing a batch also takes the rows'
# costs off the limiter's "unposted" hashes, in the same script. A writer that dies holding
# a claim leaves it to be put back by the next writer after GATEWAY_USAGE_CLAIM_SECONDS;
# writing a batch twice is harmless (the insert skips request ids already in the table, and
# removing an unposted entry twice is a no-op).


# The journal is one list per tenant group (``rediskeys.journal(group)``): a settle script
# appends to its tenant's group's list, in the tenant's hash slot (Redis Cluster). Writers
# drain every group, and the journal a release before the groups left (``usage:spool``,
# LEGACY), without a cluster.


def _group_journal(group: int) -> RedisJournal:
    return RedisJournal("usage", lambda: rediskeys.journal(group), group=group)


GROUP_JOURNALS = [_group_journal(group) for group in range(rediskeys.GROUPS)]
# Rows an earlier release left under the names before the hash tags; their unposted costs
# are under the old names too.
LEGACY = RedisJournal("usage", rediskeys.legacy_journal, claims=rediskeys.legacy_claims,
                      claim_prefix=rediskeys.legacy_claim_prefix)


def journals() -> list[RedisJournal]:
    """Every usage journal a writer drains: the groups', and the legacy one (not on a
    cluster: a cluster holds only tagged names, and the legacy keys' slots differ)."""
    if settings.REDIS_CLUSTER:
        return list(GROUP_JOURNALS)
    return [*GROUP_JOURNALS, LEGACY]


def journal_for(tenant_id: int | None) -> RedisJournal:
    """The journal of a row's tenant's group (rows without a tenant: group 0's)."""
    return GROUP_JOURNALS[rediskeys.group_of(tenant_id or 0)]


encode_row = usagerow.encode  # a row as the journal holds it


def _journal_entries(events: list[UsageEvent]) -> list[bytes]:
    return [encode_row(e) for e in events]


def _by_group(events: list[UsageEvent]) -> dict[int, list[UsageEvent]]:
    groups: dict[int, list[UsageEvent]] = {}
    for event in events:
        groups.setdefault(rediskeys.group_of(event.tenant_id or 0), []).append(event)
    return groups


def spool(events: list[UsageEvent]) -> bool:
    """Keep rows the database refused in the Redis journal until they can be written
    (sync). False when there is no Redis or it failed too."""
    ok = True
    for group, rows in _by_group(events).items():
        ok = GROUP_JOURNALS[group].spool(functools.partial(_journal_entries, rows),
                                         len(rows), "usage rows", log) and ok
    return ok


def drain_spool(max_batches: int = 100) -> int:
    """Write journaled rows to the database (sync; from gateway processes, the usagewriter
    and a Celery task), every group's journal in turn. A batch that cannot be written goes
    back to the front of its journal. Returns rows written."""
    from portal.infra.redis import sync_redis

    client = sync_redis()
    if client is None:
        return 0
    _retry_releases(client)
    written = 0
    for journal, stale in _with_work(client, journals()):
        done, stop = _drain_one(client, journal, max_batches, stale)
        written += done
        if stop:
            break
    if written:
        log.debug("usage journal: wrote %d rows", written)
    return written


def _with_work(client: Any,
               candidates: list[RedisJournal]) -> list[tuple[RedisJournal, list[Any]]]:
    """The journals with rows waiting or claims gone stale (and those claims), found with
    one pipelined round trip for all of them: most ticks most groups' journals are empty,
    and asking each one in turn (its stale claims, then a claim) was two round trips per
    journal, 34 every tick."""
    timeout = settings.GATEWAY_USAGE_CLAIM_SECONDS
    pipe = client.pipeline(transaction=False)
    for journal in candidates:
        pipe.llen(journal.key())
        pipe.zrangebyscore(*journal.stale_query(timeout))
    replies = pipe.execute()
    return [(journal, list(stale)) for journal, waiting, stale
            in zip(candidates, replies[0::2], replies[1::2], strict=True) if waiting or stale]


def _drain_one(client: Any, journal: RedisJournal, max_batches: int,
               stale: list[Any] | None = None) -> tuple[int, bool]:
    """(rows written, the database is unavailable). ``stale``: its stale claims, when
    already read (else read here)."""
    from django.db import DatabaseError, InterfaceError, OperationalError

    if stale is None:
        journal.recover(client, settings.GATEWAY_USAGE_CLAIM_SECONDS)
    elif stale:
        journal.put_back(client, stale)
    written = 0
    size = int(settings.GATEWAY_USAGE_BATCH_SIZE)
    for _ in range(max_batches):
        claim_id, items = journal.claim(client, size)
        if not items:
            break
        events = [usagerow.decode(item) for item in items]
        try:
            fresh = write_events(events)
            posted = events
        except (OperationalError, InterfaceError):
            journal.unclaim(client, claim_id)
            log.warning("usage journal: database unavailable; %d rows wait", len(items))
            return written, True
        except DatabaseError:
            # Something in the batch itself is refused: write row by row, set aside what
            # still fails (never block the journal behind one bad row).
            fresh, posted = _write_one_by_one(client, events)
        _release(client, journal, claim_id, posted)
        written += len(fresh)
        if len(items) < size:  # the journal held less than a batch: the next tick's
            break              # (asking again now would mostly find it empty)
    return written, False


_unreleased: list[tuple[RedisJournal, str, list[UsageEvent]]] = []
_unreleased_lock = threading.Lock()


def _retry_releases(client: Any) -> None:
    with _unreleased_lock:
        waiting = list(_unreleased)
        _unreleased.clear()
    for journal, claim_id, posted in waiting:
        _release(client, journal, claim_id, posted)


def _release(client: Any, journal: RedisJournal, claim_id: str,
             posted: list[UsageEvent]) -> None:
    """Drop the claim and the posted rows' unposted entries, in one step. If Redis fails
    now, the release is retried by this process's next drain (and should the process die
    first, the claim is put back after GATEWAY_USAGE_CLAIM_SECONDS and the rows written
    again: a no-op that releases them)."""
    try:
        _release_now(client, journal, claim_id, posted)
    except Exception:
        with _unreleased_lock:
            _unreleased.append((journal, claim_id, posted))
        raise


def _release_now(client: Any, journal: RedisJournal, claim_id: str,
                 posted: list[UsageEvent]) -> None:
    hdel: list[tuple[str, str]] = []
    for e in posted:
        if not e.cost or e.tenant_id is None:
            continue  # unposted costs exist only for a tenant's rows (the settle script's)
        if journal is LEGACY:
            hdel.append((rediskeys.legacy_unposted("tenant", e.tenant_id), e.request_id))
            if e.key_id is not None:
                hdel.append((rediskeys.legacy_unposted("key", e.key_id), e.request_id))
        elif rediskeys.group_of(e.tenant_id) == journal.group:  # one slot: the group's
            hdel.append((rediskeys.unposted("tenant", e.tenant_id), e.request_id))
            if e.key_id is not None:
                hdel.append((rediskeys.unposted("key", e.key_id, tenant=e.tenant_id),
                             e.request_id))
    journal.release(client, claim_id, hdel)


def _write_one_by_one(client: Any, events: list[UsageEvent]
                      ) -> tuple[list[UsageEvent], list[UsageEvent]]:
    """(rows inserted, rows now in the database) writing one at a time; a row the database
    still refuses goes to ``usage:dead`` for an operator, with its error logged."""
    from django.db import DatabaseError

    fresh: list[UsageEvent] = []
    posted: list[UsageEvent] = []
    for event in events:
        try:
            fresh += write_events([event])
            posted.append(event)
        except DatabaseError:
            log.exception("usage journal: row %s refused; kept in usage:dead", event.request_id)
            client.rpush(rediskeys.dead_rows(), encode_row(event))
    return fresh, posted


def journal_length() -> int:
    """Rows waiting in the journals or claimed by a writer (sync; for audits and tools)."""
    from portal.infra.redis import sync_redis

    client = sync_redis()
    if client is None:
        return 0
    return sum(journal.length(client) for journal in journals())


async def journal_pending() -> int | None:
    """Rows waiting in the Redis journals or claimed by a writer, not yet in the database
    (None without Redis, or when it does not answer)."""
    counts = await asyncio.gather(*(journal.pending() for journal in journals()))
    if any(count is None for count in counts):
        return None
    return sum(count or 0 for count in counts)


async def _push(events: list[UsageEvent]) -> bool:
    """GATEWAY_USAGE_SINK=redis: hand rows to the journal for ``manage.py usagewriter``,
    with no database work (and no GIL-holding worker thread) in the serving process."""
    from portal.infra.redis import fast_redis

    client = fast_redis()
    if client is None:
        return False
    try:
        await asyncio.gather(*(client.execute("RPUSH", rediskeys.journal(group),
                                              *_journal_entries(rows))
                               for group, rows in _by_group(events).items()))
    except Exception:
        log.exception("could not hand %d usage rows to Redis; writing them here", len(events))
        return False
    return True


class UsageWriter(SinkWriter[UsageEvent]):
    """The usage queue (``portal.infra.journal.BatchWriter``). A batch the database refuses is
    spooled to the Redis journal (or, without Redis, kept in memory) and written when it is
    back. With Redis and the default sink the same task also writes the journal (rows of
    settled requests, from this process and others); with GATEWAY_USAGE_SINK=redis batches
    are handed to the journal for ``manage.py usagewriter`` instead."""

    name = "usage"

    def batch_size(self) -> int:
        return int(settings.GATEWAY_USAGE_BATCH_SIZE)

    def write(self, batch: list[UsageEvent]) -> list[UsageEvent]:
        return write_events(batch)

    def spool(self, batch: list[UsageEvent]) -> bool:
        return spool(batch)

    async def hand_off(self, batch: list[UsageEvent]) -> bool:
        return settings.GATEWAY_USAGE_SINK == "redis" and await _push(batch)

    def drain(self) -> int:
        return drain_spool()


_writers: PerLoop[UsageWriter] = PerLoop(UsageWriter)


def record_usage(event: UsageEvent) -> None:
    """Queue one usage row; never blocks, never raises into the request."""
    _writers.get().add(event)


def journal_started() -> None:
    """A row went to the Redis journal: make sure this process's writer is running (with the
    default sink it writes the journal)."""
    _writers.get().start()


def pending_usage() -> int:
    return _writers.pending()


async def close_usage() -> None:
    """Flush this event loop's usage queue and stop its writer, if it has one (shutdown)."""
    await _writers.close()
