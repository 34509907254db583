"""The soak's short version (benchmarks/soak.py --smoke, ~30 s): two gateway processes under
32-way mixed load with ~1% injected upstream faults lose no usage row, strand no money,
refuse nothing spuriously and answer every fault the way it should be answered."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import fresh_database

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("node") is None or not os.environ.get("REDIS_URL")
                                or not os.environ.get("DATABASE_URL", "").startswith("postgres"),
                                reason="the soak needs Node.js, PostgreSQL and Redis")


def _figure(stdout: str, measure: str) -> str:
    match = re.search(rf"^\| {re.escape(measure)} \| (.*) \|$", stdout, re.MULTILINE)
    assert match, f"no {measure!r} in the soak's table:\n{stdout[-3000:]}"
    return match.group(1)


def test_the_soak_smoke_run_loses_nothing_and_fails_nothing_unexpectedly():
    # A database of its own per checkout (TEST_DATABASE_NAME), so parallel runs never meet;
    # new each run, so no schema left by an earlier run or branch can break it.
    url = fresh_database(os.environ["DATABASE_URL"],
                         os.environ.get("TEST_DATABASE_NAME", "turnpike") + "_soak_smoke")
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", "--smoke",
         "--database-url", url, "--redis-url", os.environ["REDIS_URL"]],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    out = result.stdout
    assert result.returncode == 0, out[:5000] + "\n...\n" + out[-2000:] + result.stderr[-3000:]
    assert _figure(out, "rows lost") == "0"
    assert _figure(out, "unexpected answers (all)") == "0"
    assert _figure(out, "spurious refusals (limiter)") == "0"
    assert _figure(out, "stranded money (reservations left + drift)") == "0.000000"
    answered, plus = re.fullmatch(r"(\d+) \(\+(\d+)\)",
                                  _figure(out, "requests answered (plus warm-up)")).groups()
    assert int(answered) > 500
    assert "RESULT: PASS" in out
