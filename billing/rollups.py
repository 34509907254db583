"""Daily usage rollups, raw-log expiry and the reset of daily counters (sync; run by the
Celery tasks in billing/tasks.py, which only parse their arguments and call these).

Days are local calendar days in settings.TIME_ZONE, like the RPD counters. Every function
here is idempotent: running it twice in a row changes nothing the second time.
"""

from __future__ import annotations

import logging
import re
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

from billing.models import UsageLog, UsageRollup
from keys.limits import local_day_and_seconds_left
from portal.redis import rkey, sync_redis

log = logging.getLogger(__name__)

SUMMED = ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens", "cost")
COUNTED = ("requests", "errors")
# Namespace of the PostgreSQL advisory lock that serialises rollups of one day.
_ROLLUP_LOCK = 0x7475726E  # "turn"


def _tz() -> ZoneInfo:
    return ZoneInfo(settings.TIME_ZONE)


def _now(now: datetime | None) -> datetime:
    return now if now is not None else timezone.now()


def local_date(moment: datetime) -> date:
    """The local calendar day (settings.TIME_ZONE) an aware datetime falls on."""
    return moment.astimezone(_tz()).date()


def local_today(now: datetime | None = None) -> date:
    return local_date(_now(now))


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """[start, end) of a local day as aware datetimes (23 or 25 hours long on DST days)."""
    tz = _tz()
    return (datetime.combine(day, time.min, tzinfo=tz),
            datetime.combine(day + timedelta(days=1), time.min, tzinfo=tz))


def retention_start(now: datetime | None = None) -> date | None:
    """The oldest local day whose raw usage rows are kept; None when they are kept forever
    (BILLING_USAGE_RETENTION_DAYS <= 0). Whole days expire together, so a day is either
    complete or gone (and its rollup was made from the complete day)."""
    days = int(settings.BILLING_USAGE_RETENTION_DAYS)
    if days <= 0:
        return None
    return local_today(now) - timedelta(days=days)


# --- rollups ----------------------------------------------------------------------------

RollupKey = tuple[int | None, int | None, str]


def _aggregate(day: date) -> dict[RollupKey, dict[str, int | Decimal]]:
    start, end = day_bounds(day)
    rows = (
        UsageLog.objects.filter(created_at__gte=start, created_at__lt=end)
        .order_by()
        .values("tenant_id", "key_id", "model")
        .annotate(requests=Count("id"), errors=Count("id", filter=Q(status_code__gte=400)),
                  **{name: Sum(name) for name in SUMMED})
    )
    return {
        (r["tenant_id"], r["key_id"], r["model"]): {
            name: r[name] if r[name] is not None else 0 for name in (*COUNTED, *SUMMED)
        }
        for r in rows
    }


def _lock_day(day: date) -> None:
    """Serialise rollups of one day across processes (two overlapping runs would both
    insert the day's rows and the second would break the unique constraint). SQLite needs
    nothing: its write transactions are already serial."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                           [_ROLLUP_LOCK, day.toordinal()])


def rollup_day(day: date, now: datetime | None = None) -> int:
    """Make the UsageRollup rows of one local day equal to the aggregate of its UsageLog
    rows, per (tenant, key, model): requests, errors (status >= 400), token and cost sums.
    Returns the number of rollup rows the day has.

    One transaction. Rows that are already right are left alone, so a second run (or the
    10-minute task on a quiet day) writes nothing. A day whose raw rows have expired (it is
    before ``retention_start``) is never made smaller: if its raw rows count fewer requests
    than its rollups (all or part of them deleted), the rollups stay as they are.
    """
    with transaction.atomic():
        _lock_day(day)
        wanted = _aggregate(day)
        existing = {(r.tenant_id, r.key_id, r.model): r
                    for r in UsageRollup.objects.filter(date=day)}
        kept_from = retention_start(now)
        if kept_from is not None and day < kept_from:
            had = sum(r.requests for r in existing.values())
            if sum(int(v["requests"]) for v in wanted.values()) < had:
                log.info("rollup of %s kept: its raw usage rows have expired", day)
                return len(existing)

        stale = [r.pk for k, r in existing.items() if k not in wanted]
        changed: list[UsageRollup] = []
        added: list[UsageRollup] = []
        for k, values in wanted.items():
            row = existing.get(k)
            if row is None:
                added.append(UsageRollup(date=day, tenant_id=k[0], key_id=k[1], model=k[2],
                                         **values))
            elif any(getattr(row, name) != value for name, value in values.items()):
                for name, value in values.items():
                    setattr(row, name, value)
                changed.append(row)
        if stale:
            UsageRollup.objects.filter(pk__in=stale).delete()
        if changed:
            UsageRollup.objects.bulk_update(changed, [*COUNTED, *SUMMED])
        if added:
            UsageRollup.objects.bulk_create(added)
        return len(wanted)


# --- expiry of raw rows -------------------------------------------------------------------

def expire_usage(now: datetime | None = None) -> int:
    """Delete the UsageLog rows of local days older than BILLING_USAGE_RETENTION_DAYS,
    oldest day first, each day rolled up just before its rows go (rollups are kept for
    good). Deletes in batches of BILLING_USAGE_EXPIRE_BATCH rows, one short transaction
    each, so a huge table is never locked for long. Returns the rows deleted."""
    kept_from = retention_start(now)
    if kept_from is None:
        return 0
    cutoff = day_bounds(kept_from)[0]
    batch = max(1, int(settings.BILLING_USAGE_EXPIRE_BATCH))
    old = UsageLog.objects.filter(created_at__lt=cutoff).order_by("created_at")
    deleted = 0
    oldest = old.values_list("created_at", flat=True).first()
    while oldest is not None:
        day = local_date(oldest)
        rollup_day(day, now=now)
        start, end = day_bounds(day)
        rows = UsageLog.objects.filter(created_at__gte=start, created_at__lt=end).order_by()
        while True:
            ids = list(rows.values_list("pk", flat=True)[:batch])
            if not ids:
                break
            deleted += UsageLog.objects.filter(pk__in=ids).delete()[0]
        log.info("usage rows of %s expired (rollups kept)", day)
        oldest = old.filter(created_at__gte=end).values_list("created_at", flat=True).first()
    return deleted


# --- daily counters -------------------------------------------------------------------------

_GLOB_SPECIAL = re.compile(r"([\\*?\[\]])")
_DAY = re.compile(rb":(\d{8})$")


def reset_daily_counters(now: datetime | None = None) -> int:
    """Delete the daily counters of earlier local days: the RPD counters
    ``rkey("rpd", key_id, "YYYYMMDD")`` in Redis. Today's counters are untouched (a new
    day's requests already count under the new day's key: that is the reset at midnight);
    Redis would also expire the old ones an hour after midnight on its own. Returns the
    number of keys deleted.

    Without Redis (REDIS_URL unset) there is nothing to do here: the counters live in the
    gateway process's MemoryLimiter, which is not this process, and which drops earlier
    days itself on its next RPD admission."""
    client = sync_redis()
    if client is None:
        return 0
    moment = _now(now)
    today = local_day_and_seconds_left(moment.timestamp())[0].encode()
    pattern = _GLOB_SPECIAL.sub(r"\\\1", rkey("rpd", "")) + "*"
    stale = []
    for name in client.scan_iter(match=pattern, count=1000):
        raw = name if isinstance(name, bytes) else name.encode()
        match = _DAY.search(raw)
        if match and match.group(1) < today:
            stale.append(raw)
    removed = 0
    for i in range(0, len(stale), 500):
        removed += int(client.delete(*stale[i:i + 500]))
    if removed:
        log.info("deleted %d RPD counters of earlier days", removed)
    return removed
