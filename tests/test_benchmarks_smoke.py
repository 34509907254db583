"""The benchmark suite runs and reports (a few seconds; the numbers never gate CI)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import fresh_database

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("node") is None or not os.environ.get("REDIS_URL")
                                or not os.environ.get("DATABASE_URL", "").startswith("postgres"),
                                reason="the suite needs Node.js, PostgreSQL and Redis")


def test_the_benchmark_suite_runs_and_reports():
    # A database of its own per checkout (TEST_DATABASE_NAME), so parallel runs never meet;
    # new each run, so no schema left by an earlier run or branch can break it.
    url = fresh_database(os.environ["DATABASE_URL"],
                         os.environ.get("TEST_DATABASE_NAME", "turnpike") + "_bench_smoke")
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke",
         "--database-url", url,
         "--redis-url", os.environ["REDIS_URL"]],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    rows = [line for line in table if "| turnpike |" in line]
    assert {r.split("|")[1].strip() for r in rows} == {"nonstream", "stream"}
    assert all(" | 0 |" in r for r in rows)  # no errors


@pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"),
                    reason="the partitions benchmark needs PostgreSQL")
def test_the_partitions_benchmark_runs_and_reports():
    url = fresh_database(os.environ["DATABASE_URL"],
                         os.environ.get("TEST_DATABASE_NAME", "turnpike") + "_bench_partition")
    env = {**os.environ}
    env.pop("REDIS_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.partitions", "--smoke", "--rows", "6000",
         "--window-rows", "3000", "--keys", "2000", "--writes", "600", "--export-rows", "500",
         "--database-url", url],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = dict(line.strip("| ").split(" | ", 1) for line in result.stdout.splitlines()
                 if line.startswith("| ") and not line.startswith("| measure"))
    rates = [name for name in table if name.startswith("usage writer")]
    assert len(rates) == 2
    retention = [name for name in table if name.startswith("retention of billing_usagelog_p")]
    assert retention and "dashboard totals unchanged" in retention[0]
    assert any(name.startswith("CSV export") for name in table)
