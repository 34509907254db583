"""Daily and hourly usage rollups, raw-log expiry and the reset of daily counters (sync; run by the
Celery tasks in billing/tasks.py, which only parse their arguments and call these).

Days are local calendar days in settings.TIME_ZONE, like the RPD counters; hours are UTC
hours (``UsageRollupHourly.hour`` is the hour's start). Each period is one GROUP BY over its
raw rows (requests, errors and errors by class, token and cost sums, and the latency/TTFB
histogram buckets as filtered counts), under a PostgreSQL advisory lock for that period,
then an upsert that writes only the rows that changed. Every function here is idempotent:
running it twice in a row changes nothing the second time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Model, Q, Sum
from django.utils import timezone

from billing.models import (
    LATENCY_BOUNDS_MS,
    LATENCY_FIELDS,
    TTFB_FIELDS,
    KeyUsageTotals,
    RollupState,
    UsageLog,
    UsageRollup,
    UsageRollupHourly,
    UsageRollupTenant,
    UsageRollupTenantHourly,
)
from billing.usagerow import TOKEN_FIELDS, UPSTREAM_CODES
from keys.limits import local_day_and_seconds_left
from portal.infra import rediskeys
from portal.infra.redis import sync_redis

log = logging.getLogger(__name__)
_T = TypeVar("_T")
# (hour, rolled up through): how far the partial hour's rollup holds its rows (``partial_hour``).
Extent = tuple[datetime, datetime]

# The errors by class (billing.usagerow.UPSTREAM_CODES says which): the rollups count them,
# the operations overview and the usage log show them.
ERROR_CLASSES = ("client_errors", "server_errors", "upstream_errors")
SUMMED = (*TOKEN_FIELDS, "cost")
COUNTED = ("requests", "errors", *ERROR_CLASSES)
HISTOGRAM = (*LATENCY_FIELDS, *TTFB_FIELDS)
MEASURES = (*COUNTED, *SUMMED, *HISTOGRAM)
# Namespaces of the PostgreSQL advisory locks that serialise rollups of one day / one hour.
_ROLLUP_LOCK = 0x7475726E  # "turn"
_ROLLUP_HOUR_LOCK = 0x74757268  # "turh"
_KEY_TOTALS_LOCK = 0x7475726B  # "turk": the rebuild of KeyUsageTotals
# The dashboard's window of local days (today and the 29 before it), and the name of the
# RollupState row that says which days of it KeyUsageTotals holds.
DASHBOARD_DAYS = 30
KEY_TOTALS = "key_totals"
# The RollupState row naming the hour rolled up only in part (see ``partial_hour``).
PARTIAL_HOUR = "hourly_partial"


def _bucket_filters(column: str) -> list[Q]:
    edges = (0, *LATENCY_BOUNDS_MS)
    filters = [Q(**{f"{column}__gte": lo, f"{column}__lt": hi})
               for lo, hi in zip(edges, edges[1:], strict=False)]
    filters.append(Q(**{f"{column}__gte": LATENCY_BOUNDS_MS[-1]}))
    return filters


def error_class_filters() -> dict[str, Q]:
    """The UsageLog rows of each error class (ERROR_CLASSES), as filters: the one definition
    of the classes, for the rollups and for whatever counts raw rows beside them."""
    upstream = Q(error_code__in=UPSTREAM_CODES)
    return {"client_errors": Q(status_code__gte=400, status_code__lt=500) & ~upstream,
            "server_errors": Q(status_code__gte=500) & ~upstream,
            "upstream_errors": upstream}


def server_or_upstream() -> Q:
    """The rows of a server or an upstream error (what the error-rate alert counts as failed,
    and the usage log's ``upstream_error`` status filter shows)."""
    classes = error_class_filters()
    return classes["server_errors"] | classes["upstream_errors"]


def failed() -> Q:
    """The UsageLog rows that count as errors: the union of the three classes (the rows
    ``billing.usagerow.error_class`` puts in one)."""
    return Q(status_code__gte=400) | Q(error_code__in=UPSTREAM_CODES)


def measure_aggregates() -> dict[str, object]:
    """The aggregates of UsageLog rows that make one rollup row (for ``.annotate`` or
    ``.aggregate`` on a UsageLog queryset): also used by the dashboard and the operations
    overview for the rows newer than the rollups they read."""
    out: dict[str, object] = {"requests": Count("id"), "errors": Count("id", filter=failed())}
    out.update({name: Count("id", filter=q) for name, q in error_class_filters().items()})
    out.update({name: Sum(name) for name in SUMMED})
    for name, q in zip(LATENCY_FIELDS, _bucket_filters("latency_ms"), strict=True):
        out[name] = Count("id", filter=q)
    for name, q in zip(TTFB_FIELDS, _bucket_filters("ttfb_ms"), strict=True):
        out[name] = Count("id", filter=q)
    return out


def median_ms(buckets: list[int]) -> int | None:
    """The median of a latency histogram (counts per bucket of LATENCY_BOUNDS_MS), linearly
    interpolated inside the bucket that holds the middle request; None when it is empty.
    Exact to the bucket: the error is under the bucket's width (25 ms below 50 ms, at most
    half the value above 100 ms). The open last bucket (>= the last bound) answers its
    lower bound."""
    total = sum(buckets)
    if total <= 0:
        return None
    middle = total / 2
    seen = 0
    edges = (0, *LATENCY_BOUNDS_MS)
    for i, count in enumerate(buckets):
        if count and seen + count >= middle:
            if i >= len(LATENCY_BOUNDS_MS):
                return LATENCY_BOUNDS_MS[-1]
            lo, hi = edges[i], edges[i + 1]
            return round(lo + (hi - lo) * (middle - seen) / count)
        seen += count
    return LATENCY_BOUNDS_MS[-1]


def _tz() -> ZoneInfo:
    return ZoneInfo(settings.TIME_ZONE or "UTC")


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
#
# Two levels per period: the per-key rollups (UsageRollup, UsageRollupHourly: a GROUP BY
# over the period's raw rows per tenant, key and model) and the per-tenant ones
# (UsageRollupTenant, UsageRollupTenantHourly: the per-key rows of the period summed per
# tenant and model), written in the same transaction, so a tenant row always equals the
# sum of its per-key rows (also for a day whose raw rows have expired).

KEY_GROUP = ("tenant_id", "key_id", "model")
TENANT_GROUP = ("tenant_id", "model")
RollupKey = tuple[int | str | None, ...]
RollupModel = type[Model]


def _aggregate_qs(start: datetime, end: datetime) -> Any:
    return (
        UsageLog.objects.filter(created_at__gte=start, created_at__lt=end)
        .order_by()
        .values(*KEY_GROUP)
        .annotate(**measure_aggregates())
    )


def _tenant_qs(per_key: RollupModel, period: dict[str, object]) -> Any:
    """The per-key rollup rows of one period summed per tenant and model."""
    return (per_key.objects.filter(**period).order_by()  # type: ignore[attr-defined]
            .values(*TENANT_GROUP).annotate(**{name: Sum(name) for name in MEASURES}))


def _collect(qs: Any, group: tuple[str, ...]) -> dict[RollupKey, dict[str, int | Decimal]]:
    return {
        tuple(r[g] for g in group): {
            name: r[name] if r[name] is not None else 0 for name in MEASURES
        }
        for r in qs
    }


def _lock(namespace: int, ident: int) -> None:
    """Serialise rollups of one period across processes (two overlapping runs would both
    insert the period's rows and the second would break the unique constraint). SQLite
    needs nothing: its write transactions are already serial."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [namespace, ident])


def _lock_day(day: date) -> None:
    _lock(_ROLLUP_LOCK, day.toordinal())


_UPSERT = """
WITH agg AS ({aggregate}),
ins AS (
  INSERT INTO {table} ({period}, {group}, {measures})
  SELECT %s, {group}, {coalesced} FROM agg
  ON CONFLICT ON CONSTRAINT {constraint} DO UPDATE SET {assign}
  WHERE ({current}) IS DISTINCT FROM ({excluded})
  RETURNING 1),
del AS (
  DELETE FROM {table} r WHERE r.{period} = %s AND NOT EXISTS (
    SELECT 1 FROM agg WHERE {match})
  RETURNING 1)
SELECT (SELECT count(*) FROM agg), (SELECT count(*) FROM ins), (SELECT count(*) FROM del)
"""


def _upsert(model: RollupModel, period: str, value: date | datetime, aggregate: Any,
            group: tuple[str, ...]) -> tuple[int, bool]:
    """PostgreSQL: the whole period in one statement (the GROUP BY ``aggregate``, an INSERT
    ... ON CONFLICT DO UPDATE that writes only rows that differ, and a DELETE of the
    period's rows no longer in the aggregate), with no per-row Python. Returns the period's
    rollup rows and whether any was written. (The DELETE compares ids through
    COALESCE(.., 0), not IS NOT DISTINCT FROM, so it is a hash anti-join: ids are
    positive, and the other form made it a nested loop.)"""
    table = model._meta.db_table
    constraint = model._meta.constraints[0].name
    sql, params = aggregate.query.sql_with_params()
    match = " AND ".join(f"agg.{g} = r.{g}" if g == "model"
                         else f"COALESCE(agg.{g}, 0) = COALESCE(r.{g}, 0)" for g in group)
    statement = _UPSERT.format(
        aggregate=sql, table=table, period=period, group=", ".join(group),
        measures=", ".join(MEASURES), constraint=constraint, match=match,
        coalesced=", ".join(f"COALESCE({m}, 0)" for m in MEASURES),
        assign=", ".join(f"{m} = EXCLUDED.{m}" for m in MEASURES),
        current=", ".join(f"{table}.{m}" for m in MEASURES),
        excluded=", ".join(f"EXCLUDED.{m}" for m in MEASURES))
    with connection.cursor() as cursor:
        cursor.execute(statement, [*params, value, value])
        rows, written, deleted = cursor.fetchone()
    return int(rows), bool(written or deleted)


def _sync(model: RollupModel, period: dict[str, object], group: tuple[str, ...],
          wanted: dict[RollupKey, dict[str, int | Decimal]], label: str,
          expired: bool) -> tuple[int, bool]:
    """Make the rollup rows of one period (``period``: its field and value) equal to
    ``wanted`` (keyed by the ``group`` fields): insert the missing, update the changed,
    delete the stale; rows already right are not written. A period whose raw rows have
    expired (``expired``) is never made smaller. Returns its rows and whether any was
    written."""
    manager = model.objects  # type: ignore[attr-defined]
    existing = {tuple(getattr(r, g) for g in group): r for r in manager.filter(**period)}
    if expired:
        had = sum(r.requests for r in existing.values())
        if sum(int(v["requests"]) for v in wanted.values()) < had:
            log.info("rollup of %s kept: its raw usage rows have expired", label)
            return len(existing), False
    stale = [r.pk for k, r in existing.items() if k not in wanted]
    changed: list[Any] = []  # rows of ``model``, whichever of the two it is
    added: list[Any] = []
    for k, values in wanted.items():
        row = existing.get(k)
        if row is None:
            added.append(model(**period, **dict(zip(group, k, strict=True)), **values))
        elif any(getattr(row, name) != value for name, value in values.items()):
            for name, value in values.items():
                setattr(row, name, value)
            changed.append(row)
    if stale:
        manager.filter(pk__in=stale).delete()
    if changed:
        manager.bulk_update(changed, list(MEASURES), batch_size=1000)
    if added:
        manager.bulk_create(added, batch_size=1000)
    return len(wanted), bool(stale or changed or added)


def _roll(per_key: RollupModel, per_tenant: RollupModel, period: str, value: date | datetime,
          start: datetime, end: datetime, label: str, expired: bool) -> tuple[int, bool]:
    """One period, both levels (in the caller's transaction, under its lock): the per-key
    rows from the raw rows, then the per-tenant rows from the per-key rows. Returns the
    per-key rows and whether any per-key row was written."""
    if connection.vendor == "postgresql" and not expired:
        rows, changed = _upsert(per_key, period, value, _aggregate_qs(start, end), KEY_GROUP)
    else:
        rows, changed = _sync(per_key, {period: value}, KEY_GROUP,
                              _collect(_aggregate_qs(start, end), KEY_GROUP), label, expired)
    # Always (not only when the per-key rows changed), so tenant rows that drifted for any
    # reason are put right by the next run; when nothing changed this writes nothing.
    if connection.vendor == "postgresql":
        _upsert(per_tenant, period, value, _tenant_qs(per_key, {period: value}), TENANT_GROUP)
    else:
        _sync(per_tenant, {period: value}, TENANT_GROUP,
              _collect(_tenant_qs(per_key, {period: value}), TENANT_GROUP), label, False)
    return rows, changed


def rollup_day(day: date, now: datetime | None = None) -> int:
    """Make the UsageRollup rows of one local day equal to the aggregate of its UsageLog
    rows, per (tenant, key, model): requests, errors (``failed``) and errors by class,
    token and cost sums, latency and TTFB histograms; and the day's UsageRollupTenant rows
    equal to their sum per (tenant, model). Returns the number of (per-key) rollup rows the
    day has.

    One transaction. Rows that are already right are left alone, so a second run (or the
    10-minute task on a quiet day) writes nothing. A day whose raw rows have expired (it is
    before ``retention_start``) is never made smaller: if its raw rows count fewer requests
    than its rollups (all or part of them deleted), the rollups stay as they are. A change
    to a day inside the range of the per-key totals (``KeyUsageTotals``) drops them, in the
    same transaction: the dashboard then sums the per-key rollups until the 10-minute task
    builds them again.
    """
    kept_from = retention_start(now)
    expired = kept_from is not None and day < kept_from
    with transaction.atomic():
        _lock_day(day)
        rows, changed = _roll(UsageRollup, UsageRollupTenant, "date", day, *day_bounds(day),
                              label=str(day), expired=expired)
        if changed:
            RollupState.objects.filter(name=KEY_TOTALS, since__lte=day_bounds(day)[0],
                                       through__gt=day_bounds(day)[0]).delete()
        return rows


def hour_start(moment: datetime) -> datetime:
    """The start of the UTC hour an aware datetime falls in."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def rollup_cutoff(now: datetime | None = None) -> datetime:
    """The moment up to which an hour not over yet is rolled up: now, less
    BILLING_ROLLUP_SETTLE_SECONDS (how late a row may land after its request started and
    still be in the rollup that covers it)."""
    return _now(now) - timedelta(seconds=max(float(settings.BILLING_ROLLUP_SETTLE_SECONDS), 0))


def partial_hour() -> Extent | None:
    """(hour, through): the UsageRollupHourly rows of ``hour`` (and its per-tenant rows) hold
    exactly its raw rows with ``created_at`` before ``through`` (``hour`` + 1 h once it was
    rolled whole); None before the first rollup of an hour not over."""
    state = RollupState.objects.filter(name=PARTIAL_HOUR).values_list("since", "through").first()
    return (state[0], state[1]) if state else None


def read_settled(read: Callable[[Extent | None], _T],
                 tries: int = 3) -> _T:
    """``read(partial_hour())``, read again if the minute rollup moved the partial hour's
    extent meanwhile (its rows and its extent are rewritten in one transaction: with the
    old extent a row could be counted in the rollup and raw); after ``tries`` moves,
    ``read(None)``, the partial hour raw."""
    for _ in range(tries):
        partial = partial_hour()
        result = read(partial)
        if partial_hour() == partial:
            return result
    return read(None)


def rolled_to(hour: datetime, partial: Extent | None,
              hourly: RollupState | None) -> datetime:
    """How far the hourly rollup rows of ``hour`` hold its raw rows: its end (whole), a
    moment inside it (the rows before it), or ``hour`` itself (none: read it raw).

    The partial hour's extent (``partial_hour``), when it names this hour, is what its rows
    hold now (written with them), even past now (a worker's clock ahead): a raw part after
    it with no end still reads every row once. Otherwise the hourly watermark
    (``RollupState('hourly')``) says whether the minute task rolled the hour whole after it
    ended."""
    end = hour + timedelta(hours=1)
    if partial is not None and partial[0] == hour:
        return min(partial[1], end)
    if hourly is not None and hourly.since <= hour and end <= hourly.through:
        return end
    return hour


def hourly_sources(start: datetime, now: datetime,
                   partial: Extent | None) -> tuple[list[datetime], Q]:
    """Where the rows created from ``start`` on are read (no end: a row stamped after ``now``
    counts): the UTC hours whose hourly rollup rows are read (each whole, or up to the
    partial extent), and the filter of the raw rows read besides them, so that every row
    is in exactly one. A ``start`` inside an hour (a local day in a half-hour time
    zone) reads that hour's part raw. ``partial`` is ``partial_hour()``, read by the caller
    before and again after reading the rows: if it moved meanwhile, the rows are read again
    (it is rewritten with the partial hour's rollup, in one transaction)."""
    hourly = RollupState.objects.filter(name="hourly").first()
    first = hour_start(start)
    if first < start:
        first += timedelta(hours=1)
    rolled: list[datetime] = []
    spans: list[tuple[datetime, datetime | None]] = []  # raw [start, end)
    if start < first:
        spans.append((start, first))
    last = hour_start(now)
    hour = first
    while hour <= last:
        upto = rolled_to(hour, partial, hourly)
        if upto > hour:
            rolled.append(hour)
        hour += timedelta(hours=1)
        if upto < hour:
            spans.append((upto, hour))
    spans.append((hour, None))  # after the last hour: any row stamped later
    merged: list[tuple[datetime, datetime | None]] = []
    for lo, hi in spans:
        if merged and merged[-1][1] == lo:
            merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    raw = Q()
    for lo, hi in merged:
        raw |= Q(created_at__gte=lo) if hi is None else Q(created_at__gte=lo, created_at__lt=hi)
    return rolled, raw


def rollup_hour(hour: datetime, now: datetime | None = None) -> int:
    """Make the UsageRollupHourly rows of one UTC hour (any moment in it) equal to the
    aggregate of its UsageLog rows, and its UsageRollupTenantHourly rows equal to their
    sum per tenant and model, like ``rollup_day``. Returns its (per-key) rollup rows.

    An hour not over by the cutoff (``rollup_cutoff``) is rolled up to the cutoff only, and
    the RollupState row PARTIAL_HOUR says so (``partial_hour``), in the same transaction:
    the dashboard then reads that hour from its rollup and only the rows after the cutoff
    raw. Rolling the hour whole later (it ended) moves that row's ``through`` to its end."""
    start = hour_start(hour)
    end = start + timedelta(hours=1)
    upto = min(end, max(rollup_cutoff(now), start))
    kept_from = retention_start(now)
    expired = kept_from is not None and start < day_bounds(kept_from)[0]
    with transaction.atomic():
        _lock(_ROLLUP_HOUR_LOCK, int(start.timestamp()) // 3600)
        rows = _roll(UsageRollupHourly, UsageRollupTenantHourly, "hour", start, start, upto,
                     label=start.strftime("%Y-%m-%d %H:00 UTC"), expired=expired)[0]
        if upto < end:
            RollupState.objects.bulk_create(
                [RollupState(name=PARTIAL_HOUR, since=start, through=upto)],
                update_conflicts=True, unique_fields=["name"],
                update_fields=["since", "through", "updated_at"])
        else:
            RollupState.objects.filter(name=PARTIAL_HOUR, since=start).update(
                through=end, updated_at=timezone.now())
        return rows


def rollup_hours(start: datetime, end: datetime, now: datetime | None = None) -> int:
    """Roll up every UTC hour from the one holding ``start`` to the one holding ``end``
    (backfills). Returns the rollup rows written in all."""
    hour = hour_start(start)
    total = 0
    while hour <= end:
        total += rollup_hour(hour, now=now)
        hour += timedelta(hours=1)
    return total


# --- the scheduled rollups and their watermarks ------------------------------------------
#
# The tasks roll every period from the last one they finished (RollupState.through) to the
# current one, so a beat that stopped for a while catches up (at most CATCH_UP periods per
# run; the next run goes on). ``through`` advances only over periods rolled after they
# ended; the current period is rolled too (for readers that want it) but stays beyond it.

CATCH_UP_HOURS = 48
CATCH_UP_DAYS = 40


def _state(name: str) -> RollupState | None:
    return RollupState.objects.filter(name=name).first()


def _advance(name: str, since: datetime, through: datetime) -> None:
    state = _state(name)
    if state is None:
        RollupState.objects.create(name=name, since=since, through=through)
    elif through > state.through:
        RollupState.objects.filter(name=name).update(through=through, updated_at=timezone.now())


def rollup_recent_hours(now: datetime | None = None) -> dict[str, int]:
    """The hourly task: roll up every UTC hour from the first one not yet rolled after it
    ended (the start of yesterday, local, on the first run) through the one holding the
    cutoff (``rollup_cutoff``: normally the current hour), that one up to the cutoff only,
    the hour before it always included (rows land up to a few seconds late). The watermark
    moves to the start of the hour holding the cutoff. Returns rollup rows per hour."""
    moment = _now(now)
    current = hour_start(rollup_cutoff(moment))
    state = _state("hourly")
    if state is None:
        first = hour_start(day_bounds(local_date(moment) - timedelta(days=1))[0])
    else:
        first = min(state.through, current - timedelta(hours=1))
    first = max(first, current - timedelta(hours=CATCH_UP_HOURS))
    done: dict[str, int] = {}
    hour = first
    while hour <= current:
        done[hour.isoformat()] = rollup_hour(hour, now=moment)
        hour += timedelta(hours=1)
    gap = state is not None and first > state.through  # more than CATCH_UP_HOURS behind
    _advance("hourly", first if gap or state is None else state.since, current)
    if gap:
        RollupState.objects.filter(name="hourly").update(since=first)
    return done


def rollup_recent_days(now: datetime | None = None) -> dict[str, int]:
    """The daily task: roll up every local day from the first one not yet rolled after it
    ended (CATCH_UP_DAYS back on the first run, so the dashboard's 30 days are covered)
    through today, yesterday always included. Returns rollup rows per day."""
    moment = _now(now)
    today = local_date(moment)
    state = _state("daily")
    if state is None:
        first = today - timedelta(days=CATCH_UP_DAYS)
    else:
        first = min(local_date(state.through), today - timedelta(days=1))
    first = max(first, today - timedelta(days=CATCH_UP_DAYS))
    done: dict[str, int] = {}
    day = first
    while day <= today:
        done[day.isoformat()] = rollup_day(day, now=moment)
        day += timedelta(days=1)
    gap = state is not None and first > local_date(state.through)
    _advance("daily", day_bounds(first)[0] if gap or state is None else state.since,
             day_bounds(today)[0])
    if gap:
        RollupState.objects.filter(name="daily").update(since=day_bounds(first)[0])
    rebuild_key_totals(moment)
    return done


# --- per-key totals of the dashboard's window ------------------------------------------------

def key_totals_range(today: date, daily: RollupState) -> tuple[date, date]:
    """The local days [first, end) whose per-key usage the dashboard of ``today`` reads
    from the daily rollups: its window (DASHBOARD_DAYS up to today) cut to the days the
    daily task rolled up after they ended (``daily``: its RollupState). Today is never in
    it (the dashboard reads today from hourly rollups and raw rows)."""
    window = today - timedelta(days=DASHBOARD_DAYS - 1)
    first = min(max(window, local_date(daily.since)), today)
    return first, max(first, min(local_date(daily.through), today))


def rebuild_key_totals(now: datetime | None = None) -> int | None:
    """Make KeyUsageTotals the per-key sums of the UsageRollup rows of
    ``key_totals_range`` (every tenant; requests, errors, tokens, cost), with its range in
    ``RollupState('key_totals')``, unless they already are (the state names that range: a
    rollup that changed a day in it would have dropped the state). One transaction that
    holds the locks of those days, so no rollup of them runs meanwhile. Returns the rows
    written, or None when there was nothing to do (or no daily rollups yet)."""
    today = local_date(_now(now))
    with transaction.atomic():
        _lock(_KEY_TOTALS_LOCK, 0)
        daily = _state("daily")
        if daily is None:
            return None
        first, end = key_totals_range(today, daily)
        since, through = day_bounds(first)[0], day_bounds(end)[0]
        state = _state(KEY_TOTALS)
        if state is not None and (state.since, state.through) == (since, through):
            return None
        day = first
        while day < end:
            _lock_day(day)
            day += timedelta(days=1)
        table = KeyUsageTotals._meta.db_table
        names = ("requests", "errors", "input_tokens", "cached_tokens", "output_tokens",
                 "reasoning_tokens", "cost")
        sums = (UsageRollup.objects.filter(date__gte=first, date__lt=end).order_by()
                .values("tenant_id", "key_id").annotate(**{n: Sum(n) for n in names}))
        sql, params = sums.query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {table}")
            cursor.execute(f"INSERT INTO {table} (tenant_id, key_id, {', '.join(names)}) "
                           f"SELECT tenant_id, key_id, {', '.join(names)} FROM ({sql}) s",
                           params)
            written = cursor.rowcount
        RollupState.objects.update_or_create(name=KEY_TOTALS, defaults={
            "since": since, "through": through})
    log.info("per-key totals of %s..%s rebuilt: %d rows", first, end, written)
    return written


# --- expiry of raw rows -------------------------------------------------------------------

def expire_usage(now: datetime | None = None) -> int:
    """Delete the UsageLog rows of local days older than BILLING_USAGE_RETENTION_DAYS,
    each day rolled up before its rows go (rollups are kept for good).

    On PostgreSQL (a partitioned usage log, ``billing.partitions``) every monthly partition
    that ends at or before the first kept day is dropped whole, oldest first, after the days
    and hours it holds are rolled up (those the scheduled rollups have not already rolled
    after they ended: ``RollupState`` 'daily' and 'hourly'). What is left before that day
    (the older days of the boundary month, rows in the default partition, and everything
    on SQLite) is deleted day by day, oldest first, each day rolled up just before, in
    batches of BILLING_USAGE_EXPIRE_BATCH rows, one short transaction each, so a huge table
    is never locked for long. Returns the rows deleted (for a dropped partition, the
    planner's count of its rows: ``pg_class.reltuples``, exact after ANALYZE)."""
    kept_from = retention_start(now)
    if kept_from is None:
        return 0
    cutoff = day_bounds(kept_from)[0]
    deleted = _drop_expired_partitions(cutoff, now)
    batch = max(1, int(settings.BILLING_USAGE_EXPIRE_BATCH))
    old = UsageLog.objects.filter(created_at__lt=cutoff).order_by("created_at")
    oldest = old.values_list("created_at", flat=True).first()
    while oldest is not None:
        day = local_date(oldest)
        rollup_day(day, now=now)
        start, end = day_bounds(day)
        rollup_hours(start, end - timedelta(microseconds=1), now=now)
        rows = UsageLog.objects.filter(created_at__gte=start, created_at__lt=end).order_by()
        while True:
            ids = list(rows.values_list("pk", flat=True)[:batch])
            if not ids:
                break
            deleted += UsageLog.objects.filter(pk__in=ids).delete()[0]
        log.info("usage rows of %s expired (rollups kept)", day)
        oldest = old.filter(created_at__gte=end).values_list("created_at", flat=True).first()
    return deleted


def _covered(state: RollupState | None, start: datetime, end: datetime) -> bool:
    """True when the scheduled rollups (``state``) rolled [start, end) up after it ended."""
    return state is not None and state.since <= start and end <= state.through


def _drop_expired_partitions(cutoff: datetime, now: datetime | None) -> int:
    """Drop the monthly usage partitions that end at or before ``cutoff`` (a local day's
    start), each after its days and hours are rolled up. Returns their rows (estimated)."""
    from billing import partitions

    dropped = 0
    for partition in partitions.droppable(cutoff):
        daily, hourly = _state("daily"), _state("hourly")
        assert partition.start is not None and partition.end is not None
        # Every local day with rows in the partition ends at or before the cutoff. A day
        # that straddles the partition's start may have lost its earlier part with the
        # previous partition: rollup_day never makes an expired day smaller.
        day, last = local_date(partition.start), local_date(partition.end - timedelta(
            microseconds=1))
        while day <= last:
            if not _covered(daily, *day_bounds(day)):
                rollup_day(day, now=now)
            day += timedelta(days=1)
        hour = partition.start
        while hour < partition.end:
            if not _covered(hourly, hour, hour + timedelta(hours=1)):
                rollup_hour(hour, now=now)
            hour += timedelta(hours=1)
        partitions.drop_partition(partition)
        dropped += max(0, partition.rows)
        log.info("usage partition %s expired (rollups kept)", partition.name)
    return dropped


# --- daily counters -------------------------------------------------------------------------


def reset_daily_counters(now: datetime | None = None) -> int:
    """Delete the daily counters of earlier local days: the RPD counters
    ``rediskeys.rpd(key_id, "YYYYMMDD")`` in Redis. Today's counters are untouched (a new
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
    today = local_day_and_seconds_left(moment.timestamp())[0]
    stale = []
    for name in client.scan_iter(match=rediskeys.rpd_pattern(), count=1000):
        day = rediskeys.rpd_day(name)
        if day is not None and day < today:
            stale.append(name)
    removed = 0
    for i in range(0, len(stale), 500):
        removed += int(client.delete(*stale[i:i + 500]))
    if removed:
        log.info("deleted %d RPD counters of earlier days", removed)
    return removed


def fold_deleted_key(key_id: int) -> None:
    """Before a key is deleted: each of its rollup rows is added to the tenant's key-less row
    of the same period and model, when there is one. Deleting a key empties the key of its
    rows (``SET_NULL``), and the rollups are unique per (period, tenant, key, model) with
    empty keys equal, so a second deleted key with a row for the same day and model would
    otherwise collide with the first one's. The sums are what a re-roll of the period gives
    (the raw rows lose their key too)."""
    for model, period in ((UsageRollup, "date"), (UsageRollupHourly, "hour")):
        for row in model.objects.filter(key_id=key_id).order_by("pk"):
            same: dict[str, Any] = {period: getattr(row, period), "tenant_id": row.tenant_id,
                                    "model": row.model}
            keyless = (model.objects.select_for_update().filter(**same, key__isnull=True)
                       .first())
            if keyless is None:
                continue  # the delete empties its key
            for name in MEASURES:
                setattr(keyless, name, getattr(keyless, name) + getattr(row, name))
            keyless.save(update_fields=list(MEASURES))
            row.delete()
