"""The dashboard's reads: a tenant's (or one of its keys') usage over the last 30 days and
today, built from rollups, always filtered by the tenant.

Sources, so the page costs the same on a 10M-row usage table as on an empty one:

- local days before ``RollupState('daily').through`` (the days the 10-minute task rolled
  up after they ended): ``UsageRollup``;
- the hours after that, up to ``RollupState('hourly').through`` (the minute task):
  ``UsageRollupHourly``;
- the hour not over yet, as far as the minute task rolled it (BILLING_ROLLUP_SETTLE_SECONDS
  ago, when it ran: ``rollups.partial_hour``): ``UsageRollupHourly`` too;
- the rest (normally the last BILLING_ROLLUP_SETTLE_SECONDS and up to a minute more): the
  raw ``UsageLog`` rows, through the (tenant, created_at) index.

The ranges never overlap, so nothing is counted twice, and the page is exact (to the rows
written so far, but for a row written more than BILLING_ROLLUP_SETTLE_SECONDS after its
request started: it shows after the next minute's rollup) whether or not Celery beat runs:
without it the watermarks stay behind and the raw rows cover more (right, only slower).
Hours are UTC hours; for "today by hour" they are shown in local time (zones with
half-hour offsets see their local day start inside an hour: that hour counts to the day it
starts in).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import cached_property
from typing import Any

from django.db import connections, transaction
from django.db.models import Exists, Q, Sum
from django.db.models.functions import TruncHour
from django.utils import timezone

from billing import rollups
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
from billing.rollups import (
    DASHBOARD_DAYS,
    KEY_TOTALS,
    MEASURES,
    day_bounds,
    hour_start,
    local_date,
    measure_aggregates,
    median_ms,
)
from billing.usagerow import TOKEN_FIELDS
from keys.models import ApiKey, Tenant
from portal.infra.dbrouter import analytics, analytics_alias

DAYS = DASHBOARD_DAYS
TOP_KEYS = 10
TOKENS = TOKEN_FIELDS  # the usage row's token counts (billing.usagerow)
# What the by-model and by-key breakdowns need (no histograms: cheaper GROUP BYs).
BREAKDOWN = ("requests", "errors", *TOKENS, "cost")


@dataclass
class Totals:
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost: Decimal = field(default_factory=Decimal)
    lat: list[int] = field(default_factory=lambda: [0] * len(LATENCY_FIELDS))
    ttfb: list[int] = field(default_factory=lambda: [0] * len(TTFB_FIELDS))

    def add(self, row: dict[str, Any]) -> None:
        for name in ("requests", "errors", *TOKENS):
            self.__dict__[name] += int(row.get(name) or 0)
        self.cost += Decimal(row.get("cost") or 0)
        if LATENCY_FIELDS[0] in row:
            for i, name in enumerate(LATENCY_FIELDS):
                self.lat[i] += int(row[name] or 0)
            for i, name in enumerate(TTFB_FIELDS):
                self.ttfb[i] += int(row[name] or 0)

    def merge(self, other: Totals) -> None:
        for name in ("requests", "errors", *TOKENS):
            self.__dict__[name] += other.__dict__[name]
        self.cost += other.cost
        self.lat = [a + b for a, b in zip(self.lat, other.lat, strict=True)]
        self.ttfb = [a + b for a, b in zip(self.ttfb, other.ttfb, strict=True)]

    @property
    def tokens(self) -> int:
        """Input plus output (cached input is part of input, reasoning part of output)."""
        return self.input_tokens + self.output_tokens

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def median_latency_ms(self) -> int | None:
        return median_ms(self.lat)

    @property
    def median_ttfb_ms(self) -> int | None:
        return median_ms(self.ttfb)

    def as_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors,
                **{name: self.__dict__[name] for name in TOKENS},
                "cost": float(self.cost), "lat": self.lat, "ttfb": self.ttfb}


KeyRanking = list[tuple[int | None, Totals]]


@dataclass
class Overview:
    tenant: Tenant
    key: ApiKey | None
    now: datetime
    today: date
    days: list[date]
    by_day: dict[date, Totals]
    by_hour: dict[datetime, Totals]   # local hour starts of today
    by_model: dict[str, Totals]       # 30 days
    today_totals: Totals
    month_totals: Totals
    days_totals: Totals
    # The keys by 30-day cost, then requests (the query's LIMIT: None for all; never called
    # for one key's overview).
    rank_keys: Callable[[int | None], KeyRanking] = field(default=lambda limit: [],
                                                           repr=False)
    key_names: dict[int, tuple[str, str]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.days_totals.requests == 0

    @cached_property
    def top(self) -> KeyRanking:
        return self.rank_keys(TOP_KEYS)

    @cached_property
    def by_key(self) -> dict[int | None, Totals]:
        """Every key's 30 days (empty for one key's overview). The page needs only
        ``top_keys``: this reads one row per key with traffic."""
        return dict(self.rank_keys(None))

    def top_keys(self, n: int = TOP_KEYS) -> list[dict[str, Any]]:
        ranked = self.top[:n] if n <= TOP_KEYS else self.rank_keys(n)
        missing = [k for k, _ in ranked if k and k not in self.key_names]
        if missing:  # names of the keys shown only (a tenant may have 100k)
            for k in ApiKey.objects.filter(tenant=self.tenant, pk__in=missing).only(
                    "pk", "name", "prefix", "last4"):
                self.key_names[k.pk] = (k.name, k.masked)
        out = []
        for key_id, t in ranked:
            name, masked = self.key_names.get(key_id, ("", "")) if key_id else ("", "")
            out.append({"id": key_id, "name": name, "masked": masked, "totals": t})
        return out

    def chart_data(self) -> dict[str, Any]:
        """What static/portal/dashboard.js draws (passed with json_script)."""
        hours = sorted(self.by_hour)
        return {
            "days": [d.isoformat() for d in self.days],
            "day_cost": [float(self.by_day[d].cost) for d in self.days],
            "day_requests": [self.by_day[d].requests for d in self.days],
            "hours": [h.isoformat() for h in hours],
            "hour_cost": [float(self.by_hour[h].cost) for h in hours],
            "hour_requests": [self.by_hour[h].requests for h in hours],
            "models": [{"model": m or "-", "cost": float(t.cost), "requests": t.requests}
                       for m, t in sorted(self.by_model.items(),
                                          key=lambda kv: kv[1].cost, reverse=True)],
            "keys": [{"name": k["name"] or k["masked"] or "-", "prefix": k["masked"],
                      "cost": float(k["totals"].cost), "requests": k["totals"].requests}
                     for k in self.top_keys()],
            "today": self.today_totals.as_json(),
            "month_cost": float(self.month_totals.cost),
            "today_start": day_bounds(self.today)[0].isoformat(),
            "key_id": self.key.pk if self.key else None,
            "bounds": list(LATENCY_BOUNDS_MS),
        }


def _watermark(name: str) -> RollupState | None:
    return RollupState.objects.filter(name=name).first()


def _values(qs: Any, group: str | None, names: tuple[str, ...]) -> list[dict[str, Any]]:
    qs = qs.order_by()
    aggregates = {name: Sum(name) for name in names}
    if group is None:
        row = qs.aggregate(**aggregates)
        return [row] if row.get("requests") else []
    return list(qs.values(group).annotate(**aggregates))


# A part of the key ranking: a queryset, the aggregates of its rows per key (raw usage rows)
# or None (rollup rows, summed as they are), and its sign (-1: subtracted).
KeyPart = tuple[Any, dict[str, Any] | None, int]
_CENT = Decimal("0.000001")


def _part(part: KeyPart, names: tuple[str, ...], ids: list[int | None] | None) -> Any:
    """A part of the key ranking as a queryset of key_id, then ``names`` in that order (the
    parts are glued with UNION ALL, which goes by position); only the keys ``ids`` when
    given. Rollup rows go in as they are (the ranking sums them per key once); raw usage
    rows (``part[1]``: their aggregates) are summed per key first."""
    qs, aggregates, _sign = part
    if ids is not None:
        only = Q(key_id__in=[i for i in ids if i is not None])
        qs = qs.filter(only | Q(key_id__isnull=True) if None in ids else only)
    if aggregates is None:
        return qs.order_by().values("key_id", *names)
    return qs.order_by().values("key_id").annotate(**{n: aggregates[n] for n in names})


def _union(parts: list[KeyPart], names: tuple[str, ...],
           ids: list[int | None] | None = None) -> tuple[str, list[Any]]:
    """``SELECT key_id, SUM(name)... FROM (the parts) GROUP BY key_id`` and its params
    (``names`` has requests: a key whose rows were all subtracted has none left, and every
    rollup row counts at least one request, so it is left out)."""
    sqls, params = [], []
    for part in parts:
        sql, p = _part(part, names, ids).query.sql_with_params()
        if part[2] < 0:  # the columns are aliased by their names
            sql = f"SELECT key_id, {', '.join(f'-{n}' for n in names)} FROM ({sql}) minus"
        sqls.append(sql)
        params.extend(p)
    sums = ", ".join(f"SUM({n})" for n in names)
    return (f"SELECT key_id, {sums} FROM ({' UNION ALL '.join(sqls)}) parts GROUP BY key_id "
            "HAVING SUM(requests) > 0", params)


def _ranking(parts: list[KeyPart]) -> Callable[[int | None], KeyRanking]:
    """A function of a LIMIT that sums the per-key ``parts`` per key and returns the keys by
    cost, then requests (then id), with their BREAKDOWN. With a LIMIT, one statement ranks
    the keys on cost and requests only (two sums per row, not seven) and a second sums the
    BREAKDOWN of the keys shown; both read one snapshot on PostgreSQL (a REPEATABLE READ
    transaction, unless the caller's transaction is already open)."""

    def rank(limit: int | None) -> KeyRanking:
        if not parts:
            return []
        # An analytic read (called by the view after overview() returned, so it picks its
        # database itself): the replica when one is configured.
        alias = analytics_alias()
        conn = connections[alias]
        fresh = not conn.in_atomic_block
        with transaction.atomic(using=alias), conn.cursor() as cursor:
            if conn.vendor == "postgresql":
                if fresh:
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                # The planner costs the fallback part (per-key daily rollups, skipped by
                # its one-time filter while KeyUsageTotals holds the days) as if it ran,
                # and would compile the statement (JIT) and start parallel workers for
                # it: ~200 ms for nothing. The sums per key need more than the default
                # work_mem not to spill to disk for a tenant with 10k+ keys.
                cursor.execute("SET LOCAL jit = off; SET LOCAL max_parallel_workers_per_gather"
                               " = 0; SET LOCAL work_mem = '64MB'")
            ids = None
            if limit is not None:
                sql, params = _union(parts, ("cost", "requests"))
                cursor.execute(f"{sql} ORDER BY 2 DESC, 3 DESC, 1 LIMIT %s", [*params, limit])
                ids = [row[0] for row in cursor.fetchall()]
                if not ids:
                    return []
            sql, params = _union(parts, BREAKDOWN, ids)
            cost, requests = (2 + BREAKDOWN.index(n) for n in ("cost", "requests"))
            cursor.execute(f"{sql} ORDER BY {cost} DESC, {requests} DESC, 1", params)
            rows = cursor.fetchall()
        out = []
        for key_id, *values in rows:
            t = Totals()
            t.add(dict(zip(BREAKDOWN, values, strict=True)))
            if not isinstance(values[-1], Decimal):  # SQLite sums decimals as floats
                t.cost = Decimal(str(values[-1] or 0)).quantize(_CENT)
            out.append((key_id, t))
        return out

    return rank


def _window_parts(tenant: Tenant, first: date, end: date) -> list[KeyPart]:
    """The key ranking's parts for the local days [first, end), read from daily rollups.

    From ``KeyUsageTotals`` (the sums over the days its RollupState names), corrected by
    the per-key rollups of the days it lacks (added) and of the days it has beyond
    [first, end) (subtracted): normally none, and one day each between local midnight and
    the 10-minute task's next run. Under an uncorrelated EXISTS on that state, with the
    per-key rollups of [first, end) under NOT EXISTS as the fallback, all in the ranking's
    one snapshot: exactly one of the two ways counts, also if the totals are rebuilt or
    dropped meanwhile. Without totals, or when correcting them would read as many days as
    the fallback, the per-key rollups alone."""
    per_key = UsageRollup.objects.filter(tenant=tenant)
    fallback: KeyPart = (per_key.filter(date__gte=first, date__lt=end), None, 1)
    state = _watermark(KEY_TOTALS)
    if state is None:
        return [fallback]
    wanted = {first + timedelta(days=i) for i in range((end - first).days)}
    s0, s1 = local_date(state.since), local_date(state.through)
    stored = {s0 + timedelta(days=i) for i in range(max(0, (s1 - s0).days))}
    add, drop = sorted(wanted - stored), sorted(stored - wanted)
    if len(add) + len(drop) >= len(wanted):
        return [fallback]
    held = Exists(RollupState.objects.filter(name=KEY_TOTALS, since=state.since,
                                             through=state.through))
    parts: list[KeyPart] = [(KeyUsageTotals.objects.filter(held, tenant=tenant), None, 1),
                            (fallback[0].filter(~held), None, 1)]
    if add:
        parts.append((per_key.filter(held, date__in=add), None, 1))
    if drop:
        parts.append((per_key.filter(held, date__in=drop), None, -1))
    return parts


PARTIAL_TRIES = 3  # reads of the figures before giving up the partial hour's rollup


@analytics()
def overview(tenant: Tenant, key: ApiKey | None = None,
             now: datetime | None = None) -> Overview:
    """The dashboard's figures for ``tenant`` (and only ``key`` of it, when given: its
    rows must be the tenant's, which the caller fetched by tenant).

    The tenant's figures come from the per-tenant rollups (a row per day or hour and model,
    whatever the number of keys); one key's from the per-key rollups of that key. The key
    ranking (top keys) reads ``KeyUsageTotals`` for the daily part of the window (see
    ``_window_parts``), the per-key hourly rollups and raw rows for the rest.

    The hour the minute rollup covers only in part (``rollups.partial_hour``) is read from
    its rollup up to where that stops, and raw after it. That rollup is rewritten every
    minute, its extent with it (one transaction): the extent is read before the figures
    and again after them, and the figures are read again if it moved in between (else a
    row could be counted both in the rollup and raw). After PARTIAL_TRIES moves, the hour
    is read raw. The key ranking, read later (when the page asks), is checked the same way
    and read from raw rows if the extent moved since the figures."""
    moment = now or timezone.now()
    figures, partial = rollups.read_settled(
        lambda extent: (_overview(tenant, key, moment, extent), extent), PARTIAL_TRIES)
    if partial is not None:
        figures.rank_keys = _checked(figures.rank_keys, partial,
                                     lambda: _overview(tenant, key, moment, None))
    return figures


def _checked(rank: Callable[[int | None], KeyRanking], partial: rollups.Extent,
             raw: Callable[[], Overview]) -> Callable[[int | None], KeyRanking]:
    """``rank``, unless the partial hour's extent moved from ``partial`` by the time it has
    read: then the ranking of ``raw()`` (the hour read raw)."""
    def ranked(limit: int | None) -> KeyRanking:
        out = rank(limit)
        if rollups.partial_hour() == partial:
            return out
        return raw().rank_keys(limit)
    return ranked


# Over the complexity limit (C901) on purpose: data sources stitched by time range (daily,
# hourly rollups, raw rows; per tenant or per key); each step is commented.
def _overview(tenant: Tenant, key: ApiKey | None, now: datetime,  # noqa: C901
              partial: rollups.Extent | None) -> Overview:
    today = local_date(now)
    first_day = min(today - timedelta(days=DAYS - 1), today.replace(day=1))
    window_day = today - timedelta(days=DAYS - 1)
    days = [window_day + timedelta(days=i) for i in range(DAYS)]
    scope: dict[str, Any] = {"tenant": tenant}
    if key is not None:
        scope["key"] = key
    daily_rollup = UsageRollupTenant if key is None else UsageRollup
    hourly_rollup = UsageRollupTenantHourly if key is None else UsageRollupHourly

    daily = _watermark("daily")
    hourly = _watermark("hourly")
    # Days in [d0, d1) come from the daily rollups (never today); days before d0 (the
    # rollups' watermark starts later) and from d1 on come from hourly rollups or raw rows.
    d0 = d1 = first_day
    if daily:
        d0 = min(max(first_day, local_date(daily.since)), today)
        d1 = max(d0, min(local_date(daily.through), today))
    t0 = day_bounds(d1)[0]
    # Hours in [t0, t1) from the hourly rollups, when they cover all of it.
    t1 = t0
    if hourly and hourly.since <= t0 and hourly.through > t0:
        t1 = min(hourly.through, hour_start(now) + timedelta(hours=1))
    # The hour at t1 rolled up in part, to ``raw_from``: its rollup rows are read with the
    # hours before it, the raw rows from ``raw_from`` on.
    raw_from = hours_end = t1
    if partial is not None and partial[0] == t1 and t1 < partial[1] <= now:
        raw_from, hours_end = partial[1], t1 + timedelta(hours=1)

    by_day = {d: Totals() for d in (first_day + timedelta(days=i)
                                    for i in range((today - first_day).days + 1))}
    by_hour: dict[datetime, Totals] = {}
    by_model: dict[str, Totals] = {}
    key_parts: list[KeyPart] = []  # per-key sums over the window, for the key ranking

    def bump(table: dict[Any, Totals], k: Any, row: dict[str, Any]) -> None:
        table.setdefault(k, Totals()).add(row)

    # 1. daily rollups: by day (with histograms) and by model over the window.
    if d1 > d0:
        qs = daily_rollup.objects.filter(**scope, date__gte=d0, date__lt=d1)
        for row in _values(qs, "date", MEASURES):
            by_day[row["date"]].add(row)
        for row in _values(qs.filter(date__gte=window_day), "model", BREAKDOWN):
            bump(by_model, row["model"], row)
    k0 = max(d0, window_day)
    if key is None and d1 > k0:
        key_parts.extend(_window_parts(tenant, k0, d1))

    def add_hour(hour: datetime, row: dict[str, Any]) -> None:
        day = local_date(hour)
        if day in by_day:
            by_day[day].add(row)
        if day == today:
            bump(by_hour, timezone.localtime(hour), row)

    # 2. hourly rollups of [t0, t1), and of the hour at t1 when it is rolled up in part.
    if hours_end > t0:
        qs = hourly_rollup.objects.filter(**scope, hour__gte=t0, hour__lt=hours_end)
        for row in _values(qs, "hour", MEASURES):
            add_hour(row["hour"], row)
        window = qs.filter(hour__gte=hour_start(day_bounds(window_day)[0]))
        for row in _values(window, "model", BREAKDOWN):
            bump(by_model, row["model"], row)
        if key is None:
            key_parts.append((UsageRollupHourly.objects.filter(
                tenant=tenant, hour__gte=max(t0, hour_start(day_bounds(window_day)[0])),
                hour__lt=hours_end), None, 1))

    # 3. raw rows: since raw_from (normally the last minutes), and before d0 (if any); one
    # GROUP BY by hour and model each (rows of an hour that starts before the window count
    # for their day only).
    window_start = day_bounds(window_day)[0]
    first_hour = hour_start(window_start)
    if first_hour < window_start:
        first_hour += timedelta(hours=1)

    def raw(start: datetime, end: datetime | None = None) -> None:
        created = {"created_at__gte": start}
        if end is not None:
            created["created_at__lt"] = end
        rows = (UsageLog.objects.filter(**scope, **created).order_by()
                .annotate(h=TruncHour("created_at", tzinfo=UTC))
                .values("h", "model").annotate(**measure_aggregates()))
        for row in rows:
            add_hour(row["h"], row)
            if row["h"] >= window_start:
                bump(by_model, row["model"], row)
        if key is None and (end is None or end > first_hour):
            created["created_at__gte"] = max(start, first_hour)
            key_parts.append((UsageLog.objects.filter(tenant=tenant, **created),
                              measure_aggregates(), 1))

    raw(raw_from)
    if d0 > first_day:
        raw(day_bounds(first_day)[0], day_bounds(d0)[0])

    for h in _today_hours(today, now):
        by_hour.setdefault(h, Totals())
    by_hour = {h: t for h, t in by_hour.items() if local_date(h) == today}
    days_totals, month_totals = Totals(), Totals()
    for d, t in by_day.items():
        if d >= window_day:
            days_totals.merge(t)
        if d >= today.replace(day=1):
            month_totals.merge(t)
    return Overview(
        tenant=tenant, key=key, now=now, today=today, days=days,
        by_day={d: t for d, t in by_day.items() if d >= window_day}, by_hour=by_hour,
        by_model=by_model, today_totals=by_day[today], month_totals=month_totals,
        days_totals=days_totals, rank_keys=_ranking(key_parts),
    )


def _today_hours(today: date, now: datetime) -> list[datetime]:
    """Every local hour start of today up to now (the chart's x axis)."""
    start, _ = day_bounds(today)
    out = []
    hour = hour_start(start)
    while hour <= now:
        out.append(timezone.localtime(hour))
        hour += timedelta(hours=1)
    return out


def available_micro(tenant: Tenant) -> int | None:
    """The tenant's available balance (balance minus reservations) in micro-units, from the
    limiter when its account is loaded there; None otherwise (then the balance is all)."""
    from keys.limits import limiter

    try:
        return limiter().available("tenant", tenant.pk)
    except Exception:  # Redis away: the page still shows the balance
        return None


def available_balance(tenant: Tenant) -> Decimal:
    micro = available_micro(tenant)
    if micro is None:
        return tenant.balance
    return (Decimal(micro) / Decimal(1_000_000)).quantize(Decimal("0.000001"))


