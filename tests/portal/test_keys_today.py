"""The Keys page's figures of today (portal.selectors.keys.fill_figures): the hourly rollups
of the hours they hold, the hour not over yet up to the minute task's cutoff, and only the
raw rows after that (billing.rollups.hourly_sources, read_settled). Every case is checked
against the raw rows counted here; a tampered rollup row shows where the rollups are read,
and where they must not be."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db.models import F

from billing import rollups
from billing.models import RollupState, UsageLog, UsageRollupHourly
from keys.models import ApiKey, Tenant
from keys.services import key_create, tenant_get_or_create
from portal.selectors.keys import KeyRow, fill_figures
from tests.portal.rollup_race import rollup_after_first_look

pytestmark = pytest.mark.django_db
_ids = itertools.count(1)
NOW = datetime(2025, 6, 15, 14, 30, tzinfo=UTC)  # TIME_ZONE is UTC in the tests


def at(hhmmss: str, day: int = 15) -> datetime:
    return datetime.fromisoformat(f"2025-06-{day:02d}T{hhmmss}").replace(tzinfo=UTC)


@pytest.fixture
def keys() -> tuple[Tenant, ApiKey, ApiKey]:
    tenant = tenant_get_or_create(name="acme")[0]
    return (tenant, key_create(tenant=tenant, name="busy").key,
            key_create(tenant=tenant, name="quiet").key)


def log(when: datetime, tenant: Tenant, key: ApiKey, cost: str, status: int = 200) -> None:
    UsageLog.objects.create(created_at=when, request_id=f"kt-{next(_ids)}", tenant=tenant,
                            key=key, endpoint="chat", model="gpt-5", status_code=status,
                            cost=Decimal(cost), latency_ms=100)


def some_rows(tenant: Tenant, busy: ApiKey, quiet: ApiKey) -> None:
    """Yesterday's last row (never today's), rows early today, in the hour before, in the
    current hour before the minute rollup's cutoff (14:25 at NOW) and after it."""
    log(at("23:59:59", day=14), tenant, busy, "9")
    log(at("00:00:00"), tenant, busy, "0.10")
    log(at("03:15:00"), tenant, quiet, "0.20", status=500)
    log(at("13:30:00"), tenant, busy, "0.30")
    log(at("14:05:00"), tenant, busy, "0.40")
    log(at("14:24:59"), tenant, quiet, "0.50")
    log(at("14:25:00"), tenant, busy, "0.60")  # exactly the cutoff: raw
    log(at("14:29:00"), tenant, busy, "0.70")


def raw_today(key: ApiKey) -> tuple[int, Decimal]:
    rows = [r.cost for r in UsageLog.objects.filter(key=key, created_at__gte=at("00:00:00"))]
    return len(rows), sum(rows, Decimal(0))


def figures(*keys: ApiKey) -> list[tuple[int, Decimal]]:
    rows = [KeyRow(key=k) for k in keys]
    fill_figures(rows, now=NOW)
    return [(r.today.requests, r.today.cost) for r in rows]


def tamper(hour: datetime, key: ApiKey) -> None:
    """Add 1000 requests to the key's hourly rollup row of ``hour``."""
    assert UsageRollupHourly.objects.filter(hour=hour, key=key).update(
        requests=F("requests") + 1000) == 1


def test_without_rollups_today_is_read_raw(keys):
    tenant, busy, quiet = keys
    some_rows(tenant, busy, quiet)
    assert raw_today(busy) == (5, Decimal("2.10")) and raw_today(quiet) == (2, Decimal("0.70"))
    # Rollup rows with no state saying what they hold are not read.
    rollups.rollup_recent_hours(NOW)
    RollupState.objects.all().delete()
    tamper(at("13:00:00"), busy)
    assert figures(busy, quiet) == [raw_today(busy), raw_today(quiet)]


def test_rolled_hours_and_the_partial_hour_are_read_from_their_rollups(keys):
    tenant, busy, quiet = keys
    some_rows(tenant, busy, quiet)
    rollups.rollup_recent_hours(NOW)  # yesterday and today to 14:25, partial hour 14:00
    assert rollups.partial_hour() == (at("14:00:00"), at("14:25:00"))
    assert figures(busy, quiet) == [raw_today(busy), raw_today(quiet)]
    # Both the hours rolled whole and the partial hour are read from their rollup rows:
    tamper(at("13:00:00"), busy)
    tamper(at("14:00:00"), busy)
    assert figures(busy)[0][0] == raw_today(busy)[0] + 2000
    # ... and yesterday's are not, nor a row after the cutoff twice.
    tamper(at("23:00:00", day=14), busy)
    assert figures(busy)[0][0] == raw_today(busy)[0] + 2000


def test_a_rollup_committed_between_the_extent_reads_counts_no_row_twice(keys, monkeypatch):
    tenant, busy, quiet = keys
    some_rows(tenant, busy, quiet)
    rollups.rollup_recent_hours(NOW)  # the current hour up to 14:25
    seen = rollup_after_first_look(monkeypatch, NOW + timedelta(minutes=3))  # to 14:28
    assert figures(busy, quiet) == [raw_today(busy), raw_today(quiet)]
    assert [extent[1].minute for extent in seen] == [25, 28, 28, 28]  # read twice


def test_a_day_starting_inside_an_hour_reads_that_part_raw(keys, settings):
    """A half-hour time zone: the local day starts at 18:30 UTC, inside an hour whose
    rollup also holds the day before's rows."""
    tenant, busy, quiet = keys
    settings.TIME_ZONE = "Asia/Kolkata"  # UTC+5:30: 15 June starts at 14 June 18:30 UTC
    log(at("18:10:00", day=14), tenant, busy, "5")  # 14 June, local
    log(at("18:40:00", day=14), tenant, busy, "0.25")  # 15 June, local
    log(at("20:00:00", day=14), tenant, busy, "0.50")
    log(at("14:20:00"), tenant, busy, "0.75")
    rollups.rollup_recent_hours(NOW)
    tamper(at("20:00:00", day=14), busy)  # a whole hour of the local day: read
    got = figures(busy)[0]
    assert got == (3 + 1000, Decimal("1.50"))
