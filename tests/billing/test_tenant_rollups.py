"""The per-tenant rollups (a row per day or hour, tenant and model) and the per-key totals of
the dashboard's window (KeyUsageTotals): after the rollup functions and the scheduled task
run (called directly, so deterministically), they equal a direct aggregation of the raw
usage rows (errors by class included), computed here in Python; re-rolling a period that
changed follows the change; and the dashboard reads them (a tampered row shows), staying
exact while they are rebuilt.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db.models import Sum

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
from keys.models import ApiKey, Tenant
from keys.services import key_create, tenant_get_or_create
from portal.selectors.dashboard import overview

pytestmark = pytest.mark.django_db
_ids = itertools.count(1)
NOW = datetime(2025, 6, 15, 14, 30, tzinfo=UTC)  # TIME_ZONE is UTC in the tests
DAY = date(2025, 6, 2)
SUMMED = ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens", "cost")
CLASSES = ("client_errors", "server_errors", "upstream_errors")
# The error codes the gateway writes when an upstream failed (gateway.errors, providers.base
# and decoding, exchange.passthrough), written out here independently of billing.usagerow.
UPSTREAM = {"upstream_error", "upstream_unavailable", "upstream_timeout", "upstream_stream_cut",
            "upstream_bad_response", "upstream_auth_failed"}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def log(when: datetime, tenant: Tenant | None, key: ApiKey | None, model: str = "gpt-5", *,
        status: int = 200, inp: int = 0, out: int = 0, cost: str = "0", latency: int = 100,
        ttfb: int | None = None, code: str = "") -> UsageLog:
    return UsageLog.objects.create(
        created_at=when, request_id=f"tr-{next(_ids)}", key=key,
        key_prefix=key.prefix if key else "", tenant=tenant, endpoint="responses",
        model=model, status_code=status, error_code=code, input_tokens=inp,
        cached_tokens=inp // 2,
        output_tokens=out, reasoning_tokens=out // 3, cost=Decimal(cost),
        latency_ms=latency, ttfb_ms=ttfb)


def bucket(ms: int) -> int:
    return next((i for i, b in enumerate(LATENCY_BOUNDS_MS) if ms < b), len(LATENCY_BOUNDS_MS))


def expected(rows: Any, group: Callable[[UsageLog], tuple[Any, ...]],
             histograms: bool = True) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The raw rows summed per ``group`` independently of billing.rollups; with
    ``histograms`` also what only rollup rows count (histograms, errors by class)."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        g = out.setdefault(group(r), {"requests": 0, "errors": 0, **dict.fromkeys(SUMMED, 0)})
        if histograms:
            g.setdefault("lat", [0] * len(LATENCY_FIELDS))
            g.setdefault("ttfb", [0] * len(TTFB_FIELDS))
            g["lat"][bucket(r.latency_ms)] += 1
            if r.ttfb_ms is not None:
                g["ttfb"][bucket(r.ttfb_ms)] += 1
            upstream = r.error_code in UPSTREAM
            for name, hit in (("client_errors", 400 <= r.status_code < 500 and not upstream),
                              ("server_errors", r.status_code >= 500 and not upstream),
                              ("upstream_errors", upstream)):
                g[name] = g.get(name, 0) + hit
        g["requests"] += 1
        g["errors"] += r.status_code >= 400 or r.error_code in UPSTREAM
        for name in SUMMED:
            g[name] += getattr(r, name)
    return out


def stored(model: Any, group: tuple[str, ...], histograms: bool = True,
           **period: Any) -> dict[tuple[Any, ...], dict[str, Any]]:
    out = {}
    for r in model.objects.filter(**period):
        row: dict[str, Any] = {"requests": r.requests, "errors": r.errors,
                               **{name: getattr(r, name) for name in SUMMED}}
        if histograms:
            row["lat"] = [getattr(r, f) for f in LATENCY_FIELDS]
            row["ttfb"] = [getattr(r, f) for f in TTFB_FIELDS]
            row.update({name: getattr(r, name) for name in CLASSES})
        out[tuple(getattr(r, g) for g in group)] = row
    return out


def tenant_day(day: date) -> dict[tuple[Any, ...], dict[str, Any]]:
    start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    return expected(UsageLog.objects.filter(created_at__gte=start,
                                            created_at__lt=start + timedelta(days=1)),
                    lambda r: (r.tenant_id, r.model))


def tenant_hour(start: datetime) -> dict[tuple[Any, ...], dict[str, Any]]:
    return expected(UsageLog.objects.filter(created_at__gte=start,
                                            created_at__lt=start + timedelta(hours=1)),
                    lambda r: (r.tenant_id, r.model))


@pytest.fixture
def world() -> dict[str, Any]:
    acme = tenant_get_or_create(name="acme")[0]
    globex = tenant_get_or_create(name="globex")[0]
    return {"acme": acme, "globex": globex,
            "a1": key_create(tenant=acme, name="a1").key,
            "a2": key_create(tenant=acme, name="a2").key,
            "a3": key_create(tenant=acme, name="a3").key,
            "g1": key_create(tenant=globex, name="g1").key}


def some_rows(w: dict[str, Any], day: date) -> None:
    """Several keys of two tenants, two models, errors of each class (an upstream code with a
    4xx status is an upstream error, and so is a stream cut after its 200), histograms, a
    keyless row."""
    d = day.isoformat()
    log(at(f"{d}T00:00:00"), w["acme"], w["a1"], inp=10, out=5, cost="0.01", latency=20,
        ttfb=5)
    log(at(f"{d}T00:20:00"), w["acme"], w["a2"], inp=4, out=9, cost="0.02", latency=130000)
    log(at(f"{d}T00:40:00"), w["acme"], w["a3"], "o3", status=500, latency=1500, ttfb=900,
        code="internal_error")
    log(at(f"{d}T00:59:59"), w["acme"], w["a1"], "o3", inp=7, out=3, cost="0.5", latency=260)
    log(at(f"{d}T01:10:00"), w["globex"], w["g1"], inp=100, out=20, cost="1.25", latency=240,
        ttfb=99)
    log(at(f"{d}T01:15:00"), w["acme"], w["a2"], status=429, latency=3,
        code="rate_limit_exceeded")
    log(at(f"{d}T01:30:00"), w["globex"], w["g1"], status=504, latency=30000,
        code="upstream_timeout")
    log(at(f"{d}T01:45:00"), w["globex"], w["g1"], "o3", status=429, latency=2,
        code="upstream_unavailable")
    log(at(f"{d}T23:59:59"), w["acme"], None, "", status=401, latency=1)
    log(at(f"{d}T12:00:00"), w["globex"], w["g1"], "o3", inp=1, out=1, cost="0.001",
        latency=50, ttfb=25)
    log(at(f"{d}T12:30:00"), w["acme"], w["a1"], inp=3, out=2, cost="0.003", latency=900,
        ttfb=40, code="upstream_stream_cut")
    log(at(f"{d}T13:00:00"), w["acme"], w["a3"], status=502, latency=80,
        code="upstream_auth_failed")


def check_period(day: date) -> None:
    assert stored(UsageRollupTenant, ("tenant_id", "model"), date=day) == tenant_day(day)
    start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    for h in range(24):
        hour = start + timedelta(hours=h)
        assert stored(UsageRollupTenantHourly, ("tenant_id", "model"),
                      hour=hour) == tenant_hour(hour), hour


def roll(day: date) -> None:
    """The day and its hours, as in the first hour of the day after (its raw rows are not
    expired then, and its last hour is over by more than BILLING_ROLLUP_SETTLE_SECONDS)."""
    start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    later = start + timedelta(days=1, hours=1)
    rollups.rollup_day(day, now=later)
    rollups.rollup_hours(start, start + timedelta(hours=23), now=later)


def test_tenant_rollups_equal_the_raw_rows_per_tenant_and_model(world):
    some_rows(world, DAY)
    some_rows(world, DAY + timedelta(days=1))
    roll(DAY)
    check_period(DAY)
    # Only the day rolled up has rows: the next day's raw rows are not in any rollup yet.
    assert not UsageRollupTenant.objects.filter(date=DAY + timedelta(days=1)).exists()
    acme = UsageRollupTenant.objects.get(date=DAY, tenant=world["acme"], model="gpt-5")
    # Three keys' rows: a 429, a stream cut after its 200 and a 502 among them.
    assert (acme.requests, acme.errors, acme.cost) == (5, 3, Decimal("0.033"))
    # The tenant row is the sum of its keys' rows, histograms included.
    per_key = UsageRollup.objects.filter(date=DAY, tenant=world["acme"], model="gpt-5")
    assert [sum(getattr(r, f) for r in per_key) for f in LATENCY_FIELDS] == [
        getattr(acme, f) for f in LATENCY_FIELDS]

    before = list(UsageRollupTenant.objects.order_by("id").values())
    roll(DAY)  # idempotent: nothing rewritten
    assert list(UsageRollupTenant.objects.order_by("id").values()) == before


def test_the_error_classes_equal_the_raw_rows_per_key_and_per_tenant(world):
    """client_errors, server_errors and upstream_errors of the per-key and per-tenant rollups
    of a day and of its hours equal the raw rows counted here (an upstream error code counts
    as upstream whatever the status; the three classes never overlap)."""
    some_rows(world, DAY)
    roll(DAY)
    start = datetime.combine(DAY, datetime.min.time(), tzinfo=UTC)
    rows = UsageLog.objects.filter(created_at__gte=start, created_at__lt=start + timedelta(1))
    group = ("tenant_id", "key_id", "model")

    def per_key(r: UsageLog) -> tuple[Any, ...]:
        return (r.tenant_id, r.key_id, r.model)

    assert stored(UsageRollup, group, date=DAY) == expected(rows, per_key)
    for h in range(24):
        hour = start + timedelta(hours=h)
        assert stored(UsageRollupHourly, group, hour=hour) == expected(
            rows.filter(created_at__gte=hour, created_at__lt=hour + timedelta(hours=1)),
            per_key), hour
    check_period(DAY)  # per tenant
    for model in (UsageRollup, UsageRollupHourly, UsageRollupTenant, UsageRollupTenantHourly):
        assert model.objects.aggregate(**{n: Sum(n) for n in CLASSES}) == {
            "client_errors": 2, "server_errors": 1, "upstream_errors": 4}, model
        assert model.objects.aggregate(Sum("errors")) == {"errors__sum": 7}, model


def test_re_rolling_a_changed_day_and_hour_follows_the_raw_rows(world):
    w = world
    some_rows(w, DAY)
    roll(DAY)
    # Rows of one tenant's model go, another tenant gets a new model, a row moves key.
    UsageLog.objects.filter(model="o3", tenant=w["acme"]).delete()
    log(at(f"{DAY}T00:30:00"), w["globex"], w["g1"], "gpt-4o-mini", inp=3, cost="0.3",
        latency=700)
    UsageLog.objects.filter(key=w["a2"], status_code=200).update(key=w["a3"], cost="0.07")
    roll(DAY)
    check_period(DAY)
    assert not UsageRollupTenant.objects.filter(tenant=w["acme"], model="o3").exists()
    assert not UsageRollupTenantHourly.objects.filter(tenant=w["acme"], model="o3").exists()
    assert UsageRollupTenant.objects.get(tenant=w["globex"], model="gpt-4o-mini").requests == 1


def test_a_day_whose_raw_rows_expired_keeps_its_tenant_rollup(world, settings):
    settings.BILLING_USAGE_RETENTION_DAYS = 30
    some_rows(world, DAY)
    roll(DAY)
    kept = stored(UsageRollupTenant, ("tenant_id", "model"), date=DAY)
    later = datetime.combine(DAY + timedelta(days=40), datetime.min.time(), tzinfo=UTC)
    assert rollups.expire_usage(later) > 0
    assert not UsageLog.objects.exists()
    rollups.rollup_day(DAY, now=later)
    assert stored(UsageRollupTenant, ("tenant_id", "model"), date=DAY) == kept


# --- per-key totals of the dashboard's window --------------------------------------------

def window_rows(today: date) -> Any:
    """The raw rows of the days the totals hold: the 29 days before ``today``."""
    start = datetime.combine(today - timedelta(days=rollups.DASHBOARD_DAYS - 1),
                             datetime.min.time(), tzinfo=UTC)
    end = datetime.combine(today, datetime.min.time(), tzinfo=UTC)
    return UsageLog.objects.filter(created_at__gte=start, created_at__lt=end)


def key_totals() -> dict[tuple[Any, ...], dict[str, Any]]:
    return stored(KeyUsageTotals, ("tenant_id", "key_id"), histograms=False)


def spread_rows(w: dict[str, Any]) -> None:
    for back, key in ((1, "a1"), (1, "a2"), (5, "a1"), (29, "a3"), (30, "a1"), (3, "g1")):
        day = NOW.date() - timedelta(days=back)
        tenant = w["globex"] if key == "g1" else w["acme"]
        log(at(f"{day}T10:00:00"), tenant, w[key], inp=back, out=2, cost=f"0.{back:02d}",
            status=500 if back == 5 else 200)
    log(NOW - timedelta(hours=1), w["acme"], w["a2"], cost="7")  # today: not in the totals


def test_the_daily_task_builds_the_per_key_totals_of_the_window(world):
    spread_rows(world)
    rollups.rollup_recent_days(NOW)
    state = RollupState.objects.get(name=rollups.KEY_TOTALS)
    assert (state.since, state.through) == (at("2025-05-17T00:00:00"), at("2025-06-15T00:00:00"))
    want = expected(window_rows(NOW.date()), lambda r: (r.tenant_id, r.key_id), False)
    assert key_totals() == want
    assert want[(world["acme"].pk, world["a1"].pk)]["requests"] == 2  # day 30 is outside
    assert (world["globex"].pk, world["g1"].pk) in want

    # Another run on the same day rebuilds nothing (same rows, same ids).
    ids = sorted(KeyUsageTotals.objects.values_list("id", flat=True))
    assert rollups.rebuild_key_totals(NOW) is None
    rollups.rollup_recent_days(NOW + timedelta(minutes=10))
    assert sorted(KeyUsageTotals.objects.values_list("id", flat=True)) == ids

    # The next day the window moves: rebuilt for it.
    tomorrow = NOW + timedelta(days=1)
    rollups.rollup_recent_days(tomorrow)
    assert RollupState.objects.get(name=rollups.KEY_TOTALS).through == at(
        "2025-06-16T00:00:00")
    assert key_totals() == expected(window_rows(tomorrow.date()),
                                    lambda r: (r.tenant_id, r.key_id), False)


def test_a_change_to_a_day_of_the_window_drops_the_totals_until_rebuilt(world):
    w = world
    spread_rows(w)
    rollups.rollup_recent_days(NOW)
    yesterday = NOW.date() - timedelta(days=1)
    rollups.rollup_day(yesterday, now=NOW)  # unchanged: the totals stay
    assert RollupState.objects.filter(name=rollups.KEY_TOTALS).exists()
    rollups.rollup_day(NOW.date(), now=NOW)  # today is not in the totals: they stay
    assert RollupState.objects.filter(name=rollups.KEY_TOTALS).exists()
    rollups.rollup_day(NOW.date() - timedelta(days=40), now=NOW)  # nor is day 40
    assert RollupState.objects.filter(name=rollups.KEY_TOTALS).exists()

    log(at(f"{yesterday}T23:59:59"), w["acme"], w["a3"], inp=1, cost="2")  # a late row
    rollups.rollup_day(yesterday, now=NOW)
    assert not RollupState.objects.filter(name=rollups.KEY_TOTALS).exists()
    # Meanwhile the dashboard sums the per-key rollups: still exact.
    ov = overview(w["acme"], now=NOW)
    assert ov.by_key[w["a3"].pk].cost == Decimal("2.29")
    assert [k["id"] for k in ov.top_keys()][:1] == [w["a2"].pk]  # 7.01 (today's 7 too)

    rollups.rollup_recent_days(NOW)
    assert key_totals() == expected(window_rows(NOW.date()),
                                    lambda r: (r.tenant_id, r.key_id), False)
    assert overview(w["acme"], now=NOW).by_key == ov.by_key


def test_the_dashboard_reads_the_tenant_rollups_and_the_key_totals(world):
    """White-box: a figure changed in the per-tenant rollups or in the totals (and nowhere
    else) is what the dashboard shows, so they are its source."""
    w = world
    spread_rows(w)
    rollups.rollup_recent_days(NOW)
    rollups.rollup_recent_hours(NOW)
    ov = overview(w["acme"], now=NOW)
    five = NOW.date() - timedelta(days=5)
    assert ov.by_day[five].requests == 1 and ov.by_model["gpt-5"].requests == 5
    UsageRollupTenant.objects.filter(tenant=w["acme"], date=five).update(requests=40)
    KeyUsageTotals.objects.filter(key=w["a1"]).update(cost=Decimal("100"))
    ov = overview(w["acme"], now=NOW)
    assert ov.by_day[five].requests == 40 and ov.by_model["gpt-5"].requests == 44
    assert ov.top_keys()[0]["id"] == w["a1"].pk
    assert ov.top_keys()[0]["totals"].cost == Decimal("100")
    # One key's page reads that key's own rollups, not the tenant's.
    assert overview(w["acme"], key=w["a1"], now=NOW).by_day[five].requests == 1
    # Without the state (dropped by a rollup), the totals are not read at all.
    RollupState.objects.filter(name=rollups.KEY_TOTALS).delete()
    assert overview(w["acme"], now=NOW).top_keys()[0]["id"] == w["a2"].pk


def test_usage_without_a_key_is_ranked_with_the_keys(world):
    w = world
    log(NOW - timedelta(days=2), w["acme"], None, "", status=401, cost="9")
    log(NOW - timedelta(days=2), w["acme"], w["a1"], cost="1")
    log(NOW - timedelta(minutes=5), w["acme"], w["a1"], cost="0.5")  # the current hour
    log(NOW - timedelta(days=2), w["globex"], w["g1"], cost="20")
    rollups.rollup_recent_days(NOW)
    rollups.rollup_recent_hours(NOW)
    top = overview(w["acme"], now=NOW).top_keys()
    assert [(k["id"], k["totals"].requests, k["totals"].errors, k["totals"].cost)
            for k in top] == [(None, 1, 1, Decimal("9")), (w["a1"].pk, 2, 0, Decimal("1.5"))]
    assert [k["id"] for k in overview(w["acme"], now=NOW).top_keys(1)] == [None]


def test_after_midnight_the_totals_are_corrected_until_the_task_runs(world):
    """Between local midnight and the daily task's next run the totals hold the day that
    left the window: the dashboard subtracts it (and the totals are still what it reads)."""
    w = world
    spread_rows(w)
    rollups.rollup_recent_days(NOW)
    rollups.rollup_recent_hours(NOW)
    later = NOW + timedelta(days=1)  # 2025-06-16: 2025-05-17 (a3's 0.29) left the window
    log(later - timedelta(hours=2), w["acme"], w["a1"], cost="0.4")
    start = datetime.combine(later.date() - timedelta(days=rollups.DASHBOARD_DAYS - 1),
                             datetime.min.time(), tzinfo=UTC)
    want = expected(UsageLog.objects.filter(tenant=w["acme"], created_at__gte=start),
                    lambda r: (r.key_id,), False)
    assert (w["a3"].pk,) not in want and (w["a2"].pk,) in want
    ov = overview(w["acme"], now=later)
    got = {(k,): {"requests": t.requests, "errors": t.errors, "input_tokens": t.input_tokens,
                  "cached_tokens": t.cached_tokens, "output_tokens": t.output_tokens,
                  "reasoning_tokens": t.reasoning_tokens, "cost": t.cost}
           for k, t in ov.by_key.items()}
    assert got == want
    KeyUsageTotals.objects.filter(key=w["a1"]).update(cost=Decimal("100"))
    assert overview(w["acme"], now=later).top_keys()[0]["totals"].cost == Decimal("100.4")


def test_the_operations_overview_reads_today_from_the_tenant_rollups(world):
    from portal.selectors.overview import today

    w = world
    now = datetime.now(UTC)
    log(now, w["acme"], w["a1"], cost="1")
    log(now, w["acme"], w["a2"], "o3", status=500, cost="2")
    log(now, w["globex"], w["g1"], cost="0.5")
    log(now, w["globex"], w["g1"], status=502, code="upstream_error")
    log(now, None, None, status=401)
    rollups.rollup_day(rollups.local_date(now))
    window = today()
    assert (window.requests, window.errors, window.spend) == (5, 3, Decimal("3.5"))
    assert window.classes_known
    assert (window.client_errors, window.server_errors, window.upstream_errors) == (1, 1, 1)
    assert [(t["tenant__name"], t["requests"], t["spend"]) for t in window.top_tenants] == [
        ("acme", 2, Decimal("3")), ("globex", 2, Decimal("0.5"))]


def test_deleting_keys_that_share_a_day_and_model_folds_their_rollups_together() -> None:
    """Deleted keys' rollup rows join the tenant's key-less rows (the unique constraint treats
    empty keys as equal, so a second deleted key's row used to collide with the first's),
    and the sums stay what a re-roll of the raw rows gives."""
    tenant, _ = tenant_get_or_create(name="fold")
    first, second, kept = (key_create(tenant=tenant, name=n).key for n in ("a", "b", "c"))
    start = datetime.combine(DAY, datetime.min.time(), tzinfo=UTC)
    for key, cost, status in ((first, "1", 502), (second, "2", 200), (kept, "4", 200),
                              (None, "8", 404)):
        log(start + timedelta(hours=3), tenant, key, inp=10, out=5, cost=cost, latency=120,
            status=status, code={502: "upstream_error", 404: "model_not_found"}.get(status, ""))
    rollups.rollup_day(DAY, now=start + timedelta(days=1))
    rollups.rollup_hours(start, start + timedelta(hours=23), now=start + timedelta(days=1))

    first.delete()
    second.delete()

    rows = UsageLog.objects.filter(tenant=tenant)
    want = expected(rows, lambda r: (r.key_id, r.model))
    assert stored(UsageRollup, ("key_id", "model"), date=DAY) == want
    assert want[(None, "gpt-5")]["cost"] == Decimal("11")
    assert (want[(None, "gpt-5")]["upstream_errors"], want[(None, "gpt-5")]["client_errors"]) \
        == (1, 1)  # the first key's error joined the key-less row's
    hourly = UsageRollupHourly.objects.filter(tenant=tenant, key__isnull=True).get()
    assert (hourly.requests, hourly.cost, hourly.upstream_errors) == (3, Decimal("11"), 1)
    # A re-roll of the day from the raw rows (whose key was emptied too) changes nothing.
    rollups.rollup_day(DAY, now=start + timedelta(days=2))
    assert stored(UsageRollup, ("key_id", "model"), date=DAY) == want
