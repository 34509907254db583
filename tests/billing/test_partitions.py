"""The usage log partitioned by month (PostgreSQL): the migration that moves the rows, the
task that creates partitions ahead and splits the default one, retention by dropping whole
partitions, and the writer's idempotence on the partitioned table."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connection
from django.db.models import Sum

from billing import partitions, rollups, tasks
from billing.models import RollupState, UsageLog, UsageRollupHourly, UsageRollupTenant
from billing.usage import write_events
from billing.usagerow import UsageEvent
from keys.models import ApiKey, Tenant
from keys.services import key_create, tenant_get_or_create
from tests.servers import fresh_database

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="partitions are PostgreSQL's")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def event(when: datetime, request_id: str, tenant: Tenant | None = None,
          key: ApiKey | None = None, cost: str = "0", inp: int = 0) -> UsageEvent:
    return UsageEvent(created_at=when, request_id=request_id, endpoint="chat",
                      status_code=200, tenant_id=tenant.pk if tenant else None,
                      key_id=key.pk if key else None, model="gpt-5", cost=Decimal(cost),
                      input_tokens=inp)


def rows_in(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT count(*) FROM "{table}"')
        return int(cursor.fetchone()[0])


def names() -> list[str]:
    return [p.name for p in partitions.partitions()]


@pytest.fixture
def own_partitions() -> Iterator[None]:
    """Tests that write through the writer run outside a test transaction (it manages its
    own connection), so the partitions they make outlive them: drop them afterwards."""
    before = set(names())
    yield
    for partition in partitions.partitions():
        if partition.name not in before:
            partitions.drop_partition(partition)


@pytest.fixture
def acme() -> tuple[Tenant, ApiKey]:
    tenant = tenant_get_or_create(name="acme")[0]
    return tenant, key_create(tenant=tenant, name="a1").key


# --- the table and the task -------------------------------------------------------------------

@pytest.mark.django_db
def test_the_usage_log_is_partitioned_by_month_with_a_default_partition() -> None:
    assert partitions.is_partitioned()
    found = partitions.partitions()
    assert found[-1].name == partitions.DEFAULT and found[-1].is_default
    current = partitions.month_start(datetime.now(UTC))
    assert partitions.name_of(current) in names()
    for p in found[:-1]:
        assert p.start is not None and p.end is not None
        assert p.name == partitions.name_of(p.start.date())
        assert p.end == partitions.bounds(p.start.date())[1]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = "
                       "'billing_usagelog'::regclass AND contype IN ('p', 'u') ORDER BY 1")
        assert [row[0] for row in cursor.fetchall()] == [
            "PRIMARY KEY (id, created_at)", "UNIQUE (request_id, created_at)"]


@pytest.mark.django_db
def test_the_task_creates_months_ahead_once(settings: Any) -> None:
    settings.BILLING_USAGE_PARTITION_MONTHS_AHEAD = 2
    now = "2031-11-20T10:00:00+00:00"  # beyond any partition the migration made
    created = tasks.create_usage_partitions(now)
    assert created == ["billing_usagelog_p2031_11", "billing_usagelog_p2031_12",
                       "billing_usagelog_p2032_01"]
    assert tasks.create_usage_partitions(now) == []  # idempotent
    assert set(created) <= set(names())
    assert "billing_usagelog_p2032_02" not in names()
    # A month later, one more.
    assert tasks.create_usage_partitions("2031-12-02T00:00:00+00:00") == [
        "billing_usagelog_p2032_02"]


def test_the_task_is_on_the_beat_schedule() -> None:
    from django.conf import settings

    schedule = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "billing.create_usage_partitions" in schedule


# --- the writer ---------------------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_a_batch_written_twice_adds_nothing(acme: tuple[Tenant, ApiKey]) -> None:
    tenant, key = acme
    now = datetime.now(UTC)
    batch = [event(now - timedelta(seconds=i), f"twice-{i}", tenant, key, cost="0.5")
             for i in range(5)]
    assert len(write_events(batch)) == 5
    balance = Tenant.objects.get(pk=tenant.pk).balance
    # Decoded again from the journal (a writer that died after its commit): same rows.
    from billing.usagerow import decode, encode

    again = [decode(encode(e)) for e in batch]
    assert write_events(again) == []
    assert UsageLog.objects.filter(request_id__startswith="twice-").count() == 5
    assert Tenant.objects.get(pk=tenant.pk).balance == balance  # not charged twice


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("own_partitions")
def test_a_row_of_a_month_without_a_partition_is_kept_then_split_out(
        acme: tuple[Tenant, ApiKey]) -> None:
    tenant, key = acme
    old = at("2019-03-10T12:00:00")
    assert "billing_usagelog_p2019_03" not in names()
    batch = [event(old, "lonely-1", tenant, key), event(old + timedelta(days=40), "lonely-2")]

    assert len(write_events(batch)) == 2
    assert rows_in(partitions.DEFAULT) == 2  # kept, in the default partition

    created = partitions.ensure_partitions(ahead=0)
    assert {"billing_usagelog_p2019_03", "billing_usagelog_p2019_04"} <= set(created)
    assert rows_in(partitions.DEFAULT) == 0
    assert rows_in("billing_usagelog_p2019_03") == 1
    assert rows_in("billing_usagelog_p2019_04") == 1
    assert UsageLog.objects.get(request_id="lonely-1").created_at == old
    assert write_events(batch) == []  # still written once
    assert partitions.ensure_partitions(ahead=0) == []


# --- retention --------------------------------------------------------------------------------

def _totals() -> dict[str, Any]:
    return UsageRollupTenant.objects.aggregate(requests=Sum("requests"), cost=Sum("cost"),
                                               tokens=Sum("input_tokens"))


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("own_partitions")
@pytest.mark.parametrize("rolled_up_before", [True, False])
def test_retention_drops_expired_months_whole_and_keeps_the_totals(
        acme: tuple[Tenant, ApiKey], settings: Any, rolled_up_before: bool) -> None:
    settings.TIME_ZONE = "UTC"
    settings.BILLING_USAGE_RETENTION_DAYS = 60
    now = at("2019-06-15T04:00:00")  # first kept day: 2019-04-16
    tenant, key = acme
    partitions.ensure_partitions(now=now, ahead=0, since=date(2019, 3, 1))
    march = [event(at("2019-03-01T00:00:00"), "m1", tenant, key, "1", 10),
             event(at("2019-03-31T23:59:59.999999"), "m2", tenant, key, "2", 20)]
    april_old = [event(at("2019-04-15T23:00:00"), "a1", tenant, key, "3", 30)]
    kept = [event(at("2019-04-16T00:00:00"), "k1", tenant, key, "4", 40),
            event(at("2019-05-20T08:00:00"), "k2", tenant, key, "5", 50)]
    write_events(march + april_old + kept)
    if rolled_up_before:  # as the scheduled rollups leave it
        day = date(2019, 3, 1)
        while day < date(2019, 6, 15):
            rollups.rollup_day(day, now=now)
            day += timedelta(days=1)
        for busy in ("03-01", "03-31", "04-15", "04-16", "05-20"):  # the others are empty
            rollups.rollup_hours(at(f"2019-{busy}T00:00:00"), at(f"2019-{busy}T23:00:00"),
                                 now=now)
        RollupState.objects.create(name="daily", since=at("2019-03-01T00:00:00"),
                                   through=at("2019-06-15T00:00:00"))
        RollupState.objects.create(name="hourly", since=at("2019-03-01T00:00:00"),
                                   through=at("2019-06-15T04:00:00"))
        before = _totals()
        assert before["requests"] == 5
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE billing_usagelog")

    assert rollups.expire_usage(now) == 3  # 2 in the dropped partition, 1 deleted

    assert "billing_usagelog_p2019_03" not in names()
    assert "billing_usagelog_p2019_04" in names()  # partly kept: rows deleted by day
    assert sorted(UsageLog.objects.values_list("request_id", flat=True)) == ["k1", "k2"]
    totals = _totals()
    if rolled_up_before:
        assert totals == before
    else:  # expiry rolled the expired days up before their rows went
        assert totals["requests"] == 3 and totals["cost"] == Decimal(6)
    march_hours = UsageRollupHourly.objects.filter(hour__lt=at("2019-04-01T00:00:00"))
    assert march_hours.aggregate(n=Sum("requests"))["n"] == 2
    assert rollups.expire_usage(now) == 0
    assert UsageLog.objects.count() == 2


# --- the migration ---------------------------------------------------------------------------

def _manage(url: str, *args: str) -> None:
    env = {**os.environ, "DATABASE_URL": url, "SECRET_KEY": "partition-test"}
    env.pop("REDIS_URL", None)
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


COLUMNS = ("created_at, request_id, endpoint, status_code, key_prefix, error_code, stream, "
           "input_tokens, cached_tokens, output_tokens, reasoning_tokens, cost, latency_ms, "
           "attempts, estimated, user_agent, model")


def test_the_migration_moves_existing_rows_and_back() -> None:
    url = fresh_database(os.environ["DATABASE_URL"],
                         os.environ.get("TEST_DATABASE_NAME", "turnpike") + "_partition_mig")
    try:
        _manage(url, "migrate", "-v0", "billing", "0008")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                f"INSERT INTO billing_usagelog ({COLUMNS}) SELECT now() - g * interval "
                "'9 days', 'old-' || g, 'chat', 200, '', '', false, g, 0, 1, 0, 0.5, 5, "
                "'[]', false, '', 'gpt-5' FROM generate_series(1, 40) g")
            before = conn.execute("SELECT id, request_id, created_at, input_tokens FROM "
                                  "billing_usagelog ORDER BY id").fetchall()
        _manage(url, "migrate", "-v0", "billing", "0009")
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT relkind FROM pg_class WHERE relname = "
                                "'billing_usagelog'").fetchone()[0] == "p"
            after = conn.execute("SELECT id, request_id, created_at, input_tokens FROM "
                                 "billing_usagelog ORDER BY id").fetchall()
            assert after == before
            months = {row[2].astimezone(UTC).strftime("%Y_%m") for row in before}
            parts = {row[0] for row in conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'billing_usagelog'::regclass")}
            assert {f"billing_usagelog_p{m}" for m in months} <= parts
            assert "billing_usagelog_default" in parts
            assert conn.execute("SELECT count(*) FROM billing_usagelog_default"
                                ).fetchone()[0] == 0
            # New rows continue the ids, and a duplicate (request_id, created_at) is refused.
            new_id = conn.execute(f"INSERT INTO billing_usagelog ({COLUMNS}) VALUES (now(), "
                                  "'new', 'chat', 200, '', '', false, 0, 0, 0, 0, 0, 0, '[]', "
                                  "false, '', '') RETURNING id").fetchone()[0]
            assert new_id > max(row[0] for row in before)
            with pytest.raises(psycopg.errors.UniqueViolation):
                conn.execute(f"INSERT INTO billing_usagelog ({COLUMNS}) SELECT created_at, "
                             "request_id, endpoint, status_code, key_prefix, error_code, "
                             "stream, input_tokens, cached_tokens, output_tokens, "
                             "reasoning_tokens, cost, latency_ms, attempts, estimated, "
                             "user_agent, model FROM billing_usagelog WHERE request_id = "
                             "'old-1'")
        _manage(url, "migrate", "-v0", "billing", "0008")  # and back: a plain table
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT relkind FROM pg_class WHERE relname = "
                                "'billing_usagelog'").fetchone()[0] == "r"
            assert conn.execute("SELECT count(*) FROM billing_usagelog").fetchone()[0] == 41
    finally:
        base = url.rsplit("/", 1)[0]
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


@pytest.mark.django_db
def test_the_command_lists_and_creates_partitions(settings: Any) -> None:
    import json
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("usagepartitions", "--create", "--ahead", "15", "--json", stdout=out)
    report = json.loads(out.getvalue())
    assert report["partitioned"] is True
    current = partitions.month_start(datetime.now(UTC))
    far = partitions.name_of(partitions.add_months(current, 15))
    assert far in report["created"]
    listed = [p["name"] for p in report["partitions"]]
    assert far in listed and listed[-1] == partitions.DEFAULT
    assert report["partitions"][-1]["default"] is True

    text = StringIO()
    call_command("usagepartitions", stdout=text)
    assert f"{far}: " in text.getvalue() and "default" in text.getvalue()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("own_partitions")
def test_a_month_left_detached_by_an_interrupted_retention_is_dropped_next_time(
        settings: Any) -> None:
    settings.TIME_ZONE = "UTC"
    settings.BILLING_USAGE_RETENTION_DAYS = 30
    partitions.ensure_partitions(ahead=0, since=date(2018, 1, 1))
    write_events([event(at("2018-01-05T00:00:00"), "detached-1")])
    with connection.cursor() as cursor:  # a run that died between its detach and its drop
        cursor.execute("ALTER TABLE billing_usagelog DETACH PARTITION billing_usagelog_p2018_01")
    assert "billing_usagelog_p2018_01" not in names()
    now = at("2018-03-15T00:00:00")
    assert "billing_usagelog_p2018_01" in [p.name for p in partitions.droppable(now)]
    rollups.expire_usage(now)
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('billing_usagelog_p2018_01')")
        assert cursor.fetchone()[0] is None
