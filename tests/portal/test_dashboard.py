"""The dashboard: hourly/daily rollups (with latency histograms), the figures the dashboard
shows for a known set of rows (from rollups, from raw rows, and mixed), per-key usage,
cross-tenant isolation, and the live WebSocket (a real /v1 request through the gateway
process reaches the tenant's socket, and no other tenant's)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Sum
from django.test import Client

from billing import rollups
from billing.models import (
    LATENCY_BOUNDS_MS,
    LATENCY_FIELDS,
    TTFB_FIELDS,
    RollupState,
    UsageLog,
    UsageRollup,
    UsageRollupHourly,
    UsageRollupTenantHourly,
)
from billing.usage import UsageEvent, write_events
from keys.models import ApiKey, Membership, Tenant
from keys.services import key_create, tenant_get_or_create
from portal import live
from portal.selectors.dashboard import overview
from portal.tenancy import SESSION_KEY
from tests.conftest import wait_for_usage
from tests.portal.rollup_race import rollup_after_first_look

pytestmark = pytest.mark.django_db(transaction=True)
_ids = itertools.count(1)
NOW = datetime(2025, 6, 15, 14, 30, tzinfo=UTC)  # TIME_ZONE is UTC in the tests


def at(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def log(when: datetime, tenant: Tenant | None, key: ApiKey | None, model: str = "gpt-5", *,
        status: int = 200, inp: int = 0, cached: int = 0, out: int = 0, reasoning: int = 0,
        cost: str = "0", latency: int = 100, ttfb: int | None = None) -> UsageLog:
    return UsageLog.objects.create(
        created_at=when, request_id=f"dash-{next(_ids)}", key=key,
        key_prefix=key.prefix if key else "", tenant=tenant, endpoint="responses",
        model=model, status_code=status, input_tokens=inp, cached_tokens=cached,
        output_tokens=out, reasoning_tokens=reasoning, cost=Decimal(cost),
        latency_ms=latency, ttfb_ms=ttfb)


def member(tenant: Tenant, email: str, role: str = "member") -> tuple[Client, Any]:
    user = get_user_model().objects.create_user(username=email, email=email, password="pw")
    Membership.objects.create(tenant=tenant, user=user, role=role)
    client = Client()
    client.force_login(user)
    return client, user


def bucket(ms: int) -> int:
    return next((i for i, b in enumerate(LATENCY_BOUNDS_MS) if ms < b), len(LATENCY_BOUNDS_MS))


@pytest.fixture
def world() -> dict[str, Any]:
    acme = tenant_get_or_create(name="acme")[0]
    globex = tenant_get_or_create(name="globex")[0]
    return {"acme": acme, "globex": globex,
            "a1": key_create(tenant=acme, name="a1").key,
            "a2": key_create(tenant=acme, name="a2").key,
            "g1": key_create(tenant=globex, name="g1").key}


# --- rollups ------------------------------------------------------------------------------

def raw_groups(start: datetime, end: datetime) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The expected rollup rows, computed independently of billing.rollups."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in UsageLog.objects.filter(created_at__gte=start, created_at__lt=end):
        g = out.setdefault((r.tenant_id, r.key_id, r.model), {
            "requests": 0, "errors": 0, "input_tokens": 0, "cached_tokens": 0,
            "output_tokens": 0, "reasoning_tokens": 0, "cost": Decimal(0),
            "lat": [0] * len(LATENCY_FIELDS), "ttfb": [0] * len(TTFB_FIELDS)})
        g["requests"] += 1
        g["errors"] += r.status_code >= 400
        for name in ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens",
                     "cost"):
            g[name] += getattr(r, name)
        g["lat"][bucket(r.latency_ms)] += 1
        if r.ttfb_ms is not None:
            g["ttfb"][bucket(r.ttfb_ms)] += 1
    return out


def stored(model: Any, **period: Any) -> dict[tuple[Any, ...], dict[str, Any]]:
    return {(r.tenant_id, r.key_id, r.model): {
        "requests": r.requests, "errors": r.errors, "input_tokens": r.input_tokens,
        "cached_tokens": r.cached_tokens, "output_tokens": r.output_tokens,
        "reasoning_tokens": r.reasoning_tokens, "cost": r.cost,
        "lat": [getattr(r, f) for f in LATENCY_FIELDS],
        "ttfb": [getattr(r, f) for f in TTFB_FIELDS]} for r in model.objects.filter(**period)}


def test_hourly_and_daily_rollups_equal_the_raw_rows_and_are_idempotent(world):
    w = world
    rows = [
        ("2025-06-02T00:00:00", w["acme"], w["a1"], "gpt-5", 200, 10, 2, 5, 1, "0.01", 20, 5),
        ("2025-06-02T00:59:59", w["acme"], w["a1"], "gpt-5", 500, 0, 0, 0, 0, "0", 130000, None),
        ("2025-06-02T00:30:00", w["acme"], w["a2"], "o3", 200, 7, 0, 9, 4, "0.5", 1500, 900),
        ("2025-06-02T01:10:00", w["acme"], w["a1"], "gpt-5", 429, 0, 0, 0, 0, "0", 3, None),
        ("2025-06-02T01:20:00", w["globex"], w["g1"], "gpt-5", 200, 100, 50, 20, 0, "1.25",
         240, 99),
        ("2025-06-02T23:59:59", w["acme"], None, "", 401, 0, 0, 0, 0, "0", 1, None),
        ("2025-06-03T00:00:00", w["acme"], w["a1"], "gpt-5", 200, 1, 0, 1, 0, "0.001", 50, 25),
    ]
    for when, tenant, key, model, status, inp, cached, out, rsn, cost, lat, ttfb in rows:
        log(at(when), tenant, key, model, status=status, inp=inp, cached=cached, out=out,
            reasoning=rsn, cost=cost, latency=lat, ttfb=ttfb)

    day = date(2025, 6, 2)
    assert rollups.rollup_day(day) == 4
    for h in range(24):
        rollups.rollup_hour(at(f"2025-06-02T{h:02d}:00:00"))
    assert stored(UsageRollup, date=day) == raw_groups(at("2025-06-02T00:00"),
                                                       at("2025-06-03T00:00"))
    for h in (0, 1, 23):
        start = at(f"2025-06-02T{h:02d}:00:00")
        assert stored(UsageRollupHourly, hour=start) == raw_groups(
            start, start + timedelta(hours=1)), h
    # The hours sum to the day, histograms included.
    hourly = UsageRollupHourly.objects.filter(hour__date=day).aggregate(
        **{f: Sum(f) for f in ("requests", "errors", "cost", *LATENCY_FIELDS)})
    daily = UsageRollup.objects.filter(date=day).aggregate(
        **{f: Sum(f) for f in ("requests", "errors", "cost", *LATENCY_FIELDS)})
    assert hourly == daily and daily["requests"] == 6
    assert sum(daily[f] for f in LATENCY_FIELDS) == 6

    # Idempotent: a second run writes nothing (same ids, same values).
    before = (list(UsageRollup.objects.order_by("id").values()),
              list(UsageRollupHourly.objects.order_by("id").values()))
    assert rollups.rollup_day(day) == 4
    assert rollups.rollup_hour(at("2025-06-02T00:10:00")) == 2
    assert (list(UsageRollup.objects.order_by("id").values()),
            list(UsageRollupHourly.objects.order_by("id").values())) == before

    # Rows added and removed since: the next run follows them.
    UsageLog.objects.filter(model="o3").delete()
    log(at("2025-06-02T00:45:00"), w["acme"], w["a1"], status=200, cost="0.02", latency=70)
    rollups.rollup_hour(at("2025-06-02T00:00:00"))
    rollups.rollup_day(day)
    start = at("2025-06-02T00:00:00")
    assert stored(UsageRollupHourly, hour=start) == raw_groups(start, start + timedelta(hours=1))
    assert stored(UsageRollup, date=day) == raw_groups(start, start + timedelta(days=1))
    assert not UsageRollupHourly.objects.filter(model="o3").exists()


def test_the_scheduled_rollups_catch_up_and_keep_a_watermark(world):
    w = world
    log(NOW - timedelta(hours=3), w["acme"], w["a1"], cost="1")
    log(NOW - timedelta(days=2), w["acme"], w["a1"], cost="2")
    done = rollups.rollup_recent_hours(NOW)
    assert len(done) == 24 + 15  # yesterday's hours and today's up to 14:00
    state = RollupState.objects.get(name="hourly")
    assert state.through == at("2025-06-15T14:00:00")
    assert rollups.rollup_recent_hours(NOW + timedelta(hours=2)).keys() == {
        (at("2025-06-15T14:00:00") + timedelta(hours=i)).isoformat() for i in range(3)}
    days = rollups.rollup_recent_days(NOW)
    assert len(days) == rollups.CATCH_UP_DAYS + 1
    assert RollupState.objects.get(name="daily").through == at("2025-06-15T00:00:00")
    assert len(rollups.rollup_recent_days(NOW)) == 2


def test_median_is_exact_to_the_bucket():
    assert rollups.median_ms([0] * len(LATENCY_FIELDS)) is None
    one = [0] * len(LATENCY_FIELDS)
    one[bucket(120)] = 1  # 100..150
    assert 100 <= rollups.median_ms(one) <= 150
    spread = [0] * len(LATENCY_FIELDS)
    for ms in (10, 110, 120, 130, 5000):
        spread[bucket(ms)] += 1
    assert 100 <= rollups.median_ms(spread) <= 150
    top = [0] * len(LATENCY_FIELDS)
    top[-1] = 3
    assert rollups.median_ms(top) == LATENCY_BOUNDS_MS[-1]


# --- the dashboard's figures -------------------------------------------------------------

def known_rows(w: dict[str, Any]) -> None:
    acme, a1, a2 = w["acme"], w["a1"], w["a2"]
    log(at("2025-06-15T09:10:00"), acme, a1, inp=100, cached=10, out=50, reasoning=5,
        cost="0.10", latency=120, ttfb=40)                             # today, earlier hour
    log(at("2025-06-15T14:05:00"), acme, a2, "o3", status=500, cost="0", latency=900)
    log(at("2025-06-15T14:20:00"), acme, a1, inp=10, out=10, cost="0.02", latency=130,
        ttfb=60)                                                       # today, current hour
    log(at("2025-06-10T12:00:00"), acme, a1, inp=1000, out=500, cost="1.00", latency=2000)
    log(at("2025-05-20T08:00:00"), acme, a2, "o3", inp=5, out=5, cost="0.50", latency=300)
    log(at("2025-05-01T08:00:00"), acme, a2, cost="9.00")            # out of the 30 days
    # Another tenant's rows: never counted for acme.
    log(at("2025-06-15T14:10:00"), w["globex"], w["g1"], inp=7, cost="5.00")
    log(at("2025-06-15T10:10:00"), w["globex"], w["g1"], inp=7, cost="5.00")


def check_known_figures(ov: Any, w: dict[str, Any]) -> None:
    t = ov.today_totals
    assert (t.requests, t.errors, t.input_tokens, t.cached_tokens, t.output_tokens,
            t.reasoning_tokens, t.cost) == (3, 1, 110, 10, 60, 5, Decimal("0.12"))
    assert t.error_rate == pytest.approx(1 / 3)
    assert 100 <= t.median_latency_ms <= 150
    assert 25 <= t.median_ttfb_ms <= 100
    assert ov.month_totals.cost == Decimal("1.12") and ov.month_totals.requests == 4
    assert ov.days_totals.requests == 5 and ov.days_totals.cost == Decimal("1.62")
    assert len(ov.days) == 30 and ov.days[-1] == NOW.date()
    by_day = {d.isoformat(): (x.requests, x.cost) for d, x in ov.by_day.items() if x.requests}
    assert by_day == {"2025-05-20": (1, Decimal("0.50")), "2025-06-10": (1, Decimal("1.00")),
                      "2025-06-15": (3, Decimal("0.12"))}
    by_hour = {h.hour: (x.requests, x.cost) for h, x in ov.by_hour.items() if x.requests}
    assert by_hour == {9: (1, Decimal("0.10")), 14: (2, Decimal("0.02"))}
    assert len(ov.by_hour) == 15  # 00:00 .. 14:00
    assert {m: (x.requests, x.cost) for m, x in ov.by_model.items()} == {
        "gpt-5": (3, Decimal("1.12")), "o3": (2, Decimal("0.50"))}
    assert {k: (x.requests, x.cost) for k, x in ov.by_key.items()} == {
        w["a1"].pk: (3, Decimal("1.12")), w["a2"].pk: (2, Decimal("0.50"))}
    assert [k["id"] for k in ov.top_keys()] == [w["a1"].pk, w["a2"].pk]


@pytest.mark.parametrize("rolled", ["none", "all", "daily-only"])
def test_dashboard_figures_for_a_known_set_of_rows(world, rolled):
    w = world
    known_rows(w)
    if rolled in ("all", "daily-only"):
        rollups.rollup_recent_days(NOW)
    if rolled == "all":
        rollups.rollup_recent_hours(NOW)
    check_known_figures(overview(w["acme"], now=NOW), w)


def test_dashboard_does_not_count_rows_twice_once_the_current_hour_is_rolled(world):
    w = world
    known_rows(w)
    rollups.rollup_recent_days(NOW)
    rollups.rollup_recent_hours(NOW)
    rollups.rollup_hour(NOW)  # the current hour has rollups too: still read raw
    check_known_figures(overview(w["acme"], now=NOW), w)


def test_the_current_hour_is_read_from_its_rollup_up_to_the_cutoff_and_raw_after(world):
    """BILLING_ROLLUP_SETTLE_SECONDS (300) before the minute task ran, its rollup of the
    hour stops; the dashboard reads the rows after that raw. A row written later than that
    after its request started shows from the next rollup on."""
    w = world
    known_rows(w)  # 14:05 and 14:20 in the current hour (NOW is 14:30)
    rollups.rollup_recent_days(NOW)
    rollups.rollup_recent_hours(NOW)
    hour = at("2025-06-15T14:00:00")
    assert rollups.partial_hour() == (hour, NOW - timedelta(seconds=300))
    assert RollupState.objects.get(name="hourly").through == hour
    assert UsageRollupTenantHourly.objects.filter(tenant=w["acme"], hour=hour).aggregate(
        n=Sum("requests"))["n"] == 2
    log(at("2025-06-15T14:27:00"), w["acme"], w["a1"], cost="0.5")  # after the cutoff: raw
    figures = overview(w["acme"], now=NOW)
    assert (figures.today_totals.requests, figures.today_totals.cost) == (4, Decimal("0.62"))
    # A request that started at 14:10 and was written only now: in neither part, until the
    # next minute's rollup takes it.
    log(at("2025-06-15T14:10:00"), w["acme"], w["a2"], cost="1")
    assert overview(w["acme"], now=NOW).today_totals.requests == 4
    rollups.rollup_recent_hours(NOW + timedelta(minutes=1))
    later = overview(w["acme"], now=NOW + timedelta(minutes=1))
    assert (later.today_totals.requests, later.today_totals.cost) == (5, Decimal("1.62"))
    assert {k: x.requests for k, x in later.by_key.items()} == {w["a1"].pk: 4, w["a2"].pk: 3}
    # Once the hour is over by the cutoff, it is rolled whole and the watermark passes it.
    rollups.rollup_recent_hours(at("2025-06-15T15:06:00"))
    assert RollupState.objects.get(name="hourly").through == at("2025-06-15T15:00:00")
    assert rollups.partial_hour() == (at("2025-06-15T15:00:00"), at("2025-06-15T15:01:00"))


def test_a_rollup_committed_while_the_dashboard_reads_counts_no_row_twice(world, monkeypatch):
    """The minute task moves the partial hour's cutoff between the dashboard's read of it
    and its read of the rollup rows: read with the old cutoff, the row between the two
    cutoffs would be in the rollup and in the raw rows; the dashboard sees the move and
    reads again."""
    w = world
    known_rows(w)
    rollups.rollup_recent_days(NOW)
    rollups.rollup_recent_hours(NOW)  # the current hour up to 14:25
    log(at("2025-06-15T14:27:00"), w["acme"], w["a1"], cost="0.5")
    real = rollups.partial_hour
    seen = rollup_after_first_look(monkeypatch, NOW + timedelta(minutes=3))  # to 14:28
    figures = overview(w["acme"], now=NOW)
    assert (figures.today_totals.requests, figures.today_totals.cost) == (4, Decimal("0.62"))
    assert {h.hour: x.requests for h, x in figures.by_hour.items() if x.requests} == {
        9: 1, 14: 3}
    assert [extent[1].minute for extent in seen] == [25, 28, 28, 28]  # read twice
    # The key ranking is read when the page asks for it: a rollup committed before that is
    # seen, and the ranking read without the partial hour's rollup.
    monkeypatch.setattr(rollups, "partial_hour", real)
    log(at("2025-06-15T14:29:00"), w["acme"], w["a1"], cost="0.25")  # after 14:28: raw
    rollups.rollup_recent_hours(NOW + timedelta(minutes=5))  # now up to 14:30, with it
    assert rollups.partial_hour()[1] == NOW
    assert {k: (x.requests, x.cost) for k, x in figures.by_key.items()} == {
        w["a1"].pk: (5, Decimal("1.87")), w["a2"].pk: (2, Decimal("0.50"))}
    assert [k["id"] for k in figures.top_keys()] == [w["a1"].pk, w["a2"].pk]


def test_the_dashboard_page_shows_the_figures_and_charts(world):
    w = world
    now = datetime.now(UTC)
    log(now - timedelta(seconds=5), w["acme"], w["a1"], inp=1234, out=10, cost="0.5",
        latency=120)
    log(now - timedelta(seconds=5), w["acme"], w["a1"], status=500, latency=80)
    client, _ = member(w["acme"], "a@example.com")
    page = client.get("/portal/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-kpi="requests">2<' in html
    assert "1,234" in html  # localised (en: thousands separator)
    assert "50.0 %" in html
    assert 'id="dashboard-data"' in html and "chart-4.6.1.umd.min.js" in html
    assert "<script>" not in html and "style=" not in html  # CSP: no inline script/style
    data = json.loads(html.split('id="dashboard-data" type="application/json">')[1]
                      .split("</script>")[0])
    assert data["today"]["requests"] == 2 and data["keys"][0]["name"] == "a1"
    assert sum(data["day_requests"]) == 2 and sum(data["hour_requests"]) == 2


def test_a_tenant_with_no_traffic_gets_the_empty_state(world):
    client, _ = member(world["acme"], "a@example.com")
    page = client.get("/portal/")
    assert page.status_code == 200 and b"data-empty-state" in page.content
    assert b"No requests in the last 30 days yet." in page.content


def test_the_dashboard_is_translated(world):
    client, _ = member(world["acme"], "a@example.com")
    page = client.get("/portal/", HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert page.status_code == 200 and b'lang="zh-hans"' in page.content


def test_available_is_balance_minus_reserved_when_the_account_is_loaded(world, monkeypatch):
    from keys import limits

    acme = world["acme"]
    Tenant.objects.filter(pk=acme.pk).update(balance=Decimal("10"))
    client, _ = member(acme, "a@example.com")
    html = client.get("/portal/").content.decode()
    assert 'data-raw="10.000000"' in html or 'data-raw="10"' in html

    class Loaded:
        def available(self, kind: str, ident: int) -> int:
            assert (kind, ident) == ("tenant", acme.pk)
            return 7_250_000

    monkeypatch.setattr(limits, "limiter", lambda: Loaded())
    html = client.get("/portal/").content.decode()
    assert 'data-raw="7.250000"' in html


# --- cross-tenant --------------------------------------------------------------------------

def test_tenant_b_never_sees_tenant_a(world):
    w = world
    log(datetime.now(UTC) - timedelta(seconds=5), w["acme"], w["a1"], inp=999_999,
        cost="3.21")
    rollups.rollup_recent_days()
    rollups.rollup_recent_hours()
    b, _ = member(w["globex"], "b@example.com")
    page = b.get("/portal/").content.decode()
    assert "999,999" not in page and "3.21" not in page and w["a1"].prefix not in page
    assert "data-empty-state" in page
    assert overview(w["globex"]).days_totals.requests == 0
    # A's key usage, by id: 404 for B (page and htmx partial); A sees it.
    url = f"/portal/dashboard/keys/{w['a1'].pk}/"
    assert b.get(url).status_code == 404
    assert b.get(url, HTTP_HX_REQUEST="true").status_code == 404
    a, _ = member(w["acme"], "a@example.com")
    assert a.get(url).status_code == 200


def test_key_usage_counts_only_that_key(world):
    w = world
    now = datetime.now(UTC)
    log(now - timedelta(seconds=5), w["acme"], w["a1"], inp=11, cost="0.11")
    log(now - timedelta(seconds=5), w["acme"], w["a2"], inp=22, cost="0.22")
    a, _ = member(w["acme"], "a@example.com", role="member")
    page = a.get(f"/portal/dashboard/keys/{w['a2'].pk}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-kpi="requests">1<' in html and 'data-kpi="input_tokens">22<' in html
    partial = a.get(f"/portal/dashboard/keys/{w['a2'].pk}/", HTTP_HX_REQUEST="true")
    assert b"<html" not in partial.content and b"data-key-usage" in partial.content
    ov = overview(w["acme"], key=w["a2"])
    assert ov.today_totals.requests == 1 and ov.by_key == {}


def test_the_key_usage_template_refuses_a_key_of_another_tenant(world, rf):
    from django.template.loader import render_to_string

    w = world
    log(datetime.now(UTC), w["acme"], w["a1"], inp=5, cost="4.44")
    request = rf.get("/portal/keys/")
    request.tenant = w["globex"]
    html = render_to_string("portal/keys/_usage.html", {"key": w["a1"], "request": request})
    assert "4.44" not in html and "No usage to show." in html


# --- live ---------------------------------------------------------------------------------

def event(tenant: Tenant, key: ApiKey | None, **kw: Any) -> UsageEvent:
    defaults: dict[str, Any] = {"created_at": datetime.now(UTC),
                                "request_id": f"live-{next(_ids)}", "endpoint": "responses",
                                "status_code": 200, "tenant_id": tenant.pk,
                                "key_id": key.pk if key else None,
                                "key_prefix": key.prefix if key else "", "model": "gpt-5",
                                "cost": Decimal("0.5"), "input_tokens": 3, "latency_ms": 42}
    return UsageEvent(**{**defaults, **kw})


def test_one_message_per_tenant_per_batch(world):
    w = world
    batch = [event(w["acme"], w["a1"]), event(w["acme"], w["a2"], status_code=500),
             event(w["acme"], w["a1"], stream=True, error_code="upstream_stream_cut"),
             event(w["globex"], w["g1"]), event(w["acme"], None, tenant_id=None)]
    msgs = live.messages_for(batch)
    assert set(msgs) == {w["acme"].pk, w["globex"].pk}
    acme = msgs[w["acme"].pk]
    # The 500 and the stream cut after its 200: both errors, as the rollups count them.
    assert acme["count"] == 3 and acme["totals"]["errors"] == 2
    assert acme["totals"]["cost"] == "1.5"
    assert {r["key_prefix"] for r in acme["rows"]} == {w["a1"].prefix, w["a2"].prefix}
    assert "upstream_id" not in json.dumps(acme) and "credential" not in json.dumps(acme)


def test_publishing_never_breaks_usage_writing(world, monkeypatch):
    async def boom(*a: Any, **k: Any) -> None:
        raise RuntimeError("channel layer down")

    monkeypatch.setattr(live, "_send_all", boom)
    fresh = write_events([event(world["acme"], world["a1"])])
    assert len(fresh) == 1 and UsageLog.objects.filter(request_id=fresh[0].request_id).exists()


def session_cookie(user: Any, tenant: Tenant | None = None) -> str:
    client = Client()
    client.force_login(user)
    if tenant is not None:
        session = client.session
        session[SESSION_KEY] = tenant.pk
        session.save()
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def communicator(cookie: str | None) -> WebsocketCommunicator:
    from portal.asgi import application

    headers = [(b"origin", b"http://localhost"), (b"host", b"localhost")]
    if cookie:
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    return WebsocketCommunicator(application, "/ws/portal/live/", headers=headers)


async def _receive_usage(comm: WebsocketCommunicator, seconds: float) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        msg = await comm.receive_json_from(timeout=max(0.1, deadline - time.monotonic()))
        if msg.get("type") == "usage":
            return msg


def test_an_anonymous_socket_is_refused():
    async def run() -> None:
        comm = communicator(None)
        connected, _ = await comm.connect()
        assert not connected
        await comm.disconnect()

    async_to_sync(run)()


def test_a_socket_from_another_origin_is_refused(world):
    _, user = member(world["acme"], "a@example.com")
    cookie = session_cookie(user)

    async def run() -> None:
        from portal.asgi import application

        comm = WebsocketCommunicator(application, "/ws/portal/live/", headers=[
            (b"origin", b"https://evil.example"), (b"host", b"localhost"),
            (b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode())])
        connected, _ = await comm.connect()
        assert not connected
        await comm.disconnect()

    async_to_sync(run)()


def test_live_events_reach_only_their_tenant_in_process(world):
    """Through the channel layer in this process: the tenant chosen in the session decides
    the group; a user of two tenants hears the chosen one only."""
    w = world
    _, alice = member(w["acme"], "a@example.com")
    _, bob = member(w["globex"], "b@example.com")
    Membership.objects.create(tenant=w["globex"], user=alice)
    alice_acme = session_cookie(alice, w["acme"])
    bob_cookie = session_cookie(bob)

    async def run() -> None:
        a, b = communicator(alice_acme), communicator(bob_cookie)
        assert (await a.connect())[0] and (await b.connect())[0]
        assert (await a.receive_json_from())["tenant"] == w["acme"].pk
        assert (await b.receive_json_from())["tenant"] == w["globex"].pk
        await sync_to_async(live.publish_usage)([event(w["acme"], w["a1"])])
        got = await _receive_usage(a, 5)
        assert got["tenant"] == w["acme"].pk and got["rows"][0]["key_prefix"] == w["a1"].prefix
        assert await b.receive_nothing(0.5)
        await a.disconnect()
        await b.disconnect()

    async_to_sync(run)()


@pytest.mark.skipif(not settings.REDIS_URL, reason="the gateway process and this test share "
                    "events through the Redis channel layer")
def test_a_v1_request_reaches_its_tenants_socket_and_no_other(gateway, upstream, world):
    """End to end: a real /v1 request through the gateway process (daphne); its usage row
    is written there, and the event crosses the Redis channel layer to this process's
    socket of the key's tenant, while a user of another tenant hears nothing."""
    w = world
    created = key_create(tenant=w["acme"], name="live key")
    _, alice = member(w["acme"], "a@example.com")
    _, bob = member(w["globex"], "b@example.com")
    alice_cookie, bob_cookie = session_cookie(alice), session_cookie(bob)

    async def run() -> None:
        a, b = communicator(alice_cookie), communicator(bob_cookie)
        assert (await a.connect())[0] and (await b.connect())[0]
        await a.receive_json_from()
        await b.receive_json_from()
        await asyncio.sleep(0.3)  # the pub/sub subscription is in place
        async with httpx.AsyncClient(timeout=30) as http:
            resp = await http.post(gateway.base_url + "/responses", json={
                "model": "gpt-5", "input": "hello"},
                headers={"Authorization": f"Bearer {created.secret}"})
        assert resp.status_code == 200, resp.text
        request_id = resp.headers.get("x-request-id")
        got = await _receive_usage(a, 15)
        assert got["tenant"] == w["acme"].pk
        row = got["rows"][0]
        assert row["key_prefix"] == created.key.prefix and row["status"] == 200
        if request_id:
            assert row["request_id"] == request_id
        assert await b.receive_nothing(1.0)
        await a.disconnect()
        await b.disconnect()
        return row["request_id"]

    request_id = async_to_sync(run)()
    assert wait_for_usage(request_id).tenant_id == w["acme"].pk


def test_the_channel_layer_is_redis_with_redis():
    layer = get_channel_layer()
    if settings.REDIS_URL:
        assert type(layer).__name__ == "RedisPubSubChannelLayer"
    else:
        assert type(layer).__name__ == "InMemoryChannelLayer"
