"""How the gateway process starts and stops: ``python -m portal.server`` and a plain
``daphne portal.asgi:application`` both get the tuning that needs no launcher (only the
former runs on uvloop), and a process stopped with SIGTERM writes its usage, closes its
upstream connections and exits 0. Real processes throughout."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings

from billing.models import UsageLog
from portal.tuning import GC_THRESHOLD
from tests.conftest import gateway_env
from tests.servers import ROOT, free_port, stop, wait_for_port

FAST_PARSER = "portal.tuning.parse_content_type"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60,
                          env={**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings"})


def test_importing_portal_asgi_applies_the_content_type_patch_and_settles_the_heap_once() -> None:
    done = python("""
import gc
from twisted.web import http
twisteds = http._parseContentType
assert gc.get_freeze_count() == 0

import portal.asgi
from portal import tuning

fast = http._parseContentType
assert fast is not twisteds and fast is tuning.parse_content_type
frozen = gc.get_freeze_count()
assert frozen > 10_000, frozen  # the loaded application, out of the collector's sight
assert gc.get_threshold() == tuning.GC_THRESHOLD

# Applying again (a second apply(), the module run again) patches and freezes nothing more.
freezes = []
real_freeze = gc.freeze
gc.freeze = lambda: freezes.append(1) or real_freeze()
tuning.apply()
import importlib
importlib.reload(portal.asgi)
assert http._parseContentType is fast
assert freezes == [], freezes
assert gc.get_threshold() == tuning.GC_THRESHOLD

FORM = b"application/x-www-form-urlencoded"
for header, media_type in [(b"application/json; charset=utf-8", b"application/json"),
                           (b"Multipart/Form-Data; boundary=x", b"multipart/form-data"),
                           (FORM, FORM), (b"", b"text/plain"), (b"garbage", b"text/plain")]:
    assert fast(header) == twisteds(header) == media_type, (header, fast(header))
print("ok")
""")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def start(command: list[str], **popen: Any) -> tuple[subprocess.Popen[Any], str]:
    port = free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings", **gateway_env()}
    proc = subprocess.Popen([*command, "-b", "127.0.0.1", "-p", str(port),
                             "tests.portal.asgi_probe:application"], cwd=ROOT, env=env,
                            **popen)
    wait_for_port(port, proc)
    return proc, f"http://127.0.0.1:{port}"


DAPHNE = str(Path(sys.executable).with_name("daphne"))
LAUNCHERS = {
    "portal.server": ([sys.executable, "-m", "portal.server"], "uvloop"),
    "plain-daphne": ([DAPHNE] if os.path.exists(DAPHNE) else [shutil.which("daphne") or "daphne"],
                     "asyncio.unix_events"),
}


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_both_launch_commands_serve_v1_with_the_tuning_only_uvloop_needs_the_launcher(
        launcher: str, upstream: Any, api_key: Any) -> None:
    command, loop = LAUNCHERS[launcher]
    proc, url = start(command)
    try:
        probe = httpx.get(url + "/_probe", timeout=10).json()
        assert probe["loop"] == loop
        assert probe["content_type_parser"] == FAST_PARSER
        assert probe["frozen"] > 10_000
        assert tuple(probe["threshold"]) == GC_THRESHOLD
        # The parser's answer still drives Twisted: a JSON body with parameters is served,
        # and a form body is not mistaken for anything the gateway reads.
        resp = httpx.post(url + "/v1/chat/completions", content=json.dumps(CHAT),
                          headers={"Authorization": f"Bearer {api_key.secret}",
                                   "Content-Type": "application/json; charset=utf-8"},
                          timeout=20)
        assert resp.status_code == 200, resp.text
        wait_for_quiet(url)
    finally:
        stop(proc)


def wait_for_quiet(url: str) -> None:
    """The process has answered and written every usage row (the database flush between
    tests must not race it)."""
    import time

    deadline = time.monotonic() + 15
    while True:
        state = httpx.get(url + "/_gateway/status", timeout=5).json()
        if state["in_flight"] == 0 and state["usage_pending"] == 0 and \
                not state.get("usage_journal"):
            return
        assert time.monotonic() < deadline, state
        time.sleep(0.02)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_sigterm_after_serving_writes_the_usage_closes_upstream_sessions_and_exits_0(
        upstream: Any, api_key: Any, tmp_path: Path) -> None:
    """The usage flush interval is far longer than the test, so the row can only have been
    written by the shutdown flush; the upstream session is closed after it."""
    port = free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings",
           # Its own Redis prefix: no other gateway of the test run writes its journal.
           **gateway_env(GATEWAY_USAGE_FLUSH_INTERVAL="300", LOG_LEVEL="INFO",
                         GATEWAY_REDIS_PREFIX=settings.GATEWAY_REDIS_PREFIX + "shutdown:"),
           "PYTHONWARNINGS": "default", "PYTHONASYNCIODEBUG": "0", "PYTHONFAULTHANDLER": "1"}
    stderr = (tmp_path / "stderr").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "portal.server", "-b", "127.0.0.1", "-p",
                             str(port)], cwd=ROOT, env=env, stderr=stderr)
    try:
        wait_for_port(port, proc)
        url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {api_key.secret}"}
        request_ids = []
        for stream in (False, True):
            resp = httpx.post(url + "/v1/chat/completions", json={**CHAT, "stream": stream},
                              headers=headers, timeout=20)
            assert resp.status_code == 200, resp.text
            request_ids.append(resp.headers["x-request-id"])
        state = httpx.get(url + "/_gateway/status").json()
        # Rows wait in the Redis journal with Redis (durable already), in memory without.
        assert (state["usage_journal"] if settings.REDIS_URL else state["usage_pending"]) == 2
        assert not UsageLog.objects.filter(request_id__in=request_ids).exists()

        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
            proc.wait(timeout=10)
            stderr.seek(0)
            pytest.fail("the server did not stop within 30 s of SIGTERM:\n" + stderr.read())
        assert code == 0
    finally:
        stop(proc)
    stderr.seek(0)
    log = stderr.read()
    assert "Unclosed client session" not in log, log
    assert "Unclosed connector" not in log, log
    assert "Traceback" not in log, log
    assert set(UsageLog.objects.filter(request_id__in=request_ids)
               .values_list("request_id", flat=True)) == set(request_ids)
