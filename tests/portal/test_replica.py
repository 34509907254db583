"""A real streaming replica of the test PostgreSQL server (pg_basebackup of the running
cluster, started with pg_ctl on a free port): the analytic selectors read from it, writes
and reads inside a transaction stay on the primary."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connections, transaction
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.models import UsageLog
from keys.models import Tenant
from keys.services import key_create
from portal.selectors import dashboard
from portal.selectors import keys as key_sel
from portal.selectors import usage as sel
from tests.portal.ops_helpers import make_callers

PG_BIN = Path("/usr/lib/postgresql/15/bin")
ROUTERS = ["portal.infra.dbrouter.ReplicaRouter"]
DATABASES = ["default", "replica"]  # the replica is a TEST MIRROR: never flushed


def as_postgres(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", "postgres", "--", *args], capture_output=True,
                          text=True, timeout=600, check=True, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def primary_sql(sql: str) -> list[tuple[Any, ...]]:
    with connections["default"].cursor() as cursor:
        cursor.execute(sql)
        return list(cursor.fetchall()) if cursor.description else []


def allow_replication() -> None:
    """The primary's pg_hba.conf must let postgres open a replication connection from
    127.0.0.1 (``host all`` does not cover it): add that line once and reload."""
    rules = primary_sql("SELECT count(*) FROM pg_hba_file_rules WHERE 'replication' = ANY("
                        "database) AND (address IS NULL OR address = '127.0.0.1')")
    if rules[0][0]:
        return
    hba = Path(primary_sql("SHOW hba_file")[0][0])
    with hba.open("a") as f:
        f.write("\n# added by Turnpike's replica test\n"
                "host replication postgres 127.0.0.1/32 trust\n")
    primary_sql("SELECT pg_reload_conf()")


@pytest.fixture(scope="module")
def replica(django_db_setup: Any, django_db_blocker: Any) -> Iterator[dict[str, Any]]:
    default = settings.DATABASES["default"]
    if default["ENGINE"] != "django.db.backends.postgresql" or \
            default.get("HOST") not in ("127.0.0.1", "localhost"):
        pytest.skip("needs the test PostgreSQL on this machine")
    if os.geteuid() != 0 or not (PG_BIN / "pg_ctl").exists() or not shutil.which("runuser"):
        pytest.skip("starting a replica needs root (to run as postgres) and PostgreSQL 15")
    with django_db_blocker.unblock():
        allow_replication()
        settings_rows = {name: primary_sql(f"SHOW {name}")[0][0] for name in (
            "max_connections", "max_worker_processes", "max_wal_senders",
            "max_prepared_transactions", "max_locks_per_transaction")}
        connections["default"].close()
    home = Path(tempfile.mkdtemp(prefix="turnpike-replica-"))
    shutil.chown(home, "postgres", "postgres")
    data, port = home / "data", free_port()
    started = False
    try:
        # The test database exists already (django_db_setup): the backup copies it.
        as_postgres("pg_basebackup", "-h", "127.0.0.1", "-p", str(default.get("PORT") or 5432),
                    "-U", "postgres", "-D", str(data), "-R", "-X", "stream", "-c", "fast")
        conf = "".join(f"{k} = {v}\n" for k, v in settings_rows.items())
        # Debian keeps the primary's configuration under /etc: the copy gets its own.
        (data / "postgresql.conf").write_text(
            conf + f"hot_standby = on\nlisten_addresses = ''\nport = {port}\n"
            f"unix_socket_directories = '{home}'\n")
        (data / "pg_hba.conf").write_text("local all all trust\n")
        for name in ("postgresql.conf", "pg_hba.conf"):
            shutil.chown(data / name, "postgres", "postgres")
        as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(home / "log"), "-w",
                    "start")
        started = True
        alias = {**default, "HOST": str(home), "PORT": str(port), "USER": "postgres",
                 "PASSWORD": "", "CONN_MAX_AGE": 0, "TEST": {"MIRROR": "default"}}
        settings.DATABASES["replica"] = alias
        try:
            with django_db_blocker.unblock():
                deadline = time.monotonic() + 60
                while True:
                    try:
                        with connections["replica"].cursor() as cursor:
                            cursor.execute("SELECT pg_is_in_recovery()")
                            if cursor.fetchone()[0]:
                                break
                    except Exception:  # noqa: BLE001 - still starting
                        connections["replica"].close()
                    assert time.monotonic() < deadline, (home / "log").read_text()
                    time.sleep(0.2)
            yield alias
        finally:
            connections["replica"].close()
            del connections["replica"]
            del settings.DATABASES["replica"]
    finally:
        if started:
            subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D",
                            str(data), "-m", "fast", "-w", "stop"], capture_output=True,
                           timeout=120)
        shutil.rmtree(home, ignore_errors=True)


def replica_sql(sql: str) -> list[tuple[Any, ...]]:
    with connections["replica"].cursor() as cursor:
        cursor.execute(sql)
        return list(cursor.fetchall()) if cursor.description else []


def wait_on_replica(request_id: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not UsageLog.objects.using("replica").filter(request_id=request_id).exists():
        assert time.monotonic() < deadline, f"{request_id} never reached the replica"
        time.sleep(0.1)


def log(tenant: Tenant, request_id: str, key: Any = None) -> UsageLog:
    return UsageLog.objects.create(
        created_at=timezone.now(), request_id=request_id,
        tenant=tenant, key=key, model="gpt-5", endpoint="/v1/chat/completions", status_code=200,
        input_tokens=10, output_tokens=5, cost=Decimal("0.01"), latency_ms=100)


def touched(captured: CaptureQueriesContext, table: str) -> bool:
    return any(table in q["sql"] for q in captured.captured_queries)


@pytest.mark.django_db(transaction=True, databases=DATABASES)
@override_settings(DATABASE_ROUTERS=ROUTERS)
def test_analytic_reads_go_to_the_replica_and_writes_to_the_primary(replica):
    tenant = Tenant.objects.create(name="replicated")
    for n in range(3):
        log(tenant, f"req_rep_{n}")
    wait_on_replica("req_rep_2")

    with CaptureQueriesContext(connections["replica"]) as on_replica, \
            CaptureQueriesContext(connections["default"]) as on_primary:
        page = sel.page(sel.tenant_rows(tenant), None)
        totals = sel.totals(sel.tenant_rows(tenant))
        figures = dashboard.overview(tenant)
        exported = list(sel.export_chunks(sel.tenant_rows(tenant)))
    assert [r["request_id"] for r in page.rows] == ["req_rep_2", "req_rep_1", "req_rep_0"]
    assert totals["requests"] == 3
    assert figures.today_totals.requests == 3
    assert len(exported) == 2 and len(exported[1]) == 3
    assert touched(on_replica, "billing_usagelog")
    assert not touched(on_primary, "billing_usagelog")

    # The replica answers: with its replay paused, a new row is on the primary only, and
    # the analytic selectors do not see it (stale by design) until replay resumes.
    replica_sql("SELECT pg_wal_replay_pause()")
    try:
        log(tenant, "req_rep_late")
        assert UsageLog.objects.filter(tenant=tenant).count() == 4
        assert sel.totals(sel.tenant_rows(tenant))["requests"] == 3
    finally:
        replica_sql("SELECT pg_wal_replay_resume()")
    wait_on_replica("req_rep_late")
    assert sel.totals(sel.tenant_rows(tenant))["requests"] == 4


@pytest.mark.django_db(transaction=True, databases=DATABASES)
@override_settings(DATABASE_ROUTERS=ROUTERS)
def test_writes_and_reads_in_a_transaction_stay_on_the_primary(replica):
    tenant = Tenant.objects.create(name="writer")
    with CaptureQueriesContext(connections["replica"]) as on_replica, \
            CaptureQueriesContext(connections["default"]) as on_primary:
        created = key_create(tenant=tenant, name="fresh")
        with transaction.atomic():
            log(tenant, "req_txn")
            # Reads its own write: the replica has not got (cannot have) this row yet.
            assert sel.totals(sel.tenant_rows(tenant))["requests"] == 1
        assert Tenant.objects.get(pk=tenant.pk).name == "writer"  # not an analytic read
    assert created.key.pk
    assert on_replica.captured_queries == []
    assert touched(on_primary, "keys_apikey") and touched(on_primary, "billing_usagelog")


@pytest.mark.django_db(transaction=True, databases=DATABASES)
@override_settings(DATABASE_ROUTERS=ROUTERS)
def test_key_ranking_key_figures_and_the_ops_usage_listing_read_the_replica(replica):
    """The analytic reads a view makes after the selectors return (the dashboard's key
    ranking), the keys page's figures, the model suggestions and the operations API's
    usage listings: all on the replica; authenticating the API caller stays on the
    primary."""
    callers = make_callers()
    tenant = Tenant.objects.create(name="ranked")
    key = key_create(tenant=tenant, name="busy").key
    for n in range(3):
        log(tenant, f"req_rank_{n}", key=key)
    wait_on_replica("req_rank_2")
    client = Client()

    with CaptureQueriesContext(connections["replica"]) as on_replica, \
            CaptureQueriesContext(connections["default"]) as on_primary:
        ranked = dashboard.overview(tenant).top_keys()
        row = key_sel.KeyRow(key)
        key_sel.fill_figures([row])
        models = sel.models_seen(tenant)
        listed = client.get(f"/api/ops/usage/?tenant={tenant.pk}", headers=callers.staff_write)
        rollups = client.get("/api/ops/usage-rollups/", headers=callers.staff_write)
    assert [k["totals"].requests for k in ranked] == [3]
    assert row.today.requests == 3 and row.last_used is not None
    assert models == []  # no rollup yet: the suggestions come from the rollups
    assert listed.status_code == 200, listed.content
    assert sorted(r["request_id"] for r in listed.json()["results"]) == [
        "req_rank_0", "req_rank_1", "req_rank_2"]
    assert rollups.status_code == 200
    assert touched(on_replica, "billing_usagelog")
    assert touched(on_replica, "billing_usagerollup")
    assert not touched(on_primary, "billing_usagelog")
    assert not touched(on_primary, "billing_usagerollup")
    assert touched(on_primary, "keys_accesstoken") or touched(on_primary, "authtoken")
