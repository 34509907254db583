"""The embedded default, end to end: no DATABASE_URL and no REDIS_URL as far as Turnpike
knows (a SQLite file, in-process limiter, stores and writers), seeded by ``manage.py demo``
as ``make run`` does, served by a real ``python -m portal.server`` in front of the fake
upstream. A stored response is written by the in-process writer to SQLite, read back, and
a second turn carried only by ``previous_response_id`` is answered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import ROOT, start_fake_upstream, start_gateway, stop

pytestmark = pytest.mark.e2e

# What a fresh clone has: only what a developer's shell might set is removed.
DROPPED = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND",
           "TEST_DATABASE_NAME", "GATEWAY_REDIS_PREFIX")


def embedded_env(sqlite: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROPPED}
    # The SQLite file goes in a temporary directory rather than next to manage.py; a
    # DATABASE_URL naming a file needs a SECRET_KEY, as the settings say.
    env.update(DJANGO_SETTINGS_MODULE="portal.settings", DATABASE_URL=f"sqlite:///{sqlite}",
               SECRET_KEY="embedded-test-secret", REDIS_URL="", LOG_LEVEL="WARNING",
               GATEWAY_DRAIN_GRACE_SECONDS="0")  # stopping it needs no load balancer's grace
    return env


def until(check: Any, seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_the_embedded_default_stores_responses_and_chains_them(tmp_path: Path) -> None:
    env = embedded_env(tmp_path / "turnpike.sqlite3")
    fake = start_fake_upstream()
    gateway = None
    try:
        manage = [sys.executable, "manage.py"]
        subprocess.run([*manage, "migrate", "--noinput", "-v0"], cwd=ROOT, env=env,
                       check=True)
        seeded = subprocess.run(
            [*manage, "demo", "--json", "--upstream-url", fake.url + "/v1"],
            cwd=ROOT, env=env, check=True, capture_output=True, text=True)
        secret = json.loads(seeded.stdout)["secret"]
        gateway = start_gateway(env)
        client = httpx.Client(base_url=gateway.url + "/v1", timeout=30,
                              headers={"Authorization": f"Bearer {secret}"})

        first = client.post("/responses", json={"model": "gpt-4o-mini",
                                                "input": "remember the word kestrel"})
        assert first.status_code == 200, first.text
        response_id = first.json()["id"]
        # Written off the response path by the in-process writer: wait for the read.
        got = until(lambda: (r := client.get(f"/responses/{response_id}")).status_code == 200
                    and r, 10, "the stored response")
        assert got.json()["id"] == response_id and got.json()["status"] == "completed"
        items = client.get(f"/responses/{response_id}/input_items").json()
        assert [i["content"][0]["text"] for i in items["data"]] == ["remember the word kestrel"]

        # A stream this time: its stored copy carries the exact usage.cost (the SQLite
        # writer once failed on exactly that, and stored nothing).
        second = client.post("/responses", json={"model": "gpt-4o-mini", "stream": True,
                                                 "previous_response_id": response_id,
                                                 "input": "which word?"})
        assert second.status_code == 200, second.text
        events = [json.loads(line[6:]) for line in second.text.splitlines()
                  if line.startswith("data: {")]
        completed = [e["response"] for e in events if e["type"] == "response.completed"]
        assert completed and completed[0]["previous_response_id"] == response_id
        second_id = completed[0]["id"]
        stored = until(lambda: (r := client.get(f"/responses/{second_id}")).status_code == 200
                       and r, 10, "the stored stream")
        assert stored.json()["previous_response_id"] == response_id
        assert stored.json()["usage"] == completed[0]["usage"]
        missing = client.post("/responses", json={"model": "gpt-4o-mini",
                                                  "previous_response_id": "resp_nope",
                                                  "input": "x"})
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "previous_response_not_found"
    finally:
        if gateway is not None:
            stop(gateway.proc)
        stop(fake.proc)
