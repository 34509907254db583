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
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--bare",
         "--database-url", url,
         "--redis-url", os.environ["REDIS_URL"]],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    rows = [line for line in table if "| turnpike |" in line]
    assert {r.split("|")[1].strip() for r in rows} == {"nonstream", "stream"}
    assert all(" | 0 |" in r for r in rows)  # no errors
    # The bare daphne + aiohttp proxy ran beside it, relayed every request, and the
    # summary compares the two.
    bare = [line for line in table if "| bare proxy |" in line]
    assert {r.split("|")[1].strip() for r in bare} == {"nonstream", "stream"}
    assert all(" | 0 |" in r for r in bare)
    assert "nonstream: Turnpike/bare proxy = " in result.stdout
