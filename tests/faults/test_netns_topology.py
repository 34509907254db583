"""Many hosts, simulated (issue 16): network namespaces made here (tests/faults/netns.py)
hold a load balancer (HAProxy), three gateway hosts running two ``web`` processes each, a
Redis host, a PostgreSQL host (a cluster of its own) and the fake upstream's host, 1 ms
apart where the kernel has netem. Every Turnpike process is started from the deployment
topology (tests/deploy/topology.py): ``migrate`` once, six ``web``, one ``usagewriter``
(usage rows go by the Redis journal, as with more than one process in production).

Across the six processes: RPM, RPD, TPM, concurrency and balance stay exact; a session
sticks to one credential whichever process serves it; a cool-down one process sets is
honoured by all; an admin change reaches every process within the snapshot TTL; and a
rolling restart of all six behind HAProxy under mixed load loses no request, no stream and
no usage row.

This test process talks to the hosts over the bridge (10.77.0.1): its ORM is pointed at
the PostgreSQL host's database and its Redis readers at the Redis host for this module.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from io import StringIO
from typing import Any

import httpx
import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connections

from billing.models import ModelPrice, UsageLog
from billing.reconcile import account_drifts
from billing.services import ledger_mismatches, tenant_topup
from gateway.services import upstream_create
from keys.models import ApiKey
from keys.services import CreatedKey, key_create, tenant_get_or_create
from tests.conftest import DEMO_MODELS, gateway_env
from tests.faults import netns
from tests.faults.loadbalancer import HAProxy, all_answered, rolling_restart, start_haproxy
from tests.faults.test_process_faults import shared_state, wait_until, wait_written
from tests.gateway.test_policy_processes import burst as policy_burst
from tests.servers import FakeUpstream, Gateway, new_log, stop, wait_for_port

pytestmark = [pytest.mark.e2e]

PRICE = Decimal("0.01")  # per request
DATABASE = "turnpike"
WEB_PORTS = (8000, 8001)  # two web processes on each gateway host
GATEWAY_HOSTS = ("gw1", "gw2", "gw3")
UPSTREAM_PORT = 9000
REDIS_PORT = 6379
LB_PORT, STATS_PORT = 80, 8404
SNAPSHOT_TTL = 1.0  # GATEWAY_SNAPSHOT_TTL, the production default
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Topology:
    proxy: HAProxy
    upstream: FakeUpstream
    env: dict[str, str]
    places: list[tuple[str, int]]  # (host, port) of each web process, HAProxy's g0..g5
    gateways: list[Gateway] = field(default_factory=list)
    retired: list[Gateway] = field(default_factory=list)
    others: list[subprocess.Popen[Any]] = field(default_factory=list)

    @property
    def lb(self) -> str:
        return self.proxy.url + "/v1"

    @property
    def urls(self) -> list[str]:
        """Each web process's /v1, directly (not through the balancer)."""
        return [gw.base_url for gw in self.gateways]

    def restart(self, i: int) -> None:
        """SIGTERM web process ``i``, wait for its exit (it drains first), start it again."""
        old = self.gateways[i]
        old.proc.send_signal(signal.SIGTERM)
        assert old.proc.wait(90) == 0, old.log.read_text()[-3000:]
        self.retired.append(old)
        host, port = self.places[i]
        self.gateways[i] = netns.start_web(host, port, self.env)


def _point_orm_at(url_parts: dict[str, str]) -> dict[str, Any]:
    """Point the default database alias at another server (in place: the connection keeps
    a reference to this dict); returns what it was. The content types cached from the
    other database go too: their ids differ between the two (an audit entry written with
    a cached id broke its foreign key)."""
    from django.contrib.contenttypes.models import ContentType

    for conn in connections.all():
        conn.close()
    db = connections.databases["default"]
    saved = dict(db)
    db.update(url_parts)
    ContentType.objects.clear_cache()
    return saved


def _redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="module")
def topology(django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Topology]:
    if os.geteuid() != 0:
        raise RuntimeError("the namespace topology needs root (ip netns, runuser)")
    if not shutil.which("ip"):
        raise RuntimeError("the namespace topology needs iproute2 (apt-get install iproute2)")
    workdir = tmp_path_factory.mktemp("netns")
    with django_db_blocker.unblock(), netns.exclusive():
        postgres: netns.Postgres | None = None
        started: list[subprocess.Popen[Any]] = []
        saved: dict[str, Any] | None = None
        topo: Topology | None = None
        try:
            delayed = netns.build()
            postgres = netns.Postgres()
            postgres.start(netns.service_bind("pg", delayed))
            if not delayed:  # no netem here: the relays add the hosts' latency
                started.append(netns.relay("pg", netns.Postgres.PORT))
                wait_for_port(netns.Postgres.PORT, started[-1], host=netns.address("pg"))
            with psycopg.connect(postgres.url("postgres"), autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')
            redis_log = open(new_log("redis-netns"), "ab")  # noqa: SIM115
            redis = subprocess.Popen(
                [*netns.inside("redis"), "redis-server", "--bind",
                 netns.service_bind("redis", delayed),
                 "--port", str(REDIS_PORT), "--protected-mode", "no", "--save", "",
                 "--appendonly", "no"],
                stdout=redis_log, stderr=subprocess.STDOUT)
            started.append(redis)
            if not delayed:
                started.append(netns.relay("redis", REDIS_PORT))
            wait_for_port(REDIS_PORT, started[-1], host=netns.address("redis"))
            wait_until(lambda: _redis_answers(f"redis://{netns.address('redis')}:{REDIS_PORT}"),
                       30, lambda: "Redis on the redis host to answer")
            up = subprocess.Popen(
                [*netns.inside("up"), sys.executable, "-m",
                 "tests.fakeupstream", "--host", netns.address("up"), "--port",
                 str(UPSTREAM_PORT)], cwd=netns.ROOT)
            started.append(up)
            wait_for_port(UPSTREAM_PORT, up, host=netns.address("up"))
            upstream = FakeUpstream(up, f"http://{netns.address('up')}:{UPSTREAM_PORT}")
            redis_url = f"redis://{netns.address('redis')}:{REDIS_PORT}/0"
            env = {**gateway_env(
                DATABASE_URL=postgres.url(DATABASE), REDIS_URL=redis_url,
                GATEWAY_USAGE_SINK="redis", GATEWAY_SNAPSHOT_TTL=str(SNAPSHOT_TTL),
                GATEWAY_DRAIN_SECONDS="30", GATEWAY_DRAIN_GRACE_SECONDS="1"),
                "DJANGO_SETTINGS_MODULE": "portal.settings"}
            env = {**os.environ, **env}
            netns.run("gw1", "migrate", env)
            saved = _point_orm_at({"HOST": netns.address("pg"), "PORT": "5432",
                                   "NAME": DATABASE, "USER": "postgres", "PASSWORD": ""})
            upstream_create(name="fake", kind="openai", base_url=upstream.openai_url,
                            models=DEMO_MODELS, api_keys=["sk-up-main"])
            ModelPrice.objects.create(model="gpt-4o-mini", per_request=PRICE)
            places = [(host, port) for host in GATEWAY_HOSTS for port in WEB_PORTS]
            proxy = start_haproxy(
                [(netns.address(host), port) for host, port in places], workdir,
                bind=netns.address("lb"), port=LB_PORT, stats_port=STATS_PORT,
                launcher=netns.inside("lb"))
            started.append(proxy.proc)
            topo = Topology(proxy, upstream, env, places)
            topo.others.append(netns.start("gw2", "usagewriter", env))
            topo.gateways += [netns.launch_web(host, port, env) for host, port in places]
            for gw in topo.gateways:  # started together, they take their time together
                netns.wait_listening(gw)
            wait_until(lambda: set(proxy.states().values()) == {"UP"}, 120,
                       lambda: f"HAProxy to see every gateway up: {proxy.states()}; "
                       f"{topo.gateways[0].log.read_text(errors='replace')[-2000:]}")
            with shared_state(redis_url, settings.GATEWAY_REDIS_PREFIX):
                yield topo
        finally:
            if topo is not None:
                for gw in topo.gateways + topo.retired:
                    stop(gw.proc)
                for proc in topo.others:
                    stop(proc)
            for proc in started:
                stop(proc)
            if saved is not None:
                _point_orm_at(saved)
            if postgres is not None:
                postgres.stop()
            netns.tear_down()


@pytest.fixture
def quiet(topology: Topology) -> Iterator[Topology]:
    """After a test: every process idle and every usage row written (the journal empty)."""
    yield topology
    wait_written(topology.gateways, settings.GATEWAY_REDIS_PREFIX)


_serial = iter(range(1, 10_000))


def new_key(**limits: Any) -> CreatedKey:
    """A key of a new tenant holding 100 (unless ``balance`` says otherwise)."""
    balance = limits.pop("balance", Decimal("100"))
    tenant, _ = tenant_get_or_create(name=f"netns tenant {next(_serial)}")
    if balance:
        tenant_topup(tenant=tenant, amount=balance)
    return key_create(tenant=tenant, name="netns key", **limits)


def burst(urls: list[str], secret: str, count: int,
          body: dict | None = None) -> list[httpx.Response]:
    """As the two-process tests' burst, with room for six processes on a loaded machine."""
    return policy_burst(urls, secret, count, body, timeout=90)


def outcome(responses: list[httpx.Response]) -> Counter[str]:
    """"ok" or the error code of each answer; every refusal is an OpenAI error envelope."""
    codes: Counter[str] = Counter()
    for resp in responses:
        if resp.status_code == 200:
            codes["ok"] += 1
            continue
        error = resp.json()["error"]
        assert error["message"] and error["type"], error
        codes[error["code"]] += 1
    return codes


def test_rpm_60_lets_exactly_60_of_300_simultaneous_requests_through_six_processes(quiet):
    made = new_key(rpm=60)
    before = quiet.proxy.sessions()
    responses = burst([quiet.lb], made.secret, 300)
    assert outcome(responses) == Counter({"ok": 60, "rate_limit_rpm": 240})
    assert all(r.status_code == 429 for r in responses if r.status_code != 200)
    after = quiet.proxy.sessions()
    assert all(after[name] > before[name] for name in before), (before, after)


def test_rpd_is_exact_across_the_processes(quiet):
    made = new_key(rpd=7)
    assert outcome(burst([quiet.lb], made.secret, 40)) == Counter({"ok": 7,
                                                                    "rate_limit_rpd": 33})
    # Every process, asked directly, agrees the day is used up.
    assert outcome(burst(quiet.urls, made.secret, 6)) == Counter({"rate_limit_rpd": 6})


def test_a_balance_for_20_requests_is_spent_exactly_never_overdrawn(quiet):
    made = new_key(balance=20 * PRICE)
    responses = burst([quiet.lb], made.secret, 120)
    assert outcome(responses) == Counter({"ok": 20, "quota_exceeded": 100})
    served = [r.headers["x-request-id"] for r in responses if r.status_code == 200]
    wait_until(lambda: UsageLog.objects.filter(request_id__in=served).count() == 20, 30,
               "the 20 usage rows")
    assert UsageLog.objects.filter(key=made.key, cost__gt=0).count() == 20
    wait_written(quiet.gateways, settings.GATEWAY_REDIS_PREFIX)
    tenant = made.key.tenant
    tenant.refresh_from_db()
    assert tenant.balance == Decimal("0")
    assert ledger_mismatches() == []
    assert account_drifts(0.2) == []


def test_concurrency_3_never_has_more_than_3_in_flight_across_six_processes(quiet):
    made = new_key(concurrency=3)
    quiet.upstream.clear()
    # Slow streams (4 s): the three admitted hold their slots while the rest arrive.
    body = {**CHAT, "stream": True,
            "messages": [{"role": "user", "content": "[[fake chunks=10 delay=0.4]]"}]}
    responses = burst([quiet.lb], made.secret, 30, body)
    result = outcome(responses)
    assert result == Counter({"ok": 3, "concurrent_limit": 27})
    assert quiet.upstream.stats()["max_inflight"] == 3
    assert all(r.text.rstrip().endswith("data: [DONE]") for r in responses
               if r.status_code == 200)
    # Every slot came back: three more, one on each of three hosts, all pass.
    assert outcome(burst(quiet.urls[::2], made.secret, 3)) == Counter({"ok": 3})


def test_tpm_is_exact_across_the_processes(quiet):
    """Each answer costs 4 tokens (1 in, 3 out): with tpm=17 the fifth request is the last
    admitted (16 < 17 before it), whichever process each one reaches."""
    made = new_key(tpm=17)
    statuses = []
    for i in range(11):
        gw = quiet.gateways[i % len(quiet.gateways)]
        statuses.append(outcome(burst([gw.base_url], made.secret, 1)))
        # Its tokens are counted just after the answer: wait for the process to settle.
        wait_until(lambda gw=gw: httpx.get(gw.url + "/_gateway/status").json()["in_flight"]
                   == 0, 10, "the request to settle")
    assert statuses == [Counter({"ok": 1})] * 5 + [Counter({"rate_limit_tpm": 1})] * 6


def used_credentials(upstream: FakeUpstream) -> list[str]:
    return [r["headers"].get("authorization", "").removeprefix("Bearer ")
            for r in upstream.requests() if r["path"] == "/v1/chat/completions"]


def chat(url: str, secret: str, model: str, text: str, **extra: Any) -> httpx.Response:
    return httpx.post(url + "/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {secret}"},
                      json={"model": model, "messages": [{"role": "user", "content": text}],
                            **extra})


def test_a_session_sticks_to_one_credential_whichever_process_serves_it(quiet):
    upstream_create(name="sticky", kind="openai", base_url=quiet.upstream.openai_url,
                    models=["sm"], api_keys=[f"sk-sticky-{i}" for i in range(4)])
    time.sleep(SNAPSHOT_TTL + 0.3)  # every process's route table has the new upstream
    made = new_key()
    quiet.upstream.clear()
    for i in range(12):  # different first messages: only the session keeps them together
        resp = chat(quiet.urls[i % 6], made.secret, "sm", f"turn {i}",
                    prompt_cache_key="netns-session")
        assert resp.status_code == 200, resp.text
    used = used_credentials(quiet.upstream)
    assert len(used) == 12 and len(set(used)) == 1, used


def test_a_cool_down_set_by_one_process_is_honoured_by_all(quiet):
    upstream_create(name="limited", kind="openai", base_url=quiet.upstream.openai_url,
                    models=["lm"], api_keys=["sk-limited"], priority=1)
    upstream_create(name="spare", kind="openai", base_url=quiet.upstream.openai_url,
                    models=["lm"], api_keys=["sk-spare"])
    time.sleep(SNAPSHOT_TTL + 0.3)
    made = new_key()
    quiet.upstream.clear()
    # One 429 (asking for 60 s): the first process fails over and cools the credential.
    quiet.upstream.script_key("sk-limited", status=429, retry_after=60, count=1)
    first = chat(quiet.urls[0], made.secret, "lm", "first")
    assert first.status_code == 200, first.text
    assert used_credentials(quiet.upstream) == ["sk-limited", "sk-spare"]
    # The upstream would answer now, but no process tries the cooling credential.
    for url in quiet.urls:
        assert chat(url, made.secret, "lm", "later").status_code == 200
    assert used_credentials(quiet.upstream)[2:] == ["sk-spare"] * 6


def test_an_admin_change_reaches_every_process_within_the_snapshot_ttl(quiet):
    made = new_key(rpm=1000)
    assert outcome(burst(quiet.urls, made.secret, 6)) == Counter({"ok": 6})  # all cached it
    key = ApiKey.objects.get(pk=made.key.pk)
    key.allowed_models = ["gpt-5"]
    key.save()
    time.sleep(SNAPSHOT_TTL + 0.3)
    # Asked directly, every process now refuses the model the key no longer allows.
    assert outcome(burst(quiet.urls, made.secret, 6)) == Counter({"model_not_allowed": 6})
    key.allowed_models = []
    key.rpm = 6 + 3  # three more this minute, whichever processes take them
    key.save()
    time.sleep(SNAPSHOT_TTL + 0.3)
    assert outcome(burst(quiet.urls, made.secret, 12)) == Counter({"ok": 3,
                                                                   "rate_limit_rpm": 9})


def test_a_rolling_restart_of_every_process_behind_haproxy_loses_nothing(quiet):
    made = new_key(concurrency=64)
    proxy = quiet.proxy
    results = rolling_restart(proxy, quiet.lb, made.secret, 8, len(quiet.gateways),
                              quiet.restart, up_within=120, answers_between=10)
    ids = all_answered(results, proxy)
    wait_written(quiet.gateways, settings.GATEWAY_REDIS_PREFIX)
    # Exactly one row for every answered request, each charged what it cost.
    rows = {r.request_id: r for r in UsageLog.objects.filter(request_id__in=ids)}
    assert len(rows) == len(ids), f"{len(ids) - len(rows)} answered requests have no row"
    assert UsageLog.objects.filter(key=made.key).count() == len(ids)
    assert all(row.status_code == 200 and row.cost == PRICE for row in rows.values())
    tenant = made.key.tenant
    tenant.refresh_from_db()
    assert tenant.balance == Decimal("100") - PRICE * len(ids)
    assert ledger_mismatches() == []
    assert account_drifts(0.2) == []
    call_command("billing", "check", stdout=StringIO())
