"""Captured bodies to the database, off the response path, and their retention.

``queue()`` hands a capture to this event loop's ``CaptureWriter`` (the machinery of the
usage rows: ``portal.infra.journal.BatchWriter``), which, every GATEWAY_USAGE_FLUSH_INTERVAL,
in a worker thread, seals each capture (cut, decoded, redacted: ``records.seal``) and
inserts the batch. A batch the database refuses goes to the Redis journal
(``capture:journal``), written later by any gateway process or ``manage.py usagewriter``;
without Redis it waits in memory (bounded). With GATEWAY_USAGE_SINK=redis the serving
process does no database work: sealed batches go straight to the journal, for the
usagewriter. A request id already stored is skipped, so writing a batch twice is harmless.

``expire()`` deletes captures older than GATEWAY_CAPTURE_RETENTION_HOURS (the beat task
``gateway.tasks.expire_captures``).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings

from gateway.capture import records
from gateway.capture.records import RawCapture
from portal.infra import rediskeys
from portal.infra.journal import PerLoop, RedisJournal, SinkWriter

log = logging.getLogger(__name__)

JOURNAL = RedisJournal("capture", rediskeys.capture_journal)
# Captures per batch: each holds up to twice GATEWAY_CAPTURE_MAX_BYTES of text.
BATCH = 50


# --- writing ---------------------------------------------------------------------------------

def write_rows(rows: list[dict[str, Any]]) -> int:
    """Insert sealed rows (sync); a request id already stored is skipped. A row whose
    tenant was deleted meanwhile is dropped, a deleted key's link emptied; a row the
    database refuses for its content is logged and dropped, never left to block the rest.
    Returns the rows handed to the database."""
    from django.db import (
        DatabaseError,
        IntegrityError,
        InterfaceError,
        OperationalError,
        close_old_connections,
    )

    close_old_connections()  # worker threads live outside Django's request cycle
    try:
        return _insert(rows)
    except IntegrityError:
        rows = _drop_dangling_links(rows)
        return _insert(rows)
    except (OperationalError, InterfaceError):
        raise  # the database is away: the caller keeps the batch
    except DatabaseError:
        written = 0
        for row in rows:
            try:
                written += _insert([row])
            except (OperationalError, InterfaceError):
                raise
            except DatabaseError:
                log.exception("body capture %s refused by the database; dropped",
                              row.get("request_id"))
        return written


# The table's columns, in the order a sealed row is copied into it.
COLUMNS = ("request_id", "tenant_id", "key_id", "created_at", "method", "path", "status",
           "stream", "request_headers", "request_body", "request_bytes", "request_truncated",
           "response_body", "response_bytes", "response_truncated")


def _insert(rows: list[dict[str, Any]]) -> int:
    """One batch in one transaction. On PostgreSQL: COPY into a temporary table, then one
    INSERT … ON CONFLICT DO NOTHING, as the usage rows are written (the ORM's bulk_create
    took seven times the CPU per row, in a thread that shares the serving process's GIL)."""
    from django.db import connection, transaction

    from gateway.models import CapturedExchange

    if connection.vendor != "postgresql":
        with transaction.atomic():
            CapturedExchange.objects.bulk_create(
                [CapturedExchange(**records.model_values(row)) for row in rows],
                ignore_conflicts=True)
        return len(rows)
    table = CapturedExchange._meta.db_table
    columns = ", ".join(COLUMNS)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS capture_incoming ON COMMIT DELETE "
                       f"ROWS AS SELECT {columns} FROM {table} WITH NO DATA")
        with cursor.cursor.copy(f"COPY capture_incoming ({columns}) FROM STDIN") as copy:
            for row in rows:
                values = records.model_values(row)
                values["request_headers"] = orjson.dumps(row["request_headers"]).decode()
                copy.write_row([values[name] for name in COLUMNS])
        cursor.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM "
                       "capture_incoming ON CONFLICT (request_id) DO NOTHING")
    return len(rows)


def _drop_dangling_links(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from keys.models import ApiKey, Tenant

    tenants = set(Tenant.objects.filter(pk__in={r["tenant_id"] for r in rows})
                  .values_list("pk", flat=True))
    keys = set(ApiKey.objects.filter(pk__in={r["key_id"] for r in rows} - {None})
               .values_list("pk", flat=True))
    return [{**row, "key_id": row["key_id"] if row["key_id"] in keys else None}
            for row in rows if row["tenant_id"] in tenants]


def write_raw(batch: list[RawCapture]) -> int:
    return write_rows([records.seal(raw) for raw in batch])


def spool(batch: list[RawCapture]) -> bool:
    """Keep captures the database could not take in the Redis journal (sync). False
    without Redis, or when it fails too."""
    return JOURNAL.spool(lambda: _sealed_documents(batch), len(batch), "body captures", log)


def drain_journal(max_batches: int = 100) -> int:
    """Write journaled captures to the database (sync: gateway processes, the
    usagewriter). A batch the database cannot take now goes back to the front. Returns
    rows written."""
    return JOURNAL.drain_with_legacy(
        lambda items: write_rows([records.decode(i) for i in items]), BATCH, "captures", log,
        max_batches)


def _sealed_documents(batch: list[RawCapture]) -> list[bytes]:
    return [records.encode(records.seal(raw)) for raw in batch]


async def _push(batch: list[RawCapture]) -> bool:
    """GATEWAY_USAGE_SINK=redis: sealed (in a worker thread) and handed to the journal for
    ``manage.py usagewriter``."""
    from portal.infra.redis import fast_redis

    client = fast_redis()
    if client is None:
        return False
    docs = await sync_to_async(_sealed_documents, thread_sensitive=False)(batch)
    try:
        await client.execute("RPUSH", rediskeys.capture_journal(), *docs)
    except Exception:
        log.exception("could not hand %d body captures to Redis; writing them here",
                      len(batch))
        return False
    return True


class CaptureWriter(SinkWriter[RawCapture]):
    """This event loop's capture queue and the task that writes it."""

    name = "capture"
    # Each capture holds up to twice GATEWAY_CAPTURE_MAX_BYTES: while the database and
    # Redis are both away, the oldest are dropped past this many (debugging data only).
    max_queue = 500

    def batch_size(self) -> int:
        return BATCH

    def write(self, batch: list[RawCapture]) -> int:
        return write_raw(batch)

    def spool(self, batch: list[RawCapture]) -> bool:
        return spool(batch)

    async def hand_off(self, batch: list[RawCapture]) -> bool:
        return settings.GATEWAY_USAGE_SINK == "redis" and await _push(batch)

    def drain(self) -> int:
        return drain_journal()


_writers: PerLoop[CaptureWriter] = PerLoop(CaptureWriter)


def queue(raw: RawCapture) -> None:
    """Hand a capture to this event loop's writer; returns at once."""
    _writers.get().add(raw)


def pending() -> int:
    """Captures queued in this process's memory, or being written now."""
    return _writers.pending()


async def journal_pending() -> int | None:
    """Captures waiting in the Redis journal (None without Redis)."""
    return await JOURNAL.pending()


async def close() -> None:
    await _writers.close()


# --- retention -------------------------------------------------------------------------------

def expire(now: float | None = None, batch: int = 1000) -> int:
    """Delete the captures older than GATEWAY_CAPTURE_RETENTION_HOURS, in batches (sync;
    the Celery task ``gateway.tasks.expire_captures``). Returns how many."""
    from django.db import transaction

    from gateway.models import CapturedExchange

    cutoff = datetime.fromtimestamp(time.time() if now is None else now, UTC) - timedelta(
        hours=int(settings.GATEWAY_CAPTURE_RETENTION_HOURS))
    deleted = 0
    while True:
        ids = list(CapturedExchange.objects.filter(created_at__lt=cutoff)
                   .values_list("pk", flat=True)[:batch])
        if not ids:
            return deleted
        with transaction.atomic():
            deleted += CapturedExchange.objects.filter(pk__in=ids).delete()[0]
