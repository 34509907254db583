"""The read-replica router's decisions and the settings' refusal of a non-PostgreSQL replica
(tests/portal/test_replica.py runs a real streaming replica)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from billing.models import UsageLog
from keys.models import ApiKey
from portal.infra import dbrouter
from portal.infra.dbrouter import ReplicaRouter, analytics, analytics_alias

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def with_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(settings.DATABASES, "replica", dict(settings.DATABASES["default"]))


def test_reads_and_writes_go_to_the_primary_outside_analytics(with_replica: None) -> None:
    router = ReplicaRouter()
    assert router.db_for_read(UsageLog) == "default"
    assert router.db_for_write(UsageLog) == "default"
    with analytics() as alias:
        assert alias == "replica"
        assert router.db_for_read(UsageLog) == "replica"
        assert router.db_for_read(ApiKey) == "replica"
        assert router.db_for_write(UsageLog) == "default"  # writes never
    assert router.db_for_read(UsageLog) == "default"  # the block ended


def test_analytics_as_a_decorator_and_nested(with_replica: None) -> None:
    router = ReplicaRouter()

    @analytics()
    def read() -> Any:
        return router.db_for_read(UsageLog)

    assert read() == "replica"
    with analytics():
        with analytics():
            pass
        assert router.db_for_read(UsageLog) == "replica"  # the inner block restored it
    assert router.db_for_read(UsageLog) == "default"


def test_without_a_replica_analytics_reads_the_primary() -> None:
    assert "replica" not in settings.DATABASES
    assert not dbrouter.replica_configured()
    with analytics() as alias:
        assert alias == "default"
        assert ReplicaRouter().db_for_read(UsageLog) == "default"
    assert analytics_alias() == "default"


def test_only_the_primary_is_migrated_and_relations_are_allowed() -> None:
    router = ReplicaRouter()
    assert router.allow_migrate("default", "billing")
    assert not router.allow_migrate("replica", "billing")
    assert router.allow_relation(object(), object())


def settings_of(**env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if k not in {"DATABASE_URL", "DATABASE_REPLICA_URL"}}
    code = ("import django; django.setup(); from django.conf import settings; "
            "print(sorted(settings.DATABASES), settings.DATABASE_ROUTERS)")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60,
                          env={**base, "DJANGO_SETTINGS_MODULE": "portal.settings.base",
                               "SECRET_KEY": "x", **env})


def test_the_settings_add_a_postgresql_replica_with_the_primarys_options() -> None:
    done = settings_of(DATABASE_URL="postgres://u@db1:5432/tp",
                       DATABASE_REPLICA_URL="postgres://u@db2:5432/tp")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "['default', 'replica'] ['portal.infra.dbrouter.ReplicaRouter']")
    unset = settings_of(DATABASE_URL="postgres://u@db1:5432/tp")
    assert unset.returncode == 0, unset.stderr
    assert unset.stdout.strip() == "['default'] []"


@pytest.mark.parametrize("primary, replica", [
    ("postgres://u@db1:5432/tp", "mysql://u@db2:3306/tp"),
    ("postgres://u@db1:5432/tp", "sqlite:////tmp/replica.sqlite3"),
    ("", "postgres://u@db2:5432/tp"),  # the SQLite default has no PostgreSQL replica
])
def test_the_settings_refuse_a_replica_that_is_not_postgresql(primary: str,
                                                              replica: str) -> None:
    done = settings_of(DATABASE_URL=primary, DATABASE_REPLICA_URL=replica)
    assert done.returncode != 0
    assert "ImproperlyConfigured" in done.stderr
    assert "DATABASE_REPLICA_URL must be a postgres:// URL" in done.stderr
