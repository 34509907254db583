"""/healthz and /readyz (gateway.readiness): served by the lean ASGI app, 503 with the failed
check named when the database or Redis does not answer or the process is draining."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from typing import Any

import httpx
import orjson
import pytest
from django.conf import settings
from django.db import connection, connections

from gateway import readiness
from portal.infra import shutdown
from tests.conftest import gateway_env
from tests.gateway.webhooks import wait_for
from tests.servers import TcpProxy, database_url, free_port, start_gateway, stop, terminate_backends

pytestmark = [pytest.mark.django_db(transaction=True)]


def probe(url: str) -> tuple[int, dict[str, Any]]:
    resp = httpx.get(url, timeout=10)
    assert resp.headers["cache-control"] == "no-store"
    return resp.status_code, resp.json()


@pytest.mark.e2e
def test_a_healthy_gateway_is_alive_and_ready(gateway):
    assert probe(gateway.url + "/healthz") == (200, {"status": "ok"})
    status, body = probe(gateway.url + "/readyz")
    assert status == 200, body
    assert body == {"status": "ok", "checks": {
        "database": "ok", "redis": "ok" if settings.REDIS_URL else "not configured",
        "draining": False}}
    # The Django view that used to answer /healthz is gone; the status page stays.
    assert httpx.get(gateway.url + "/_gateway/status").json()["ok"] is True


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["closed", "open"])
def test_redis_unreachable_makes_the_process_unready_unless_failing_open(mode):
    gw = start_gateway(gateway_env(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
                                   GATEWAY_REDIS_FAILURE=mode))
    try:
        assert probe(gw.url + "/healthz") == (200, {"status": "ok"})
        status, body = probe(gw.url + "/readyz")
        assert body["checks"]["database"] == "ok"
        assert body["checks"]["redis"] != "ok"
        if mode == "closed":
            assert status == 503 and body["failed"] == ["redis"], body
            assert body["status"] == "unavailable"
        else:  # it serves with its own limits meanwhile: still ready
            assert status == 200, body
    finally:
        stop(gw.proc)


@pytest.mark.e2e
def test_a_database_cut_off_makes_the_process_unready_until_it_is_back():
    settings_dict = dict(connection.settings_dict)
    if settings_dict["ENGINE"].endswith("sqlite3"):
        pytest.skip("PostgreSQL through a proxy that can be cut")
    proxy = TcpProxy(int(settings_dict.get("PORT") or 5432))
    settings_dict.update(HOST="127.0.0.1", PORT=proxy.port)
    gw = start_gateway(gateway_env(DATABASE_URL=database_url(settings_dict)))
    try:
        assert probe(gw.url + "/readyz")[0] == 200
        proxy.pause()
        status, body = wait_for(lambda: (r := probe(gw.url + "/readyz"))[0] == 503 and r, 20,
                                "/readyz failing")
        assert body["failed"] == ["database"], body
        assert probe(gw.url + "/healthz")[0] == 200  # alive all the same
        proxy.resume()
        wait_for(lambda: probe(gw.url + "/readyz")[0] == 200, 20, "/readyz passing again")
    finally:
        stop(gw.proc)
        proxy.pause()
        terminate_backends(proxy)


async def call(app: Any) -> tuple[int, dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": "/readyz"}, receive, send)
    return sent[0]["status"], orjson.loads(sent[1]["body"])


def test_a_draining_process_is_alive_but_not_ready():
    try:
        assert asyncio.run(call(readiness.readyz_app))[0] == 200
        shutdown.start_draining()
        status, body = asyncio.run(call(readiness.readyz_app))
        assert status == 503 and body["failed"] == ["draining"], body
        assert body["checks"]["draining"] is True and body["checks"]["database"] == "ok"
        assert asyncio.run(call(readiness.healthz_app)) == (200, {"status": "ok"})
    finally:
        shutdown.stop_draining()
        readiness._db_thread.submit(connections.close_all).result()


@pytest.mark.e2e
def test_sigterm_marks_the_process_draining_before_daphne_cancels_its_requests(
        upstream, api_key, tmp_path):
    """A real daphne with a slow stream open and the drain off (GATEWAY_DRAIN_SECONDS=0,
    the graceful drain is tests/faults/test_drain.py's): on SIGTERM the draining flag (what
    /readyz reads) is set first, then daphne cancels the request. The flag itself is read
    by the test above; between the two steps the process may be gone too soon to probe."""
    log = tmp_path / "gateway.log"
    gw = start_gateway(gateway_env(LOG_LEVEL="INFO", GATEWAY_DRAIN_SECONDS="0"), log=log)
    started = threading.Event()

    def stream() -> None:
        try:
            with httpx.stream("POST", gw.base_url + "/chat/completions", timeout=30,
                              headers={"Authorization": f"Bearer {api_key.secret}"},
                              json={"model": "gpt-4o-mini", "stream": True, "messages": [
                                  {"role": "user",
                                   "content": "[[fake chunks=100 delay=0.1]] slow"}]}) as resp:
                for _ in resp.iter_bytes():
                    started.set()
        except httpx.HTTPError:
            pass

    reader = threading.Thread(target=stream, daemon=True)
    reader.start()
    try:
        assert started.wait(20), "the stream did not start"
        os.kill(gw.proc.pid, signal.SIGTERM)
        gw.proc.wait(timeout=30)
    finally:
        stop(gw.proc)
    reader.join(10)
    text = log.read_text()
    assert "shutting down: draining, /readyz answers 503" in text, text[-3000:]
    assert text.index("shutting down: draining") < text.index(
        "Killed 1 pending application instances"), text[-3000:]
