"""The operations overview's recent hours (the previous UTC hour and the current one so far)
read from the per-tenant hourly rollups plus only the raw rows they do not cover: whatever
the rollups' state (none, the previous hour rolled in part or whole, the current hour rolled
in part), and when the minute rollup commits while the overview reads, its figures equal the
raw rows of the window counted here in Python (errors by class and top tenants included).
The rollups are run by calling them directly, so deterministically; a tampered rollup row
shows where the overview must read it and does not where it must not."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db.models import F

from billing import rollups
from billing.models import RollupState, UsageLog, UsageRollupTenantHourly
from keys.models import Tenant
from keys.services import tenant_get_or_create
from portal.selectors import overview
from portal.selectors.overview import Window, recent_hours
from tests.portal.rollup_race import rollup_after_first_look

pytestmark = pytest.mark.django_db
_ids = itertools.count(1)
NOW = datetime(2025, 6, 15, 14, 30, tzinfo=UTC)  # TIME_ZONE is UTC in the tests
PREVIOUS = datetime(2025, 6, 15, 13, 0, tzinfo=UTC)  # the window's start
CURRENT = PREVIOUS + timedelta(hours=1)
# The error codes the gateway writes when an upstream failed, whatever the status (written
# out here independently of billing.usagerow).
UPSTREAM = {"upstream_error", "upstream_unavailable", "upstream_timeout", "upstream_stream_cut",
            "upstream_bad_response", "upstream_auth_failed"}


def at(hhmmss: str) -> datetime:
    return datetime.fromisoformat(f"2025-06-15T{hhmmss}").replace(tzinfo=UTC)


def log(when: datetime, tenant: Tenant | None, cost: str = "0", status: int = 200,
        code: str = "", model: str = "gpt-5") -> None:
    UsageLog.objects.create(created_at=when, request_id=f"ops-{next(_ids)}", tenant=tenant,
                            endpoint="responses", model=model, status_code=status,
                            error_code=code, cost=Decimal(cost), latency_ms=100)


@pytest.fixture
def tenants() -> dict[str, Tenant]:
    return {name: tenant_get_or_create(name=name)[0]
            for name in ("acme", "globex", "initech", "umbrella")}


def some_rows(t: dict[str, Tenant]) -> None:
    """Rows before the window, in the previous hour (at its start, late in it), in the
    current hour before the minute rollup's cutoff (14:25 at NOW) and after it; every error
    class (an upstream code with a 4xx status is an upstream error, and so is a stream the
    upstream broke off after its 200); a tenant-less row; and
    tenants whose rank depends on adding the raw tail to the rollups (globex: 1.00 in the
    previous hour; initech: 0.60 there and 0.60 after the cutoff)."""
    log(at("12:59:59"), t["umbrella"], "50")  # before the window: never counted
    log(at("13:00:00"), t["acme"], "0.25")
    log(at("13:10:00"), t["globex"], "1.00", model="o3")
    log(at("13:20:00"), t["initech"], "0.60")
    log(at("13:30:00"), t["acme"], status=502, code="upstream_error")
    log(at("13:40:00"), t["acme"], status=429, code="rate_limit_exceeded")
    log(at("13:45:00"), t["acme"], status=200, code="upstream_stream_cut")
    log(at("13:58:30"), t["acme"], "0.05", status=500, code="internal_error")
    log(at("13:59:59"), None, "0.01", status=401, code="invalid_api_key")
    log(at("14:05:00"), t["acme"], "0.10", model="o3")
    log(at("14:20:00"), t["globex"], status=504, code="upstream_timeout")
    log(at("14:24:30"), t["acme"], "0.02", status=404, code="model_not_found")
    log(at("14:25:00"), t["acme"], "0.03")  # exactly the cutoff: raw
    log(at("14:26:00"), t["globex"], status=502, code="upstream_bad_response")
    log(at("14:27:00"), t["initech"], "0.60", status=429, code="upstream_unavailable")
    log(at("14:29:00"), t["umbrella"], "0.01", status=503, code="upstream_unavailable")


def raw_window() -> dict[str, Any]:
    """The window's figures from its raw rows, counted here independently of the overview."""
    got: dict[str, Any] = dict.fromkeys(("requests", "errors", "client_errors",
                                         "server_errors", "upstream_errors"), 0)
    got["spend"] = Decimal(0)
    per_tenant: dict[int, list[Any]] = {}
    for r in UsageLog.objects.filter(created_at__gte=PREVIOUS).select_related("tenant"):
        upstream = r.error_code in UPSTREAM
        got["requests"] += 1
        got["errors"] += r.status_code >= 400 or upstream
        got["client_errors"] += 400 <= r.status_code < 500 and not upstream
        got["server_errors"] += r.status_code >= 500 and not upstream
        got["upstream_errors"] += upstream
        got["spend"] += r.cost
        if r.tenant is not None:
            t = per_tenant.setdefault(r.tenant_id, [r.tenant.name, 0, Decimal(0)])
            t[1] += 1
            t[2] += r.cost
    got["top"] = sorted(per_tenant.values(), key=lambda t: (-t[2], -t[1], t[0]))[:5]
    return got


def figures(window: Window) -> dict[str, Any]:
    return {"requests": window.requests, "errors": window.errors,
            "client_errors": window.client_errors, "server_errors": window.server_errors,
            "upstream_errors": window.upstream_errors, "spend": window.spend,
            "top": [[t["tenant__name"], t["requests"], t["spend"]] for t in window.top_tenants]}


def tamper(hour: datetime) -> None:
    """Add 1000 requests to one per-tenant rollup row of ``hour``."""
    row = UsageRollupTenantHourly.objects.filter(hour=hour).order_by("pk").first()
    assert row is not None
    UsageRollupTenantHourly.objects.filter(pk=row.pk).update(requests=F("requests") + 1000)


def test_the_raw_rows_of_the_window_are_what_this_test_expects(tenants):
    some_rows(tenants)
    want = raw_window()
    assert (want["requests"], want["errors"], want["client_errors"], want["server_errors"],
            want["upstream_errors"]) == (15, 10, 3, 1, 6)
    assert want["spend"] == Decimal("2.67")
    # initech is first only with its raw tail added to the previous hour's rollup.
    assert [t[0] for t in want["top"]] == ["initech", "globex", "acme", "umbrella"]


@pytest.mark.parametrize("state", ["none", "watermark-after"])
def test_without_rollup_state_the_window_is_read_raw(tenants, state):
    """No Celery beat: no watermark, no partial hour (or a watermark that begins after the
    previous hour: the task caught up after a long stop). Rollup rows that no state vouches
    for (here made by hand) are not read."""
    some_rows(tenants)
    for hour in (PREVIOUS, CURRENT):
        UsageRollupTenantHourly.objects.create(hour=hour, tenant=tenants["acme"],
                                               model="gpt-5", requests=1000, errors=1000,
                                               upstream_errors=1000, cost=Decimal("1000"))
    if state == "watermark-after":
        RollupState.objects.create(name="hourly", since=CURRENT, through=CURRENT)
    assert not RollupState.objects.exclude(name="hourly").exists()
    window = recent_hours(NOW)
    assert figures(window) == raw_window()
    assert window.since == PREVIOUS


def test_the_previous_hour_whole_and_the_current_one_in_part_from_the_rollups(tenants):
    """The minute task ran at NOW: the previous hour is rolled whole (the watermark passed
    it), the current one up to the cutoff (14:25); the rows from the cutoff on are read raw,
    none twice. Both hours' rollup rows are read (a tampered row shows)."""
    some_rows(tenants)
    rollups.rollup_recent_hours(NOW)
    assert rollups.partial_hour() == (CURRENT, at("14:25:00"))
    assert RollupState.objects.get(name="hourly").through == CURRENT
    want = raw_window()
    assert figures(recent_hours(NOW)) == want
    # A row written after the rollup, after its cutoff: read raw, it shows at once.
    log(at("14:29:30"), tenants["globex"], "0.01", status=500, code="internal_error")
    assert figures(recent_hours(NOW)) == raw_window()
    for hour in (PREVIOUS, CURRENT):
        before = recent_hours(NOW).requests
        tamper(hour)
        assert recent_hours(NOW).requests == before + 1000, hour


def test_the_previous_hour_rolled_in_part_is_read_raw_after_its_extent(tenants):
    """The minute task last ran at 14:03: the previous hour is rolled up to 13:58 only (the
    partial hour is the previous one, the watermark is before it). Its rollup is read up to
    there, everything after raw (13:58:30 and 13:59:59 among it)."""
    some_rows(tenants)
    rollups.rollup_recent_hours(at("14:03:00"))
    assert rollups.partial_hour() == (PREVIOUS, at("13:58:00"))
    assert RollupState.objects.get(name="hourly").through == PREVIOUS
    assert figures(recent_hours(NOW)) == raw_window()
    before = recent_hours(NOW).requests
    tamper(PREVIOUS)
    assert recent_hours(NOW).requests == before + 1000


def test_the_previous_hour_rolled_whole_by_its_extent_alone(tenants):
    """No watermark (the hour was rolled by hand), but the partial hour's extent says the
    previous hour was rolled whole: read from its rollup, the current hour raw."""
    some_rows(tenants)
    rollups.rollup_hour(PREVIOUS, now=at("14:03:00"))
    rollups.rollup_hour(PREVIOUS, now=NOW)
    assert rollups.partial_hour() == (PREVIOUS, CURRENT)
    assert not RollupState.objects.filter(name="hourly").exists()
    assert figures(recent_hours(NOW)) == raw_window()
    before = recent_hours(NOW).requests
    tamper(PREVIOUS)
    assert recent_hours(NOW).requests == before + 1000


def test_a_rollup_committed_between_the_extent_reads_counts_no_row_twice(tenants,
                                                                         monkeypatch):
    """The minute task moves the partial hour's cutoff from 14:25 to 14:28 between the
    overview's first read of it and its second: read with the old cutoff, the row at 14:27
    would be in the rollup and in the raw rows. The overview sees the move and reads again."""
    some_rows(tenants)
    rollups.rollup_recent_hours(NOW)  # the current hour up to 14:25
    seen = rollup_after_first_look(monkeypatch, NOW + timedelta(minutes=3))  # to 14:28
    assert figures(recent_hours(NOW)) == raw_window()
    assert [extent[1].minute for extent in seen] == [25, 28, 28, 28]  # read twice


def test_an_extent_that_keeps_moving_leaves_the_current_hour_to_the_raw_rows(tenants,
                                                                            monkeypatch):
    """After PARTIAL_TRIES moves the current hour is read raw (the previous one still from
    its rollup: the watermark vouches for it). Here the extent only seems to move: each read
    answers another one, every one but the real (14:25) off by a minute, and figures read
    with 14:24 would count the row at 14:24:30 twice."""
    some_rows(tenants)
    rollups.rollup_recent_hours(NOW)
    extents = itertools.cycle([(CURRENT, at("14:24:00")), (CURRENT, at("14:25:00"))])
    calls = []

    def moving() -> Any:
        calls.append(1)
        return next(extents)

    monkeypatch.setattr(rollups, "partial_hour", moving)
    window = recent_hours(NOW)
    assert len(calls) == 2 * overview.PARTIAL_TRIES
    assert figures(window) == raw_window()
    monkeypatch.setattr(rollups, "partial_hour", lambda: None)
    tamper(PREVIOUS)
    assert recent_hours(NOW).requests == window.requests + 1000


def test_today_counts_the_errors_by_class_from_the_daily_rollups(tenants, monkeypatch):
    some_rows(tenants)
    rollups.rollup_day(NOW.date(), now=NOW)
    monkeypatch.setattr(overview, "local_today", lambda: NOW.date())
    window = overview.today()
    assert window.classes_known
    assert (window.requests, window.errors, window.client_errors, window.server_errors,
            window.upstream_errors) == (16, 10, 3, 1, 6)
    assert window.spend == Decimal("52.67")
    assert [t["tenant__name"] for t in window.top_tenants] == [
        "umbrella", "initech", "globex", "acme"]
