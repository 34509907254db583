"""Billing's Celery tasks: daily rollups, raw-log expiry, the reset of daily (RPD) counters
and the usage spool drain.

The logic (billing/rollups.py) is tested in-process against the real PostgreSQL and Redis;
then every task runs once more through a real Celery worker process (``celery -A portal
worker --pool=solo``) on a queue of its own, with the test database and this run's Redis
prefix, the way beat would run it in production.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import pytest
from celery.app.backends import by_url
from celery.result import AsyncResult
from celery.schedules import crontab
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from kombu import pools as kombu_pools

from billing import rollups, tasks
from billing.models import LedgerEntry, RollupState, UsageLog, UsageRollup, UsageRollupTenant
from billing.usage import UsageEvent, spool
from keys.models import ApiKey, Tenant
from keys.services import key_create, tenant_get_or_create
from portal.celery import app
from portal.infra import rediskeys
from portal.infra.redis import sync_redis
from tests.conftest import gateway_env
from tests.servers import keep_log

ROOT = Path(__file__).resolve().parents[2]
_ids = itertools.count(1)


def at(text: str) -> datetime:
    """An aware datetime from ISO text (UTC unless it says otherwise)."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def log(when: datetime, tenant: Tenant | None, key: ApiKey | None, model: str = "gpt-5", *,
        status: int = 200, inp: int = 0, cached: int = 0, out: int = 0, reasoning: int = 0,
        cost: str = "0") -> UsageLog:
    return UsageLog.objects.create(
        created_at=when, request_id=f"req-{next(_ids)}", key=key,
        key_prefix=key.prefix if key else "", tenant=tenant, endpoint="chat", model=model,
        status_code=status, input_tokens=inp, cached_tokens=cached, output_tokens=out,
        reasoning_tokens=reasoning, cost=Decimal(cost),
    )


Metrics = tuple[int, int, int, int, int, int, Decimal]


def table() -> dict[tuple[str, str | None, str | None, str], Metrics]:
    """The rollups, keyed by (date, tenant name, key name, model)."""
    return {
        (r.date.isoformat(), r.tenant.name if r.tenant else None,
         r.key.name if r.key else None, r.model):
        (r.requests, r.errors, r.input_tokens, r.cached_tokens, r.output_tokens,
         r.reasoning_tokens, r.cost)
        for r in UsageRollup.objects.select_related("tenant", "key")
    }


def stored() -> list[dict[str, Any]]:
    """Every rollup row exactly as stored, ids included."""
    return list(UsageRollup.objects.order_by("id").values())


@dataclass
class World:
    acme: Tenant
    globex: Tenant
    a1: ApiKey
    a2: ApiKey
    g1: ApiKey


@pytest.fixture
def world() -> World:
    acme = tenant_get_or_create(name="acme")[0]
    globex = tenant_get_or_create(name="globex")[0]
    return World(acme=acme, globex=globex,
                 a1=key_create(tenant=acme, name="a1").key,
                 a2=key_create(tenant=acme, name="a2").key,
                 g1=key_create(tenant=globex, name="g1").key)


# --- rollups ----------------------------------------------------------------------------

@pytest.mark.django_db
def test_a_rollup_sums_one_local_day_per_tenant_key_and_model(
        world: World, settings: Any) -> None:
    settings.TIME_ZONE = "Asia/Tokyo"  # UTC+9: 2025-06-02 is [06-01 15:00Z, 06-02 15:00Z)
    w = world
    log(at("2025-06-01T15:00:00"), w.acme, w.a1, inp=100, cached=20, out=50, reasoning=10,
        cost="0.1")  # the first instant of June 2 in Tokyo (still June 1 in UTC)
    log(at("2025-06-02T03:00:00"), w.acme, w.a1, inp=1, out=2, cost="0.2")
    log(at("2025-06-02T14:59:59.999999"), w.acme, w.a1, status=500)  # the last instant
    log(at("2025-06-02T05:00:00"), w.acme, w.a1, "o3", status=429)
    log(at("2025-06-02T06:00:00"), w.acme, w.a2, inp=7, out=3, cost="0.000001")
    log(at("2025-06-02T06:01:00"), w.acme, w.a2, inp=1, out=1, cost="0.000002")
    log(at("2025-06-02T07:00:00"), w.globex, w.g1, inp=1000, out=2000, cost="1.234567")
    log(at("2025-06-02T07:30:00"), w.globex, w.g1, status=400)
    log(at("2025-06-02T07:31:00"), w.globex, w.g1, status=399, cost="0.5")  # not an error
    log(at("2025-06-02T08:00:00"), None, None, "", status=401)  # no key matched
    log(at("2025-06-01T14:59:59"), w.acme, w.a1, inp=5, cost="9")  # June 1 in Tokyo
    log(at("2025-06-02T15:00:00"), w.acme, w.a1, inp=6, cost="8")  # June 3 in Tokyo

    assert rollups.rollup_day(date(2025, 6, 2)) == 5

    assert table() == {
        ("2025-06-02", "acme", "a1", "gpt-5"): (3, 1, 101, 20, 52, 10, Decimal("0.3")),
        ("2025-06-02", "acme", "a1", "o3"): (1, 1, 0, 0, 0, 0, Decimal("0")),
        ("2025-06-02", "acme", "a2", "gpt-5"): (2, 0, 8, 0, 4, 0, Decimal("0.000003")),
        ("2025-06-02", "globex", "g1", "gpt-5"): (3, 1, 1000, 0, 2000, 0,
                                                  Decimal("1.734567")),
        ("2025-06-02", None, None, ""): (1, 1, 0, 0, 0, 0, Decimal("0")),
    }
    assert all(isinstance(row["cost"], Decimal) for row in stored())

    assert rollups.rollup_day(date(2025, 6, 1)) == 1
    assert rollups.rollup_day(date(2025, 6, 3)) == 1
    assert table()[("2025-06-01", "acme", "a1", "gpt-5")] == (1, 0, 5, 0, 0, 0, Decimal(9))
    assert table()[("2025-06-03", "acme", "a1", "gpt-5")] == (1, 0, 6, 0, 0, 0, Decimal(8))
    assert UsageRollup.objects.count() == 7


@pytest.mark.django_db
def test_rolling_up_a_day_twice_changes_nothing(world: World) -> None:
    w = world
    for minute in range(4):
        log(at(f"2025-06-02T10:0{minute}:00"), w.acme, w.a1, inp=minute, cost="0.25",
            status=200 if minute else 502)
    log(at("2025-06-02T11:00:00"), w.globex, w.g1, "o3", out=9, cost="0.000007")
    log(at("2025-06-03T11:00:00"), w.globex, w.g1, "o3", out=1, cost="1")

    assert rollups.rollup_day(date(2025, 6, 2)) == 2
    first = stored()
    assert rollups.rollup_day(date(2025, 6, 2)) == 2
    assert stored() == first  # same values, same ids: nothing was rewritten
    with CaptureQueriesContext(connection) as queries:
        rollups.rollup_day(date(2025, 6, 2))
    writes = [q["sql"] for q in queries.captured_queries
              if q["sql"].startswith(("INSERT", "UPDATE", "DELETE"))]
    assert writes == []
    assert table()[("2025-06-02", "acme", "a1", "gpt-5")] == (4, 1, 6, 0, 0, 0, Decimal(1))


@pytest.mark.django_db
def test_a_rollup_follows_rows_added_and_removed_since_the_last_run(world: World) -> None:
    w = world
    log(at("2025-06-02T10:00:00"), w.acme, w.a1, inp=1, cost="0.1")
    gone = log(at("2025-06-02T10:01:00"), w.acme, w.a1, "o3", inp=1)
    log(at("2025-06-02T10:02:00"), w.globex, w.g1, inp=1)
    rollups.rollup_day(date(2025, 6, 2))
    before = {(r["tenant_id"], r["model"]): r["id"] for r in stored()}

    log(at("2025-06-02T23:59:00"), w.acme, w.a1, inp=2, cost="0.2", status=503)
    gone.delete()
    assert rollups.rollup_day(date(2025, 6, 2)) == 2

    assert table() == {
        ("2025-06-02", "acme", "a1", "gpt-5"): (2, 1, 3, 0, 0, 0, Decimal("0.3")),
        ("2025-06-02", "globex", "g1", "gpt-5"): (1, 0, 1, 0, 0, 0, Decimal(0)),
    }
    after = {(r["tenant_id"], r["model"]): r["id"] for r in stored()}
    assert after == {k: v for k, v in before.items() if k[1] != "o3"}  # updated in place


# --- expiry -------------------------------------------------------------------------------

NOW = "2025-06-02T12:00:00+00:00"  # with 90 days' retention, raw rows before 03-04 go


@pytest.mark.django_db
def test_expiry_rolls_up_then_deletes_only_raw_rows_past_retention(
        world: World, settings: Any) -> None:
    settings.TIME_ZONE = "UTC"
    settings.BILLING_USAGE_RETENTION_DAYS = 90
    w = world
    UsageRollup.objects.create(date=date(2025, 1, 1), tenant=w.acme, key=w.a1, model="gpt-5",
                               requests=7, cost=Decimal("7.7"))  # its raw rows are long gone
    log(at("2025-02-20T10:00:00"), w.acme, w.a1, inp=3, cost="0.3")
    log(at("2025-02-20T11:00:00"), w.acme, w.a1, status=500)
    log(at("2025-03-03T23:59:59.999999"), w.globex, w.g1, out=4, cost="0.4")
    kept = [log(at("2025-03-04T00:00:00"), w.globex, w.g1).pk,
            log(at("2025-05-30T00:00:00"), w.acme, w.a2).pk]

    assert rollups.expire_usage(at(NOW)) == 3

    assert sorted(UsageLog.objects.values_list("pk", flat=True)) == sorted(kept)
    assert table() == {
        ("2025-01-01", "acme", "a1", "gpt-5"): (7, 0, 0, 0, 0, 0, Decimal("7.7")),
        ("2025-02-20", "acme", "a1", "gpt-5"): (2, 1, 3, 0, 0, 0, Decimal("0.3")),
        ("2025-03-03", "globex", "g1", "gpt-5"): (1, 0, 0, 0, 4, 0, Decimal("0.4")),
    }
    first = stored()

    assert rollups.expire_usage(at(NOW)) == 0
    assert stored() == first
    assert sorted(UsageLog.objects.values_list("pk", flat=True)) == sorted(kept)


@pytest.mark.django_db
def test_expiry_deletes_in_batches(world: World, settings: Any) -> None:
    settings.BILLING_USAGE_EXPIRE_BATCH = 2
    for second in range(5):
        log(at(f"2025-01-10T00:00:0{second}"), world.acme, world.a1)

    with CaptureQueriesContext(connection) as queries:
        assert rollups.expire_usage(at(NOW)) == 5
    deletes = [q for q in queries.captured_queries
               if q["sql"].startswith(f'DELETE FROM "{UsageLog._meta.db_table}"')]
    assert len(deletes) == 3  # 2 + 2 + 1
    assert not UsageLog.objects.exists()
    assert table()[("2025-01-10", "acme", "a1", "gpt-5")][0] == 5


@pytest.mark.django_db
def test_a_day_whose_raw_rows_are_partly_expired_keeps_its_rollup(
        world: World, settings: Any) -> None:
    settings.BILLING_USAGE_RETENTION_DAYS = 90
    rows = [log(at(f"2025-01-10T0{h}:00:00"), world.acme, world.a1, cost="1")
            for h in range(3)]
    rollups.rollup_day(date(2025, 1, 10), now=at("2025-01-11T00:00:00"))
    rows[0].delete()  # as if an expiry run had died between two batches

    assert rollups.rollup_day(date(2025, 1, 10), now=at(NOW)) == 1
    assert rollups.expire_usage(at(NOW)) == 2
    assert rollups.rollup_day(date(2025, 1, 10), now=at(NOW)) == 1  # no raw rows left
    assert table() == {("2025-01-10", "acme", "a1", "gpt-5"): (3, 0, 0, 0, 0, 0, Decimal(3))}


@pytest.mark.django_db
def test_zero_retention_keeps_raw_rows_forever(world: World, settings: Any) -> None:
    settings.BILLING_USAGE_RETENTION_DAYS = 0
    log(at("2000-01-01T00:00:00"), world.acme, world.a1)
    assert rollups.expire_usage(at(NOW)) == 0
    assert UsageLog.objects.count() == 1


# --- daily counters -------------------------------------------------------------------------

def _keys(client: Any, prefix: str) -> set[str]:
    return {k.decode() for k in client.scan_iter(match=prefix + "*", count=1000)}


needs_redis = pytest.mark.skipif(not os.environ.get("REDIS_URL"),
                                 reason="needs REDIS_URL (make test sets it)")


@pytest.fixture
def redis_client() -> Any:
    client = sync_redis()
    assert client is not None, "these tests need REDIS_URL (make test sets it)"
    return client


@needs_redis
def test_the_reset_deletes_only_earlier_local_days_rpd_counters(
        redis_client: Any, settings: Any) -> None:
    settings.TIME_ZONE = "Asia/Tokyo"
    now = at("2025-06-01T16:00:00")  # 2025-06-02 01:00 in Tokyo
    stale = [rediskeys.rpd(1, "20250601", tenant=1), rediskeys.rpd(2, "20241231", tenant=2)]
    fresh = [rediskeys.rpd(1, "20250602", tenant=1), rediskeys.rpd(3, "20250603", tenant=3),
             rediskeys.rpm(1, tenant=1), rediskeys.rpd(4, "sometime", tenant=4),
             settings.GATEWAY_REDIS_PREFIX + "rpdx:1:20200101"]  # not an RPD counter
    foreign = f"other{os.getpid()}:rpd:1:20200101"  # another deployment's prefix
    for name in [*stale, *fresh, foreign]:
        redis_client.set(name, 5)

    def left() -> set[str]:
        return {name for name in [*stale, *fresh] if redis_client.exists(name)}

    try:
        assert rollups.reset_daily_counters(now) == 2
        assert left() == set(fresh)
        assert redis_client.exists(foreign)
        assert rollups.reset_daily_counters(now) == 0
        assert left() == set(fresh)
    finally:
        redis_client.delete(foreign)


@needs_redis
def test_a_prefix_with_glob_characters_matches_only_its_own_counters(
        redis_client: Any, settings: Any) -> None:
    base = settings.GATEWAY_REDIS_PREFIX  # the autouse fixture wipes everything under it
    settings.GATEWAY_REDIS_PREFIX = base + "a*["
    mine = rediskeys.rpd(1, "20200101", tenant=1)
    # What an unescaped "a*[" would match.
    neighbour = base + "ab[" + rediskeys.group_tag(1) + "rpd:1:20200101"
    redis_client.set(mine, 1)
    redis_client.set(neighbour, 1)
    assert rollups.reset_daily_counters(at(NOW)) == 1
    assert not redis_client.exists(mine)
    assert redis_client.exists(neighbour)


def test_without_redis_the_reset_has_nothing_to_delete(settings: Any) -> None:
    settings.REDIS_URL = None
    assert rollups.reset_daily_counters(at(NOW)) == 0


# --- beat ---------------------------------------------------------------------------------

def test_beat_schedules_every_billing_task() -> None:
    schedule = settings.CELERY_BEAT_SCHEDULE
    by_task = {entry["task"]: entry for entry in schedule.values()}
    registered = set(app.tasks)
    for name in ("billing.rollup_usage", "billing.expire_usage",
                 "billing.reset_daily_counters", "billing.drain_usage_spool"):
        assert name in by_task, name
        assert name in registered, name
    assert by_task["billing.rollup_usage"]["schedule"] == 600
    assert by_task["billing.drain_usage_spool"]["schedule"] == 60
    reset = by_task["billing.reset_daily_counters"]
    assert reset["schedule"] == crontab(hour=0, minute=0)  # local midnight (CELERY_TIMEZONE)
    assert reset["options"] == {"countdown": 30}  # runs at 00:00:30
    assert isinstance(by_task["billing.expire_usage"]["schedule"], crontab)


# --- the tasks, run by a real Celery worker ---------------------------------------------------

def _broker_url() -> str:
    """The test Redis, another database number (Celery's keys carry no prefix)."""
    explicit = os.environ.get("TEST_CELERY_BROKER_URL")
    if explicit:
        return explicit
    return urlunsplit(urlsplit(str(settings.REDIS_URL))._replace(path="/14"))


@dataclass
class Worker:
    proc: subprocess.Popen[Any]
    queue: str
    broker: str
    prefix: str  # its GATEWAY_REDIS_PREFIX
    backend: Any
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def run(self, task: Any, *args: Any, timeout: float = 60.0) -> Any:
        """Send ``task`` to this worker's queue and wait for its result."""
        with app.connection_for_write(self.broker) as conn:
            sent = task.apply_async(args=args, queue=self.queue, connection=conn)
        result = AsyncResult(sent.id, backend=self.backend, app=app)
        try:
            return result.get(timeout=timeout)
        except Exception as exc:
            raise AssertionError(f"{task.name} failed or timed out; worker log:\n"
                                 f"{self.output()}") from exc
        finally:
            result.forget()


@pytest.fixture(scope="module")
def worker(django_db_setup: Any, django_db_blocker: Any,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """``celery -A portal worker`` on a queue of its own, sharing the test database and
    Redis; tasks go through Redis (broker and results) both ways.

    Its Redis prefix is this run's plus ``worker:``: gateway processes left running by
    other test modules drain the usage spool under this run's prefix every 0.2 s, and must
    not take the batches a test spools for the worker. (The autouse wipe covers it.)"""
    assert settings.REDIS_URL, "the worker needs Redis as its broker (make test sets REDIS_URL)"
    broker = _broker_url()
    queue = f"turnpike-test-{uuid.uuid4().hex[:12]}"
    node = f"{queue}@localhost"
    prefix = settings.GATEWAY_REDIS_PREFIX + "worker:"
    with django_db_blocker.unblock():
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings",
               **gateway_env(CELERY_BROKER_URL=broker, CELERY_RESULT_BACKEND=broker,
                             CELERY_TASK_ALWAYS_EAGER="false", TIME_ZONE=settings.TIME_ZONE,
                             GATEWAY_REDIS_PREFIX=prefix, LOG_LEVEL="INFO")}
    log_path = keep_log(tmp_path_factory.mktemp("celery") / "worker.log")
    conf = app.conf
    saved = {name: conf[name] for name in ("broker_url", "result_backend",
                                           "task_always_eager")}
    conf.update(broker_url=broker, result_backend=broker, task_always_eager=False)
    _reset_pools()
    backend_cls, backend_url = by_url(broker, app.loader)
    backend = backend_cls(app=app, url=backend_url)
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "portal", "worker", "--pool=solo",
             "--concurrency=1", "-Q", queue, "-n", node, "-l", "info",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    started = Worker(proc=proc, queue=queue, broker=broker, prefix=prefix, backend=backend,
                     log_path=log_path)
    try:
        deadline = time.monotonic() + 60
        with app.connection_for_write(broker) as conn:
            while not app.control.ping(destination=[node], timeout=0.5, connection=conn):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the Celery worker did not start:\n{started.output()}")
        yield started
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        conf.update(saved)
        _reset_pools()


def _reset_pools() -> None:
    """Drop the connection and producer pools the app built for another broker: a task
    called eagerly earlier in the run (an alert test) makes the producer pool on memory://,
    and the worker's pings and tasks would go there instead of to Redis."""
    # app.pool is kombu's process-wide pool for the broker URL (kombu.pools.connections),
    # and the producer pools are registered there too: closing only the app's copy leaves
    # a closed pool registered for that URL, which the next user of the same broker (another
    # module's worker fixture) would be handed ("Acquire on closed pool"). Reset them all.
    kombu_pools.reset()
    app._pool = None
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None


@pytest.mark.django_db(transaction=True)
@needs_redis
def test_the_worker_rolls_up_a_given_day_and_by_default_today_and_yesterday(
        worker: Worker, world: World) -> None:
    w = world
    log(at("2025-06-02T01:00:00"), w.acme, w.a1, inp=10, cost="0.000010")
    log(at("2025-06-02T02:00:00"), w.acme, w.a1, status=500)
    log(at("2025-06-02T03:00:00"), w.globex, w.g1, "o3", out=5, cost="2.5")

    assert worker.run(tasks.rollup_usage, "2025-06-02") == {"2025-06-02": 2}
    assert "Task billing.rollup_usage[" in worker.output()  # it ran there, not in here
    assert table() == {
        ("2025-06-02", "acme", "a1", "gpt-5"): (2, 1, 10, 0, 0, 0, Decimal("0.00001")),
        ("2025-06-02", "globex", "g1", "o3"): (1, 0, 0, 0, 5, 0, Decimal("2.5")),
    }
    first = stored()
    assert worker.run(tasks.rollup_usage, "2025-06-02") == {"2025-06-02": 2}
    assert stored() == first

    recent = log(timezone.now(), w.acme, w.a2, inp=1, cost="0.5")
    done = worker.run(tasks.rollup_usage)  # the first run catches up CATCH_UP_DAYS days
    days = sorted(date.fromisoformat(d) for d in done)
    assert len(days) == rollups.CATCH_UP_DAYS + 1
    assert all(b - a == timedelta(days=1) for a, b in zip(days, days[1:], strict=False))
    today = rollups.local_date(recent.created_at)
    assert days[-1] == today
    assert done[today.isoformat()] == 1
    done = worker.run(tasks.rollup_usage)  # then: yesterday and today
    days = sorted(date.fromisoformat(d) for d in done)
    assert len(days) == 2 and days[1] - days[0] == timedelta(days=1) and days[1] == today
    assert table()[(today.isoformat(), "acme", "a2", "gpt-5")] == (
        1, 0, 1, 0, 0, 0, Decimal("0.5"))
    # The same task keeps the per-tenant rollups and the per-key totals of the window.
    tenant_row = UsageRollupTenant.objects.get(date=today, tenant=w.acme, model="gpt-5")
    assert (tenant_row.requests, tenant_row.cost) == (1, Decimal("0.5"))
    assert RollupState.objects.get(name=rollups.KEY_TOTALS).through == rollups.day_bounds(
        today)[0]


@pytest.mark.django_db(transaction=True)
@needs_redis
def test_the_worker_expires_old_raw_rows_and_keeps_their_rollups(
        worker: Worker, world: World) -> None:
    w = world
    log(at("2025-02-20T10:00:00"), w.acme, w.a1, inp=3, cost="0.3")
    log(at("2025-02-21T10:00:00"), w.acme, w.a1, status=429)
    kept = log(at("2025-05-30T10:00:00"), w.acme, w.a1)

    assert worker.run(tasks.expire_usage, NOW) == 2
    assert list(UsageLog.objects.values_list("pk", flat=True)) == [kept.pk]
    assert table() == {
        ("2025-02-20", "acme", "a1", "gpt-5"): (1, 0, 3, 0, 0, 0, Decimal("0.3")),
        ("2025-02-21", "acme", "a1", "gpt-5"): (1, 1, 0, 0, 0, 0, Decimal(0)),
    }
    first = stored()
    assert worker.run(tasks.expire_usage, NOW) == 0
    assert stored() == first


@pytest.mark.django_db(transaction=True)
@needs_redis
def test_the_worker_resets_earlier_days_rpd_counters(worker: Worker, redis_client: Any,
                                                     settings: Any) -> None:
    settings.GATEWAY_REDIS_PREFIX = worker.prefix
    # 00:00:30 local time (the worker runs in this run's TIME_ZONE), as beat sends it.
    now = datetime(2025, 6, 2, 0, 0, 30, tzinfo=ZoneInfo(settings.TIME_ZONE)).isoformat()
    for name in (rediskeys.rpd(1, "20250601", tenant=1),
                 rediskeys.rpd(2, "20250531", tenant=2), rediskeys.rpd(1, "20250602", tenant=1)):
        redis_client.set(name, 3)

    assert worker.run(tasks.reset_daily_counters, now) == 2
    assert _keys(redis_client, settings.GATEWAY_REDIS_PREFIX) == {
        rediskeys.rpd(1, "20250602", tenant=1)}
    assert worker.run(tasks.reset_daily_counters, now) == 0
    assert _keys(redis_client, settings.GATEWAY_REDIS_PREFIX) == {
        rediskeys.rpd(1, "20250602", tenant=1)}


@pytest.mark.django_db(transaction=True)
@needs_redis
def test_the_worker_drains_the_usage_spool(worker: Worker, world: World,
                                           redis_client: Any, settings: Any) -> None:
    settings.GATEWAY_REDIS_PREFIX = worker.prefix
    w = world

    def event(n: int, cost: str) -> UsageEvent:
        return UsageEvent(created_at=at("2025-06-02T10:00:00") + timedelta(seconds=n),
                          request_id=f"spooled-{n}", endpoint="chat", status_code=200,
                          key_id=w.a1.pk, key_prefix=w.a1.prefix, tenant_id=w.acme.pk,
                          model="gpt-5", input_tokens=n, cost=Decimal(cost),
                          attempts=[{"upstream": 1, "status": 200}])

    assert spool([event(1, "0.1"), event(2, "0.2")])
    assert spool([event(3, "0.3")])

    assert worker.run(tasks.drain_usage_spool) == 3
    rows = list(UsageLog.objects.order_by("request_id"))
    assert [r.request_id for r in rows] == ["spooled-1", "spooled-2", "spooled-3"]
    assert [r.cost for r in rows] == [Decimal("0.1"), Decimal("0.2"), Decimal("0.3")]
    assert rows[0].attempts == [{"upstream": 1, "status": 200}]
    assert redis_client.llen(rediskeys.journal(rediskeys.group_of(w.acme.pk))) == 0
    charged = LedgerEntry.objects.filter(tenant=w.acme, kind="charge")
    assert sum(e.amount for e in charged) == Decimal("-0.6")
    w.acme.refresh_from_db()
    assert w.acme.balance == Decimal("-0.6")

    assert worker.run(tasks.drain_usage_spool) == 0
    assert UsageLog.objects.count() == 3
