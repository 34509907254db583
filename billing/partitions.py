"""Monthly partitions of the usage log (PostgreSQL only; sync).

On PostgreSQL ``billing_usagelog`` is a partitioned table (declarative, ``PARTITION BY RANGE
(created_at)``, migration 0009): one partition per UTC calendar month, named
``billing_usagelog_pYYYY_MM``, plus a default partition ``billing_usagelog_default`` that
takes any row whose month has no partition yet, so no write ever fails for want of one.

- ``ensure_partitions`` (the Celery task ``billing.create_usage_partitions``, daily, and
  ``manage.py usagepartitions --create``) creates the partitions of the current month and
  the BILLING_USAGE_PARTITION_MONTHS_AHEAD months after it, and moves the rows the default
  partition holds into partitions of their own months ("splits" it), so the default stays
  empty in normal operation. Idempotent.
- ``drop_partition`` removes a whole month at once (retention, ``billing.rollups``): a
  catalogue change, not a DELETE of millions of rows.

Elsewhere (SQLite, or a PostgreSQL table that is not partitioned) every function here does
nothing, and ``partitions()`` is empty.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

log = logging.getLogger(__name__)

TABLE = "billing_usagelog"
DEFAULT = f"{TABLE}_default"
_NAME = re.compile(rf"^{TABLE}_p(\d{{4}})_(\d{{2}})$")
_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")
# Advisory lock namespace of partition changes (creation, split, drop): one at a time.
_PARTITION_LOCK = 0x74757270  # "turp"


@dataclass(frozen=True)
class Partition:
    name: str
    start: datetime | None  # None: the default partition
    end: datetime | None
    rows: int  # the planner's estimate (pg_class.reltuples; -1: never analysed)

    @property
    def is_default(self) -> bool:
        return self.start is None


def month_start(moment: datetime | date) -> date:
    """The first day of the UTC month a moment (or a date) falls in."""
    if isinstance(moment, datetime):
        moment = moment.astimezone(UTC).date()
    return moment.replace(day=1)


def add_months(month: date, n: int) -> date:
    index = month.year * 12 + month.month - 1 + n
    return date(index // 12, index % 12 + 1, 1)


def bounds(month: date) -> tuple[datetime, datetime]:
    """[start, end) of a UTC month as aware datetimes."""
    start = datetime(month.year, month.month, 1, tzinfo=UTC)
    nxt = add_months(month, 1)
    return start, datetime(nxt.year, nxt.month, 1, tzinfo=UTC)


def name_of(month: date) -> str:
    return f"{TABLE}_p{month:%Y_%m}"


def is_partitioned() -> bool:
    """True when the usage log is a partitioned table (PostgreSQL after migration 0009)."""
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [TABLE])
        row = cursor.fetchone()
    return row is not None and row[0] == "p"


def _parse_bound(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace(" ", "T"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def partitions() -> list[Partition]:
    """The usage log's partitions, oldest month first, the default partition last."""
    if not is_partitioned():
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), c.reltuples::bigint "
            "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(%s)", [TABLE])
        rows = cursor.fetchall()
    found = []
    for name, bound, tuples in rows:
        match = _BOUND.search(bound or "")
        if match:
            found.append(Partition(name, _parse_bound(match[1]), _parse_bound(match[2]),
                                   int(tuples)))
        else:
            found.append(Partition(name, None, None, int(tuples)))
    far = datetime.max.replace(tzinfo=UTC)
    return sorted(found, key=lambda p: (p.start is None, p.start or far))


def _lock() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, 0)", [_PARTITION_LOCK])


def _create_sql(month: date, table: str | None = None) -> str:
    start, end = bounds(month)
    return (f'CREATE TABLE IF NOT EXISTS "{table or name_of(month)}" PARTITION OF {TABLE} '
            f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')")


def _existing_months() -> set[date]:
    return {month_start(p.start) for p in partitions() if p.start is not None}


def _default_months() -> list[date]:
    """The UTC months of the rows in the default partition (empty in normal operation)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s)", [DEFAULT])
        if cursor.fetchone()[0] is None:
            return []
        cursor.execute(f"SELECT DISTINCT date_trunc('month', created_at AT TIME ZONE 'UTC') "
                       f"FROM {DEFAULT}")
        return sorted(month_start(row[0]) for row in cursor.fetchall())


def _split(month: date) -> int:
    """Give ``month`` a partition of its own, moving its rows out of the default partition
    (the caller holds the partition lock, in a transaction). A new partition can only be
    attached while the default holds none of its rows, so: lock the default (writers of
    rows routed there wait a moment; others do not), move the month's rows into a new
    table, attach it. Returns the rows moved."""
    start, end = bounds(month)
    name = name_of(month)
    with connection.cursor() as cursor:
        cursor.execute(f"LOCK TABLE {DEFAULT} IN ACCESS EXCLUSIVE MODE")
        cursor.execute(f'CREATE TABLE "{name}" (LIKE {TABLE} INCLUDING DEFAULTS '
                       "INCLUDING CONSTRAINTS)")
        # A CHECK matching the bounds spares ATTACH a scan of the new table.
        cursor.execute(f'ALTER TABLE "{name}" ADD CONSTRAINT "{name}_bounds" CHECK '
                       f"(created_at IS NOT NULL AND created_at >= %s AND created_at < %s)",
                       [start, end])
        cursor.execute(f'WITH moved AS (DELETE FROM {DEFAULT} WHERE created_at >= %s AND '
                       f'created_at < %s RETURNING *) INSERT INTO "{name}" SELECT * FROM moved',
                       [start, end])
        moved = cursor.rowcount
        cursor.execute(f'ALTER TABLE {TABLE} ATTACH PARTITION "{name}" FOR VALUES FROM '
                       f"('{start.isoformat()}') TO ('{end.isoformat()}')")
        cursor.execute(f'ALTER TABLE "{name}" DROP CONSTRAINT "{name}_bounds"')
    log.info("usage partition %s created; %d rows moved from the default partition",
             name, moved)
    return moved


def ensure_partitions(now: datetime | None = None, ahead: int | None = None,
                      since: date | None = None) -> list[str]:
    """Create the partitions of the current UTC month and of ``ahead`` months after it
    (default BILLING_USAGE_PARTITION_MONTHS_AHEAD), and of every month from ``since`` (a
    month's first day; for loads of older rows) if given, that do not exist yet; and split
    the default partition: every month it holds rows of gets a partition of its own, with
    those rows. Idempotent; one transaction under an advisory lock (two runs never race).
    Returns the partitions created."""
    if not is_partitioned():
        return []
    months_ahead = int(settings.BILLING_USAGE_PARTITION_MONTHS_AHEAD if ahead is None
                       else ahead)
    current = month_start(now or timezone.now())
    first = min(current, month_start(since)) if since is not None else current
    last = add_months(current, max(0, months_ahead))
    created: list[str] = []
    with transaction.atomic():
        _lock()
        existing = _existing_months()
        for month in _default_months():
            if month not in existing:
                _split(month)
                existing.add(month)
                created.append(name_of(month))
        month = first
        while month <= last:
            if month not in existing:
                with connection.cursor() as cursor:
                    cursor.execute(_create_sql(month))
                existing.add(month)
                created.append(name_of(month))
                log.info("usage partition %s created", name_of(month))
            month = add_months(month, 1)
    return sorted(created)


def droppable(before: datetime) -> list[Partition]:
    """The monthly partitions whose whole range ends at or before ``before``, oldest first,
    and any such month's table left detached by a retention run that stopped between its
    detach and its drop (``drop_partition``)."""
    found = {p.name: p for p in partitions()
             if p.start is not None and p.end is not None and p.end <= before}
    if is_partitioned():
        with connection.cursor() as cursor:
            cursor.execute("SELECT c.relname FROM pg_class c WHERE c.relkind = 'r' AND "
                           "c.relnamespace = current_schema()::regnamespace AND "
                           "c.relname LIKE %s AND NOT EXISTS (SELECT 1 FROM pg_inherits i "
                           "WHERE i.inhrelid = c.oid)", [f"{TABLE}\\_p%"])
            for (name,) in cursor.fetchall():
                match = _NAME.match(name)
                if match and name not in found:
                    start, end = bounds(date(int(match[1]), int(match[2]), 1))
                    if end <= before:
                        found[name] = Partition(name, start, end, 0)
    return sorted(found.values(), key=lambda p: p.start or datetime.min.replace(tzinfo=UTC))


def drop_partition(partition: Partition) -> None:
    """Drop one monthly partition and its rows, at once (retention; the caller has rolled
    its days up). The default partition is never dropped.

    Two steps: detach it (a catalogue change: the usage log is locked for milliseconds),
    then drop the detached table, whose files the file system frees after the commit
    (about a second per GB here) while the usage log is no longer locked."""
    if partition.is_default:
        raise ValueError("the default partition is never dropped")
    with transaction.atomic():
        _lock()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass(%s) AND "
                           "inhparent = to_regclass(%s)", [f'"{partition.name}"', TABLE])
            if cursor.fetchone() is not None:
                cursor.execute(f'ALTER TABLE {TABLE} DETACH PARTITION "{partition.name}"')
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f'DROP TABLE IF EXISTS "{partition.name}"')
    log.info("usage partition %s dropped", partition.name)
