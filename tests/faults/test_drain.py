"""Graceful drain (issue 16, ``portal.drain``), with real gateway processes: a stream in
flight when SIGTERM arrives finishes and is charged while /readyz says draining; one longer
than GATEWAY_DRAIN_SECONDS ends with its error event, charged for what was sent; and a
rolling restart of three gateways behind a real HAProxy loses no request, no stream and no
usage row.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from decimal import Decimal
from io import StringIO
from pathlib import Path

import httpx
import orjson
import pytest
from django.conf import settings
from django.core.management import call_command

from billing.models import ModelPrice, UsageLog
from billing.reconcile import account_drifts
from billing.services import ledger_mismatches, tenant_topup
from tests.conftest import gateway_env
from tests.faults.loadbalancer import (
    HAPROXY,
    all_answered,
    events,
    rolling_restart,
    start_haproxy,
    stream_body,
)
from tests.faults.test_process_faults import shared_state, wait_until, wait_written
from tests.servers import (
    ROOT,
    Gateway,
    free_port,
    new_log,
    start_gateway,
    stop,
    wait_for_port,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.e2e,
    pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="slots and rows go by Redis"),
]

PRICE = Decimal("0.01")  # per request
OUTPUT_PRICE = Decimal("1000")  # per million output tokens: 0.001 a token


@pytest.fixture
def priced(upstream, make_key):
    ModelPrice.objects.create(model="gpt-4o-mini", per_request=PRICE,
                              output_per_million=OUTPUT_PRICE)
    made = make_key(concurrency=64)
    tenant_topup(tenant=made.key.tenant, amount=Decimal("100"))
    return made


class StreamReader(threading.Thread):
    """One streamed request, read in a thread: ``first`` is set at the first event."""

    def __init__(self, url: str, secret: str, body: dict) -> None:
        super().__init__()
        self.url, self.secret, self.body = url, secret, body
        self.first = threading.Event()
        self.raw = b""
        self.status = 0
        self.request_id = ""
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            with httpx.stream("POST", self.url + "/chat/completions", json=self.body,
                              headers={"Authorization": f"Bearer {self.secret}"},
                              timeout=60) as resp:
                self.status = resp.status_code
                self.request_id = resp.headers.get("x-request-id", "")
                for chunk in resp.iter_raw():
                    self.raw += chunk
                    if b"data: " in self.raw:
                        self.first.set()
        except Exception as exc:  # reported by the test
            self.error = exc
        finally:
            self.first.set()


def row_of(request_id: str) -> UsageLog:
    wait_until(lambda: UsageLog.objects.filter(request_id=request_id).exists(), 20,
               f"the usage row of {request_id}")
    return UsageLog.objects.get(request_id=request_id)


DAPHNE = str(Path(sys.executable).with_name("daphne"))
LAUNCHERS = {"portal.server": [sys.executable, "-m", "portal.server"],
             "plain-daphne": [DAPHNE if os.path.exists(DAPHNE) else "daphne"]}


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_a_stream_in_flight_at_sigterm_finishes_and_is_charged(priced, launcher):
    prefix = settings.GATEWAY_REDIS_PREFIX + "drain1:"
    gw = start_gateway_on(free_port(), gateway_env(
        GATEWAY_REDIS_PREFIX=prefix, GATEWAY_DRAIN_SECONDS="30",
        GATEWAY_DRAIN_GRACE_SECONDS="1.5"), LAUNCHERS[launcher])
    try:
        reader = StreamReader(gw.base_url, priced.secret,
                              stream_body("[[fake chunks=12 delay=0.25]] hi"))
        reader.start()
        assert reader.first.wait(30) and reader.error is None, reader.error
        gw.proc.send_signal(signal.SIGTERM)
        # Readiness goes false at once (the listener stays open for the grace).
        wait_until(lambda: httpx.get(gw.url + "/readyz", timeout=5).status_code == 503, 5,
                   "readiness to say draining")
        ready = httpx.get(gw.url + "/readyz", timeout=5)
        assert ready.status_code == 503 and "draining" in ready.json()["failed"]
        assert ready.headers["connection"] == "close"  # no kept-alive connection while draining
        reader.join(60)
        assert reader.error is None, reader.error
        assert reader.status == 200
        data = events(reader.raw)
        assert data[-1] == b"[DONE]"
        chunks = [orjson.loads(d) for d in data[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content") or ""
                       for c in chunks if c.get("choices"))
        assert text == "".join(f"tok{i} " for i in range(12))
        usage = [c["usage"] for c in chunks if c.get("usage")]
        assert usage and usage[-1]["completion_tokens"] == 12
        assert gw.proc.wait(60) == 0
        row = row_of(reader.request_id)
        assert (row.status_code, row.error_code, row.output_tokens) == (200, "", 12)
        assert row.cost == PRICE + 12 * OUTPUT_PRICE / 1_000_000
        assert any("drained in" in line for line in gw.log_lines())
        with shared_state(settings.REDIS_URL, prefix):
            assert account_drifts(0.2) == []  # the slot and the reservation were given back
        priced.key.tenant.refresh_from_db()
        assert priced.key.tenant.balance == Decimal("100") - row.cost
        assert ledger_mismatches() == []
    finally:
        stop(gw.proc)


def test_a_stream_longer_than_the_drain_is_ended_with_its_error_event(priced):
    prefix = settings.GATEWAY_REDIS_PREFIX + "drain2:"
    gw = start_gateway(gateway_env(GATEWAY_REDIS_PREFIX=prefix, GATEWAY_DRAIN_SECONDS="1.5",
                                   GATEWAY_DRAIN_GRACE_SECONDS="0.5"))
    try:
        reader = StreamReader(gw.base_url, priced.secret,
                              stream_body("[[fake chunks=200 delay=0.1]] hi"))
        reader.start()
        assert reader.first.wait(30) and reader.error is None, reader.error
        gw.proc.send_signal(signal.SIGTERM)
        reader.join(60)
        assert reader.error is None, reader.error  # ended properly, not a broken connection
        assert reader.status == 200
        data = events(reader.raw)
        last = orjson.loads(data[-1])
        assert last["error"]["code"] == "server_shutting_down", last
        sent = sum(1 for d in data[:-1]
                   if (orjson.loads(d).get("choices") or [{}])[0].get("delta", {}).get("content"))
        assert 0 < sent < 200
        assert gw.proc.wait(60) == 0
        row = row_of(reader.request_id)
        assert row.error_code == "server_shutting_down"
        # Charged for what was sent: the tokens relayed before the cut, counted.
        assert row.output_tokens >= sent
        assert row.cost == PRICE + row.output_tokens * OUTPUT_PRICE / 1_000_000
        with shared_state(settings.REDIS_URL, prefix):
            assert account_drifts(0.2) == []
        priced.key.tenant.refresh_from_db()
        assert priced.key.tenant.balance == Decimal("100") - row.cost
        assert ledger_mismatches() == []
    finally:
        stop(gw.proc)


def test_a_request_served_during_the_grace_has_its_row_written_before_exit(priced):
    """A process's first request arrives while it drains: the writer it starts (after the
    shutdown's triggers were called) is flushed before the process exits."""
    # The writer waits 60 s between writes: only its flush at shutdown writes the row.
    gw = start_gateway(gateway_env(GATEWAY_DRAIN_SECONDS="30", GATEWAY_DRAIN_GRACE_SECONDS="2",
                                   GATEWAY_USAGE_FLUSH_INTERVAL="60"))
    try:
        gw.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: httpx.get(gw.url + "/readyz", timeout=5).status_code == 503, 5,
                   "readiness to say draining")
        resp = httpx.post(gw.base_url + "/chat/completions", timeout=10, json={
            "model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {priced.secret}"})
        assert resp.status_code == 404 and resp.headers["connection"] == "close"
        assert gw.proc.wait(60) == 0
        row = row_of(resp.headers["x-request-id"])
        assert (row.status_code, row.error_code) == (404, "model_not_found")
    finally:
        stop(gw.proc)


def test_a_request_still_arriving_as_the_drain_starts_is_the_last_on_its_connection(priced):
    """Its headers came before the signal (so Twisted had already chosen to keep the
    connection alive), its body during the grace: it is answered with ``Connection: close``
    and the connection is closed after it while the process still serves, so no kept-alive
    connection is left for a balancer to reuse when the process stops listening."""
    gw = start_gateway(gateway_env(GATEWAY_DRAIN_SECONDS="30", GATEWAY_DRAIN_GRACE_SECONDS="10"))
    body = orjson.dumps({"model": "no-such-model",
                         "messages": [{"role": "user", "content": "hi"}]})
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
            f"Authorization: Bearer {priced.secret}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    host, port = gw.url.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=20) as sock:
            sock.sendall(head)
            # Nothing to wait on: the idle reactor reads the headers at once. Were it slower
            # than this, the request would only count as one arriving during the drain (the
            # test would then pass without exercising the case, never fail wrongly).
            time.sleep(0.5)
            gw.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: httpx.get(gw.url + "/readyz", timeout=5).status_code == 503, 5,
                       "readiness to say draining")
            sock.sendall(body)
            raw = b""
            while chunk := sock.recv(65536):  # until the gateway closes the connection
                raw += chunk
            closed_while_serving = gw.proc.poll() is None and \
                httpx.get(gw.url + "/readyz", timeout=5).status_code == 503
        status_line, _, rest = raw.partition(b"\r\n")
        headers = rest.partition(b"\r\n\r\n")[0].lower().split(b"\r\n")
        assert status_line.startswith(b"HTTP/1.1 404"), raw[:300]
        assert b"connection: close" in headers, raw[:600]
        assert closed_while_serving  # closed after its answer, not at the end of the grace
        assert gw.proc.wait(60) == 0
    finally:
        stop(gw.proc)


def test_a_websocket_finishes_its_turn_then_closes_going_away(priced):
    import aiohttp

    gw = start_gateway(gateway_env(GATEWAY_DRAIN_SECONDS="30", GATEWAY_DRAIN_GRACE_SECONDS="0.5"))
    url = "ws" + gw.url.removeprefix("http") + "/v1/responses"
    headers = {"Authorization": f"Bearer {priced.secret}",
               "OpenAI-Beta": "responses_websockets=2026-02-06"}

    async def scenario() -> tuple[list[dict], tuple, tuple]:
        async with aiohttp.ClientSession() as session, \
                session.ws_connect(url, headers=headers) as busy, \
                session.ws_connect(url, headers=headers) as idle:
            await busy.send_str(orjson.dumps({
                "type": "response.create", "model": "gpt-4o-mini", "store": False,
                "input": "[[fake chunks=10 delay=0.2]] hi"}).decode())
            frames = [orjson.loads((await busy.receive(timeout=15)).data)]
            gw.proc.send_signal(signal.SIGTERM)
            # The idle socket closes at once, with 1001; the busy one finishes its turn.
            idle_end = await idle.receive(timeout=15)
            while frames[-1]["type"] not in ("response.completed", "response.failed", "error"):
                msg = await busy.receive(timeout=15)
                assert msg.type == aiohttp.WSMsgType.TEXT, (msg.type, msg.data)
                frames.append(orjson.loads(msg.data))
            busy_end = await busy.receive(timeout=15)
            return frames, (idle_end.type, idle.close_code), (busy_end.type, busy.close_code)

    try:
        frames, idle_end, busy_end = asyncio.run(scenario())
        assert idle_end == (aiohttp.WSMsgType.CLOSE, 1001)
        assert frames[-1]["type"] == "response.completed"
        text = "".join(f.get("delta", "") for f in frames
                       if f["type"] == "response.output_text.delta")
        assert text == "".join(f"tok{i} " for i in range(10))
        assert busy_end == (aiohttp.WSMsgType.CLOSE, 1001)
        assert gw.proc.wait(60) == 0
        wait_until(lambda: UsageLog.objects.filter(key=priced.key).exists(), 20,
                   "the turn's usage row")
        row = UsageLog.objects.get(key=priced.key)
        assert (row.status_code, row.error_code, row.output_tokens) == (200, "", 10)
    finally:
        stop(gw.proc)


# --- a rolling restart behind HAProxy ------------------------------------------------------

def start_gateway_on(port: int, env: dict[str, str],
                     command: list[str] | None = None) -> Gateway:
    """A gateway on a given port (a restarted one takes its predecessor's); ``command``:
    how it is launched (default ``python -m portal.server``)."""
    log = new_log("gateway")
    full = {**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings", **env}
    command = command or [sys.executable, "-m", "portal.server"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [*command, "-b", "127.0.0.1", "-p", str(port), "portal.asgi:application"],
            cwd=ROOT, env=full, stdout=out, stderr=subprocess.STDOUT)
    wait_for_port(port, proc, timeout=60)
    return Gateway(proc=proc, url=f"http://127.0.0.1:{port}", log=log)


@pytest.mark.skipif(not (shutil.which("haproxy") or Path(HAPROXY).exists()),
                    reason="HAProxy is not installed (apt-get install haproxy)")
def test_a_rolling_restart_behind_haproxy_loses_nothing(priced, tmp_path):
    prefix = settings.GATEWAY_REDIS_PREFIX + "drain3:"
    env = gateway_env(GATEWAY_REDIS_PREFIX=prefix, GATEWAY_DRAIN_SECONDS="30",
                      GATEWAY_DRAIN_GRACE_SECONDS="1")
    ports = [free_port() for _ in range(3)]
    gateways = [start_gateway_on(p, env) for p in ports]
    retired: list[Gateway] = []
    proxy = start_haproxy([("127.0.0.1", p) for p in ports], tmp_path)

    def restart(i: int) -> None:
        old = gateways[i]
        old.proc.send_signal(signal.SIGTERM)
        assert old.proc.wait(60) == 0, old.log.read_text()[-3000:]
        retired.append(old)
        gateways[i] = start_gateway_on(ports[i], env)

    try:
        wait_until(lambda: set(proxy.states().values()) == {"UP"}, 30,
                   lambda: f"HAProxy to see every gateway up: {proxy.states()}")
        results = rolling_restart(proxy, proxy.url + "/v1", priced.secret, 12, len(ports),
                                  restart)
        ids = all_answered(results, proxy)
        wait_written(gateways, prefix)
        # Exactly one row for every answered request, each charged what it cost.
        rows = {r.request_id: r for r in UsageLog.objects.filter(request_id__in=ids)}
        assert len(rows) == len(ids), f"{len(ids) - len(rows)} answered requests have no row"
        assert all(row.status_code == 200 and row.error_code == "" for row in rows.values())
        tenant = priced.key.tenant
        tenant.refresh_from_db()
        charged = sum((row.cost for row in UsageLog.objects.filter(tenant=tenant)), Decimal(0))
        assert charged == sum(row.cost for row in rows.values())
        assert tenant.balance == Decimal("100") - charged
        assert ledger_mismatches() == []
        with shared_state(settings.REDIS_URL, prefix):
            assert account_drifts(0.2) == []
            call_command("billing", "check", stdout=StringIO())
    finally:
        stop(proxy.proc)
        for gw in gateways + retired:
            stop(gw.proc)
