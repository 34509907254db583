"""Process faults under load, with real services: a gateway process killed, Redis stopped
and started again (both failure modes), PostgreSQL cut off. Afterwards: no served request
without its usage row, no money stranded in a reservation, balance = ledger = the sum of
what was charged, and the limiter's accounts in line with the database.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from io import StringIO
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import override_settings

import portal.infra.redis
from billing.models import ModelPrice, UsageLog
from billing.reconcile import account_drifts
from billing.services import ledger_mismatches, tenant_topup
from keys.models import Tenant
from portal.infra import rediskeys
from tests.conftest import UPSTREAM_SECRET, gateway_env
from tests.servers import (
    Gateway,
    RedisServer,
    TcpProxy,
    database_url,
    start_gateway,
    stop,
    terminate_backends,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.e2e,
    pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="the shared state is Redis"),
]

PRICE = Decimal("0.01")
HOLD = {"model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "[[fake hold=0.15]] hi"}]}


@dataclass
class Answer:
    status: int
    request_id: str
    code: str  # the error code, "transport" for a connection that broke, "" for a 200
    retry_after: str | None = None
    url: str = ""


async def _one(client: httpx.AsyncClient, url: str, secret: str, body: dict) -> Answer:
    try:
        resp = await client.post(url + "/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {secret}"})
    except httpx.TransportError:
        return Answer(0, "", "transport", url=url)
    code = "" if resp.status_code == 200 else resp.json()["error"]["code"]
    if resp.status_code == 200:
        assert resp.json()["choices"][0]["message"]["content"]  # a whole answer
    return Answer(resp.status_code, resp.headers.get("x-request-id", ""), code,
                  resp.headers.get("retry-after"), url)


def closed_loop(urls: list[str], secret: str, clients: int, seconds: float,
                body: dict = HOLD, during: list[tuple[float, object]] | None = None,
                answers: list[Answer] | None = None, stop: threading.Event | None = None
                ) -> list[Answer]:
    """``clients`` closed-loop clients for ``seconds`` (or until ``stop`` is set), client i
    on urls[i % len(urls)]; ``during``: (after seconds, callable) run in a thread while the
    load goes on; ``answers``: a list to append to as they come."""
    answers = [] if answers is None else answers

    async def client_loop(client: httpx.AsyncClient, url: str, until: float) -> None:
        while time.monotonic() < until and not (stop is not None and stop.is_set()):
            answers.append(await _one(client, url, secret, body))

    async def run() -> None:
        until = time.monotonic() + seconds
        limits_ = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients)
        async with httpx.AsyncClient(limits=limits_, timeout=30) as client:
            await asyncio.gather(*(client_loop(client, urls[i % len(urls)], until)
                                   for i in range(clients)))

    timers = [threading.Timer(after, action) for after, action in during or []]
    for timer in timers:
        timer.start()
    try:
        asyncio.run(run())
    finally:
        for timer in timers:
            timer.join()
    return answers


@contextmanager
def shared_state(redis_url: str, prefix: str) -> Iterator[None]:
    """Point this test process's Redis readers (billing check, the reconciler) at the
    gateways' Redis and prefix."""
    saved = portal.infra.redis._sync_client
    portal.infra.redis._sync_client = None
    try:
        with override_settings(REDIS_URL=redis_url, GATEWAY_REDIS_PREFIX=prefix):
            yield
    finally:
        client = portal.infra.redis._sync_client
        if client is not None:
            client.close()
        portal.infra.redis._sync_client = saved


def wait_until(check, timeout: float = 20.0, what: object = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, \
            f"timed out waiting for {what() if callable(what) else what}"
        time.sleep(0.05)


def wait_written(gateways: list[Gateway], journal_prefix: str) -> None:
    """Every usage row out of the gateways and the Redis journal, into the database."""
    from portal.infra.redis import sync_redis

    def quiet() -> bool:
        for gw in gateways:
            if gw.proc.poll() is not None:
                continue
            state = httpx.get(gw.url + "/_gateway/status").json()
            if state["in_flight"] or state["usage_pending"]:
                return False
        client = sync_redis()
        return not any(client.llen(j) or client.zcard(c)
                       for j, c, _ in rediskeys.usage_journals(prefix=journal_prefix))

    def state() -> str:
        client = sync_redis()
        states = [httpx.get(gw.url + "/_gateway/status").json() for gw in gateways
                  if gw.proc.poll() is None]
        journals = rediskeys.usage_journals(prefix=journal_prefix)
        return (f"{states} journal {sum(client.llen(j) for j, _, _ in journals)} "
                f"claims {sum(client.zcard(c) for _, c, _ in journals)}")

    wait_until(quiet, 30, state)


def assert_money_exact(tenant: Tenant, start: Decimal, answers: list[Answer]) -> None:
    """Every served request has exactly one row, charged once; balance = ledger = start -
    the sum of the rows' costs."""
    served = [a.request_id for a in answers if a.status == 200]
    rows = UsageLog.objects.filter(request_id__in=served)
    assert rows.count() == len(served), "a served request has no usage row"
    assert all(r.cost == PRICE for r in rows)
    tenant.refresh_from_db()
    charged = sum((r.cost for r in UsageLog.objects.filter(tenant=tenant)), Decimal(0))
    assert tenant.balance == start - charged
    assert ledger_mismatches() == []


@pytest.fixture
def priced(upstream, make_key):
    ModelPrice.objects.create(model="gpt-4o-mini", per_request=PRICE)
    made = make_key(concurrency=64)
    tenant_topup(tenant=made.key.tenant, amount=Decimal("100"))
    return made


def test_a_killed_gateway_strands_no_money_and_loses_no_served_row(priced, tmp_path):
    prefix = settings.GATEWAY_REDIS_PREFIX + "kill:"
    # Short leases and claim timeout: what the victim held comes back within seconds.
    env = gateway_env(GATEWAY_REDIS_PREFIX=prefix, GATEWAY_CONCURRENCY_LEASE_SECONDS="2",
                      GATEWAY_USAGE_CLAIM_SECONDS="2")
    with ThreadPoolExecutor(max_workers=2) as pool:  # two start-ups at once, not one by one
        survivor, victim = pool.map(lambda _: start_gateway(env), range(2))
    try:
        # Kill the victim once it has answered some requests, with others in flight on it
        # (however slow the machine: the kill follows what happened, not a clock).
        answers: list[Answer] = []
        stop_load = threading.Event()
        load = threading.Thread(target=closed_loop, kwargs=dict(
            urls=[survivor.base_url, victim.base_url], secret=priced.secret, clients=32,
            seconds=120, answers=answers, stop=stop_load))
        load.start()
        try:
            wait_until(lambda: sum(a.status == 200 and a.url == victim.base_url
                                   for a in answers) >= 20, 60, "the victim's answers")
            os.kill(victim.proc.pid, signal.SIGKILL)
            wait_until(lambda: sum(a.status == 200 and a.url == survivor.base_url
                                   for a in answers) >= 40, 60, "the survivor's answers")
        finally:
            stop_load.set()
            load.join()
        outcomes = Counter(a.code or "ok" for a in answers)
        assert outcomes["transport"] >= 1, outcomes  # the kill cut requests in flight
        assert set(outcomes) <= {"ok", "transport"}, outcomes
        wait_written([survivor, victim], prefix)
        with shared_state(settings.REDIS_URL, prefix):
            # The killed process's reservations are still held until their lease runs out.
            time.sleep(2.2)
            # An admission for the tenant gives them back (no task needed).
            assert httpx.post(survivor.base_url + "/chat/completions", json=HOLD, headers={
                "Authorization": f"Bearer {priced.secret}"}).status_code == 200
            wait_written([survivor], prefix)
            client = portal.infra.redis.sync_redis()
            assert client.zcard(rediskeys.reservations(priced.key.tenant_id)) == 0
            assert account_drifts(0.2) == []
            call_command("billing", "check", stdout=StringIO())
        assert_money_exact(priced.key.tenant, Decimal("100"), answers)
    finally:
        stop(survivor.proc)
        stop(victim.proc)


def gateway_on_own_redis(mode: str, prefix: str, log: Path) -> tuple[RedisServer, Gateway]:
    """A private redis-server (stoppable, its data kept across a restart) and a gateway on
    it with GATEWAY_REDIS_FAILURE=``mode``, logging at INFO to ``log``."""
    server = RedisServer(Path(tempfile.mkdtemp(prefix="tp-redis-")))
    server.start()
    env = gateway_env(REDIS_URL=server.url, GATEWAY_REDIS_PREFIX=prefix,
                      GATEWAY_REDIS_FAILURE=mode, GATEWAY_CONCURRENCY_LEASE_SECONDS="2",
                      LOG_LEVEL="INFO")
    return server, start_gateway(env, log=log)


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_redis_stopped_and_started_under_load(priced, mode, tmp_path):
    prefix = "gwfault:"
    log = tmp_path / "gateway.log"
    server, gw = gateway_on_own_redis(mode, prefix, log)
    try:
        answers = closed_loop([gw.base_url], priced.secret, 16, 4.0, during=[
            (1.0, server.stop), (2.5, server.start)])
        outcomes = Counter(a.code or "ok" for a in answers)
        if mode == "closed":
            refused = [a for a in answers if a.status == 503]
            assert refused, outcomes  # the outage was seen
            assert {a.code for a in refused} == {"limits_unavailable"}
            assert all(a.retry_after for a in refused)
            assert set(outcomes) == {"ok", "limits_unavailable"}, outcomes
        else:
            assert set(outcomes) == {"ok"}, outcomes  # served through the outage
        # Answers resumed after Redis came back.
        assert answers[-1].status == 200
        with shared_state(server.url, prefix):
            wait_written([gw], prefix)
            time.sleep(2.2)  # reservations whose settle met the outage expire
            assert httpx.post(gw.base_url + "/chat/completions", json=HOLD, headers={
                "Authorization": f"Bearer {priced.secret}"}).status_code == 200
            wait_written([gw], prefix)
            assert account_drifts(0.3) == []
            call_command("billing", "check", stdout=StringIO())
        answers_after = answers  # the extra request's row is checked by the money sum
        assert_money_exact(priced.key.tenant, Decimal("100"), answers_after)
        text = log.read_text()
        assert text.count("Redis is unreachable") == 1, text[-3000:]
        assert text.count("Redis is reachable again") == 1, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
    finally:
        stop(gw.proc)
        server.stop()


def test_an_idle_fail_open_gateway_pays_its_outage_debts_when_redis_returns(priced, tmp_path):
    """Requests served on this process's own limits during an outage are charged to the
    shared accounts as soon as Redis is back, with no further request to notice it: the
    health probe pings Redis once a second while it is away."""
    prefix = "gwidle:"
    log = tmp_path / "gateway.log"
    server, gw = gateway_on_own_redis("open", prefix, log)
    headers = {"Authorization": f"Bearer {priced.secret}"}
    try:
        answers = closed_loop([gw.base_url], priced.secret, 1, 0.5)  # the accounts exist
        server.stop()
        answers += closed_loop([gw.base_url], priced.secret, 2, 1.0)
        assert {a.status for a in answers} == {200}
        text = log.read_text()
        assert "Redis is unreachable" in text, text[-3000:]
        server.start()
        # No request from here on: only the probe can find Redis again.
        wait_until(lambda: "shared accounts charged for requests served meanwhile"
                   in log.read_text(), 15, lambda: log.read_text()[-2000:])
        assert "Redis is reachable again" in log.read_text()
        with shared_state(server.url, prefix):
            wait_written([gw], prefix)
            assert account_drifts(0.3) == []
            call_command("billing", "check", stdout=StringIO())
        assert_money_exact(priced.key.tenant, Decimal("100"), answers)
        status = httpx.post(gw.base_url + "/chat/completions", json=HOLD, headers=headers)
        assert status.status_code == 200
        assert "Traceback" not in log.read_text()
    finally:
        stop(gw.proc)
        server.stop()


def test_postgresql_cut_off_under_load_loses_no_row(priced):
    settings_dict = dict(connection.settings_dict)
    proxy = TcpProxy(int(settings_dict.get("PORT") or 5432))
    settings_dict.update(HOST="127.0.0.1", PORT=proxy.port)
    prefix = settings.GATEWAY_REDIS_PREFIX + "pgcut:"
    gw = start_gateway(gateway_env(DATABASE_URL=database_url(settings_dict),
                                   GATEWAY_REDIS_PREFIX=prefix))
    try:
        # Known before the cut: the key snapshot is in Redis by then.
        assert httpx.post(gw.base_url + "/chat/completions", json=HOLD, headers={
            "Authorization": f"Bearer {priced.secret}"}).status_code == 200

        def cut() -> None:
            proxy.pause()
            threading.Timer(1.5, proxy.resume).start()

        answers = closed_loop([gw.base_url], priced.secret, 16, 3.5, during=[(1.0, cut)])
        outcomes = Counter(a.code or "ok" for a in answers)
        assert set(outcomes) == {"ok"}, outcomes
        wait_written([gw], prefix)
        with shared_state(settings.REDIS_URL, prefix):
            assert account_drifts(0.2) == []
        assert_money_exact(priced.key.tenant, Decimal("100"), answers)
    finally:
        stop(gw.proc)
        proxy.pause()
        terminate_backends(proxy)


def test_a_client_with_its_whole_answer_finds_its_slot_free_on_any_process(
        gateway, gateway_default_ttl, upstream, make_key):
    """31 closed-loop clients on a concurrency-32 key, each alternating between two
    processes: not one refusal (the settle is done before the last bytes go out)."""
    made = make_key(concurrency=32)
    urls = [gateway.base_url, gateway_default_ttl.base_url]
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

    async def client_loop(client: httpx.AsyncClient, i: int) -> list[Answer]:
        return [await _one(client, urls[(i + n) % 2], made.secret, body) for n in range(30)]

    async def run() -> list[Answer]:
        async with httpx.AsyncClient(timeout=30) as client:
            results = await asyncio.gather(*(client_loop(client, i) for i in range(31)))
        return [a for r in results for a in r]

    answers = asyncio.run(run())
    assert Counter(a.code or "ok" for a in answers) == Counter({"ok": 31 * 30})


def test_when_every_credential_cools_the_client_gets_429_with_the_shortest_wait(
        gateway, upstream, api_key, fake_upstream):
    fake_upstream.script_key(UPSTREAM_SECRET, status=429, count=1)  # no Retry-After
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {api_key.secret}"}
    first = httpx.post(gateway.base_url + "/chat/completions", json=body, headers=headers)
    assert first.status_code == 429 and first.headers["retry-after"] == "5"
    second = httpx.post(gateway.base_url + "/chat/completions", json=body, headers=headers)
    assert second.status_code == 429, second.text
    assert second.json()["error"]["code"] == "upstream_rate_limited"
    wait = int(second.headers["retry-after"])
    assert 1 <= wait <= int(settings.GATEWAY_COOLDOWN_SECONDS)


def test_billing_check_reports_a_drifting_account_and_reconcile_puts_it_back(
        gateway, upstream, make_key):
    from portal.infra.redis import sync_redis

    ModelPrice.objects.create(model="gpt-4o-mini", per_request=PRICE)
    made = make_key()
    tenant_topup(tenant=made.key.tenant, amount=Decimal("10"))
    resp = httpx.post(gateway.base_url + "/chat/completions", json=HOLD,
                      headers={"Authorization": f"Bearer {made.secret}"})
    assert resp.status_code == 200
    wait_written([gateway], settings.GATEWAY_REDIS_PREFIX)
    call_command("billing", "check", stdout=StringIO())
    # What the negative max_tokens did: the account loses money nobody holds.
    account = rediskeys.account("tenant", made.key.tenant_id)
    sync_redis().hincrby(account, "avail", -2_000_000_000)
    err = StringIO()
    with pytest.raises(CommandError, match="drifting"):
        call_command("billing", "check", stdout=StringIO(), stderr=err)
    assert made.key.tenant.name in err.getvalue() and "-2000.000000" in err.getvalue()
    out = StringIO()
    call_command("billing", "reconcile", stdout=out)
    assert "1 account(s) corrected" in out.getvalue()
    call_command("billing", "check", stdout=StringIO())
    assert httpx.post(gateway.base_url + "/chat/completions", json=HOLD, headers={
        "Authorization": f"Bearer {made.secret}"}).status_code == 200
