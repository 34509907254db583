"""Turnpike on a Redis Cluster (REDIS_CLUSTER=true): a local cluster of three masters with a
replica each, two gateway processes given one node's URL, and the cross-process exactness
checks run on it (tenants placed on different masters); then a failover under load.

The test process itself talks to the cluster too (``on_cluster``): its signals (top-ups,
new keys) reach the accounts and snapshots the gateways read.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from billing.models import ModelPrice, UsageLog
from billing.services import ledger_mismatches, tenant_topup
from gateway.services import upstream_create
from keys.models import Tenant
from keys.services import key_create, tenant_get_or_create
from portal.infra import rediskeys
from tests.conftest import gateway_env
from tests.servers import (
    FakeUpstream,
    Gateway,
    RedisClusterServers,
    start_fake_upstream,
    start_gateway,
    stop,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.e2e,
]

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers(masters=3, replicas=True, node_timeout_ms=2000)
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="module")
def cluster_gateways(cluster: RedisClusterServers, django_db_setup: Any,
                     django_db_blocker: Any) -> Iterator[tuple[Gateway, Gateway]]:
    """Two gateways on the cluster, given its first node only: one fails closed while Redis
    is unreachable (the default), the other open (GATEWAY_REDIS_FAILURE)."""
    from django.conf import settings

    env = {"REDIS_URL": cluster.url, "REDIS_CLUSTER": "true", "GATEWAY_SNAPSHOT_TTL": "0",
           # Celery's broker cannot be a cluster: a plain Redis (this run's).
           "CELERY_BROKER_URL": settings.REDIS_URL or "memory://"}
    with django_db_blocker.unblock():
        closed = start_gateway(gateway_env(**env))
        try:
            opened = start_gateway(gateway_env(**env, GATEWAY_REDIS_FAILURE="open"))
        except BaseException:
            stop(closed.proc)
            raise
    yield closed, opened
    stop(closed.proc)
    stop(opened.proc)


@pytest.fixture
def on_cluster(cluster: RedisClusterServers, settings: Any) -> Iterator[None]:
    """This process's Redis clients on the cluster too, for the test's duration; the
    cluster holds none of Turnpike's keys before and after it."""
    from portal.infra import redis as infra_redis

    settings.REDIS_URL = cluster.url
    settings.REDIS_CLUSTER = True
    infra_redis._sync_client = None
    client = infra_redis.sync_redis()
    assert client is not None

    def wipe() -> None:  # no state of an earlier test (snapshots included), on any master
        keys = list(client.scan_iter(settings.GATEWAY_REDIS_PREFIX + "*", count=1000))
        if keys:
            client.delete(*keys)

    wipe()
    yield
    wipe()
    infra_redis._sync_client = None


@pytest.fixture(scope="module")
def open_fake() -> Iterator[FakeUpstream]:
    """A fake upstream accepting any credential: the credential used shows the route."""
    server = start_fake_upstream()
    yield server
    stop(server.proc)


@pytest.fixture
def fake(open_fake: FakeUpstream, on_cluster: None) -> FakeUpstream:
    open_fake.clear()
    httpx.delete(open_fake.url + "/_fake/keys")
    return open_fake


def tenants_on_two_masters(cluster: RedisClusterServers) -> tuple[Tenant, Tenant]:
    """Two new tenants whose keys live on different masters."""
    made: list[Tenant] = []
    for n in range(40):
        tenant = tenant_get_or_create(name=f"cluster-{n}-{time.monotonic_ns()}")[0]
        master = cluster.master_of(rediskeys.slot(rediskeys.group_tag(tenant.pk)))
        if not made:
            made.append(tenant)
        elif master != cluster.master_of(rediskeys.slot(rediskeys.group_tag(made[0].pk))):
            return made[0], tenant
    raise AssertionError("no two tenant groups on different masters")


def burst(urls: list[str], requests: list[tuple[str, dict[str, Any]]]) -> list[httpx.Response]:
    """Every (secret, body) at once, alternating between the gateways."""

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(requests) + 10, max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            return await asyncio.gather(*(
                client.post(urls[i % len(urls)] + "/chat/completions", json=body,
                            headers={"Authorization": f"Bearer {secret}"})
                for i, (secret, body) in enumerate(requests)))

    return asyncio.run(run())


def code(response: httpx.Response) -> str:
    return "ok" if response.status_code == 200 else response.json()["error"]["code"]


def wait_quiet(gateways: tuple[Gateway, ...], timeout: float = 30.0) -> None:
    """Until every gateway has nothing in flight and no usage row waiting anywhere."""
    deadline = time.monotonic() + timeout
    while True:
        states = [httpx.get(g.url + "/_gateway/status").json() for g in gateways]
        if all(s["in_flight"] == 0 and s["usage_pending"] == 0 and not s.get("usage_journal")
               for s in states):
            return
        assert time.monotonic() < deadline, f"gateways still busy: {states}"
        time.sleep(0.05)


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_rpm_60_lets_exactly_60_of_300_simultaneous_requests_through_two_processes(
        cluster, cluster_gateways, on_cluster, fake):
    upstream_create(name="c-rpm", kind="openai", base_url=fake.openai_url,
                    models=["gpt-4o-mini"], api_keys=["sk-c-rpm"])
    first, second = tenants_on_two_masters(cluster)
    urls = [g.base_url for g in cluster_gateways]
    keys = [key_create(tenant=t, name="rpm", rpm=62) for t in (first, second)]
    for made in keys:  # both processes know both keys now (one request each)
        for url in urls:
            assert code(burst([url], [(made.secret, CHAT)])[0]) == "ok"
    # 300 at once for the first key, 90 for the second (on another master), interleaved.
    order = [0, 1, 1, 0] * 45 + [0] * 210
    responses = burst(urls, [(keys[k].secret, CHAT) for k in order])
    for n, refused in ((0, 240), (1, 30)):
        mine = [r for k, r in zip(order, responses, strict=True) if k == n]
        assert Counter(code(r) for r in mine) == Counter({"ok": 60, "rate_limit_rpm": refused})
        # Both processes answered, each counting against the one shared window.
        assert len({r.request.url.port for r in mine}) == 2
    wait_quiet(cluster_gateways)


def test_a_balance_for_20_requests_is_spent_exactly_on_each_master(
        cluster, cluster_gateways, on_cluster, fake):
    from keys import limits

    upstream_create(name="c-money", kind="openai", base_url=fake.openai_url,
                    models=["gpt-4o-mini"], api_keys=["sk-c-money"])
    ModelPrice.objects.create(model="gpt-4o-mini", per_request=Decimal("1"))
    first, second = tenants_on_two_masters(cluster)
    keys = []
    for tenant in (first, second):
        tenant_topup(tenant=tenant, amount=Decimal("20"))
        keys.append(key_create(tenant=tenant, name="money"))
    urls = [g.base_url for g in cluster_gateways]
    responses = burst(urls, [(keys[i % 2].secret, CHAT) for i in range(120)])
    for n, tenant in enumerate((first, second)):
        mine = [r for i, r in enumerate(responses) if i % 2 == n]
        assert Counter(code(r) for r in mine) == Counter({"ok": 20, "quota_exceeded": 40})
        wait_for(lambda t=tenant: UsageLog.objects.filter(tenant=t, cost__gt=0).count() == 20,
                 20, "usage rows not written")
        tenant.refresh_from_db()
        assert tenant.balance == Decimal("0")  # never overdrawn, nothing left unspent
        assert limits.limiter().available("tenant", tenant.pk) == 0
    wait_quiet(cluster_gateways)


def test_concurrency_3_never_has_more_than_3_in_flight_across_two_processes(
        cluster, cluster_gateways, on_cluster, fake):
    upstream_create(name="c-conc", kind="openai", base_url=fake.openai_url,
                    models=["gpt-4o-mini"], api_keys=["sk-c-conc"])
    tenant = tenants_on_two_masters(cluster)[1]
    made = key_create(tenant=tenant, name="conc", concurrency=3)
    body = {**CHAT, "messages": [{"role": "user", "content": "[[fake hold=1.5]]"}]}
    urls = [g.base_url for g in cluster_gateways]
    result = Counter(code(r) for r in burst(urls, [(made.secret, body)] * 20))
    assert result == Counter({"ok": 3, "concurrent_limit": 17})
    assert fake.stats()["max_inflight"] == 3
    # Every slot came back when its request finished.
    assert Counter(code(r) for r in burst(urls, [(made.secret, CHAT)] * 3)) == {"ok": 3}
    wait_quiet(cluster_gateways)


def test_sticky_sessions_and_cool_downs_are_shared_by_processes_and_masters(
        cluster, cluster_gateways, on_cluster, fake):
    upstream_create(name="c-sticky", kind="openai", base_url=fake.openai_url, models=["sm"],
                    api_keys=[f"sk-c-sticky-{i}" for i in range(4)])
    first, second = tenants_on_two_masters(cluster)
    one, other = (key_create(tenant=t, name="sticky") for t in (first, second))
    gateways = cluster_gateways

    def chat(gateway: Gateway, secret: str, text: str, **extra: Any) -> httpx.Response:
        return httpx.post(gateway.base_url + "/chat/completions", timeout=30,
                          headers={"Authorization": f"Bearer {secret}"},
                          json={"model": "sm", "messages": [{"role": "user", "content": text}],
                                **extra})

    def used() -> list[str]:
        return [r["headers"].get("authorization", "").removeprefix("Bearer ")
                for r in fake.requests() if r["path"] == "/v1/chat/completions"]

    for i in range(10):  # different first messages: only the session keeps them together
        assert chat(gateways[i % 2], one.secret, f"turn {i}",
                    prompt_cache_key="session-one").status_code == 200
    bound = set(used())
    assert len(bound) == 1
    credential = bound.pop()
    # The credential is rate limited: the process that meets it cools it down...
    fake.script_key(credential, status=429, retry_after=60)
    moved = chat(gateways[0], one.secret, "after the limit", prompt_cache_key="session-one")
    assert moved.status_code == 200
    assert used()[-1] != credential
    # ...and the other process, serving a tenant on another master, never tries it.
    seen = len(used())
    for i in range(12):
        assert chat(gateways[1], other.secret, f"other {i}").status_code == 200
    assert credential not in used()[seen:]
    wait_quiet(cluster_gateways)


class Load:
    """Requests for one key from a few concurrent loops, alternating between the gateways,
    until stopped; every answer kept."""

    def __init__(self, urls: list[str], secret: str, loops: int = 4) -> None:
        self.urls, self.secret, self.loops = urls, secret, loops
        self.answers: list[tuple[float, str]] = []  # (when, code)
        self.served: list[str] = []  # the request ids of the 200s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            async def loop(i: int) -> None:
                n = i
                while not self._stop.is_set():
                    r = await client.post(self.urls[n % len(self.urls)] + "/chat/completions",
                                          json=CHAT,
                                          headers={"Authorization": f"Bearer {self.secret}"})
                    self.answers.append((time.monotonic(), code(r)))
                    if r.status_code == 200:
                        self.served.append(r.headers["x-request-id"])
                    n += 1

            await asyncio.gather(*(loop(i) for i in range(self.loops)))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=90)

    def count_after(self, moment: float, wanted: str = "ok") -> int:
        return sum(1 for when, c in list(self.answers) if when > moment and c == wanted)

    def codes(self) -> Counter[str]:
        return Counter(c for _, c in list(self.answers))


def redirects(gateways: tuple[Gateway, ...]) -> Counter[str]:
    """turnpike_redis_redirects_total by kind, summed over the gateways' /metrics."""
    total: Counter[str] = Counter()
    for gateway in gateways:
        text = httpx.get(gateway.url + "/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith("turnpike_redis_redirects_total{"):
                labels, _, value = line.rpartition(" ")
                kind = labels.split('kind="', 1)[1].split('"', 1)[0]
                total[kind] += int(float(value))
    return total


def move_slot(cluster: RedisClusterServers, slot: int, source: int, target: int,
              batch: int = 10, pause: float = 0.03) -> int:
    """Move ``slot`` from master ``source`` to master ``target`` by the cluster protocol,
    as ``redis-cli --cluster reshard`` does it, a few keys at a time with a pause between
    batches (so requests meet the slot half moved). Returns the batches migrated."""
    import redis

    ids = {n["port"]: n["id"] for n in cluster.nodes()}
    masters = [n["port"] for n in cluster.nodes()
               if "master" in n["flags"] and "fail" not in n["flags"]]
    src, dst = redis.Redis(port=source), redis.Redis(port=target)
    try:
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
        batches = 0
        while True:  # until the source has none left (requests may add keys meanwhile)
            keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
            batches += 1
            time.sleep(pause)
        # The new owner first, then the old one (which then answers MOVED), then the rest.
        for port in [target, source, *(p for p in masters if p not in (source, target))]:
            node = redis.Redis(port=port)
            try:
                node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
            finally:
                node.close()
    finally:
        src.close()
        dst.close()
    return batches


def test_a_slot_moved_to_another_master_under_load_loses_nothing_and_refuses_nothing(
        cluster, cluster_gateways, on_cluster, fake):
    """Resharding with the gateways running: while a tenant's group slot moves from one
    master to another, key by key (ASK for what has moved, TRYAGAIN for a script whose keys
    are split between the two), neither gateway answers 503 (the fail-closed one included),
    the balance is spent exactly, and every served request has its usage row."""
    import redis

    from keys import limits

    upstream_create(name="c-reshard", kind="openai", base_url=fake.openai_url,
                    models=["gpt-4o-mini"], api_keys=["sk-c-reshard"])
    ModelPrice.objects.create(model="gpt-4o-mini", per_request=Decimal("1"))
    tenant = tenants_on_two_masters(cluster)[0]
    balance = 120
    tenant_topup(tenant=tenant, amount=Decimal(balance))
    made = key_create(tenant=tenant, name="reshard")
    slot = rediskeys.slot(rediskeys.group_tag(tenant.pk))
    source = cluster.master_of(slot)
    target = next(n["port"] for n in cluster.nodes()
                  if "master" in n["flags"] and "fail" not in n["flags"]
                  and n["port"] != source)
    # Other Turnpike keys of the group's slot (other tenants' session bindings), so the
    # slot moves in many batches; and no script cached on the target: the first EVALSHA
    # sent there after ASK meets NOSCRIPT.
    fillers = redis.Redis(port=source)
    for n in range(100):
        fillers.set(rediskeys.sticky(10_000 + n, f"s{n}", tenant=tenant.pk), "1:1", ex=600)
    fillers.close()
    cluster.cli(target, "script", "flush")
    before = redirects(cluster_gateways)
    logged = [len(g.log_lines()) for g in cluster_gateways]
    urls = [g.base_url for g in cluster_gateways]

    started = time.monotonic()
    with Load(urls, made.secret, loops=8) as load:
        wait_for(lambda: load.count_after(0) >= 20, 60, "no load before the move")
        moving = time.monotonic()
        batches = move_slot(cluster, slot, source, target)
        moved = time.monotonic()
        wait_for(lambda: cluster.master_of(slot) == target, 30, "the slot did not move")
        # On until the balance is spent and refusals follow.
        wait_for(lambda: load.count_after(moved, "quota_exceeded") >= 20, 60,
                 f"the balance was not spent: {load.codes()}")
    took = time.monotonic() - started
    during = Counter(c for when, c in list(load.answers) if moving < when <= moved)
    codes = load.codes()
    after = redirects(cluster_gateways)
    counted = {kind: after[kind] - before[kind] for kind in ("ask", "moved", "tryagain")}
    print(f"reshard: {batches} batches in {moved - moving:.2f} s, answered meanwhile "
          f"{dict(during)}; in all {dict(codes)}; redirects {counted}; {took:.1f} s of load")

    new_lines = [line for g, n in zip(cluster_gateways, logged, strict=True)
                 for line in g.log_lines()[n:]]
    assert batches >= 8
    # Neither gateway took the move for an outage (the fail-open one would have served
    # with its own limiter meanwhile), and no usage journal writer failed (redis-py gives
    # up on TRYAGAIN after a few tenths of a second: portal.infra.redis waits longer).
    assert not [line for line in new_lines
                if "Redis is unreachable" in line or " ERROR " in line], new_lines
    assert during.total() > 0, "no request met the slot half moved"
    assert counted["ask"] > 0, counted  # the gateways followed ASK to the importing master
    # Nothing refused for the move: exactly the balance served, the rest refused for it.
    assert codes == Counter({"ok": balance, "quota_exceeded": sum(codes.values()) - balance})
    assert len(set(load.served)) == balance
    wait_for(lambda: UsageLog.objects.filter(tenant=tenant, cost__gt=0).count() == balance,
             30, "usage rows not written")
    rows = UsageLog.objects.filter(request_id__in=load.served, cost__gt=0)
    assert rows.count() == balance  # one row per served request, none twice
    assert all(r.cost == Decimal("1") for r in rows)
    tenant.refresh_from_db()
    assert tenant.balance == Decimal("0")  # never overdrawn, nothing left unspent
    assert ledger_mismatches() == []
    assert limits.limiter().available("tenant", tenant.pk) == 0

    # On its new master the slot serves as before, through both gateways.
    tenant_topup(tenant=tenant, amount=Decimal("4"))
    again = burst(urls, [(made.secret, CHAT)] * 6)
    assert Counter(code(r) for r in again) == Counter({"ok": 4, "quota_exceeded": 2})
    wait_quiet(cluster_gateways)
    wait_for(lambda: UsageLog.objects.filter(tenant=tenant, cost__gt=0).count() == balance + 4,
             30, "usage rows not written after the move")
    tenant.refresh_from_db()
    assert tenant.balance == Decimal("0")
    assert ledger_mismatches() == []
    assert cluster.master_of(slot) == target


def test_the_cluster_client_waits_out_a_split_slot_and_loads_a_script_after_ask(
        cluster, on_cluster):
    """ClusterFastRedis on a slot being moved, step by step: a script whose keys are split
    between the two masters gets TRYAGAIN until the rest follows; with every key moved, ASK
    takes it to the importing master (ASKING first on the same connection), which lacks the
    script (NOSCRIPT: sent again as EVAL); many commands redirected at once each get their
    ASKING; once the slot is the new master's, MOVED."""
    import redis
    from django.conf import settings

    from portal.infra import metrics
    from portal.infra.fastredis import ClusterFastRedis

    names = [f"{settings.GATEWAY_REDIS_PREFIX}{{reshard-unit}}k{i}" for i in range(3)]
    slot = rediskeys.slot(names[0])
    source = cluster.master_of(slot)
    target = next(n["port"] for n in cluster.nodes()
                  if "master" in n["flags"] and "fail" not in n["flags"]
                  and n["port"] != source)
    ids = {n["port"]: n["id"] for n in cluster.nodes()}
    src = redis.Redis(port=source)
    src.mset({name: f"v{i}" for i, name in enumerate(names)})
    cluster.cli(target, "cluster", "setslot", str(slot), "importing", ids[source])
    cluster.cli(source, "cluster", "setslot", str(slot), "migrating", ids[target])
    src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", names[0])
    cluster.cli(target, "script", "flush")
    script = f"return redis.call('MGET', KEYS[1], KEYS[2], KEYS[3]) -- {time.time_ns()}"

    def rest() -> None:
        time.sleep(0.3)
        src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *names[1:])

    def counted() -> dict[str, float]:
        return {kind: metrics.REDIS_REDIRECTS.labels(kind)._value.get()
                for kind in ("ask", "moved", "tryagain")}

    async def run() -> tuple[Any, list[Any], dict[str, float], Any]:
        client = ClusterFastRedis(cluster.url)
        try:
            split = await asyncio.gather(client.evalsha(script, names, []),
                                         asyncio.to_thread(rest))
            halfway = counted()
            many = await asyncio.gather(*(client.execute("GET", names[i % 3])
                                          for i in range(60)))
            for port in (target, source):
                await asyncio.to_thread(cluster.cli, port, "cluster", "setslot", str(slot),
                                        "node", ids[target])
            return split[0], many, halfway, await client.execute("GET", names[0])
        finally:
            client.close()

    before = counted()
    try:
        result, many, halfway, moved = asyncio.run(run())
    finally:
        for node in cluster.nodes():
            if "master" in node["flags"] and "fail" not in node["flags"]:
                cluster.cli(node["port"], "cluster", "setslot", str(slot), "node", ids[target])
        src.close()
    after = counted()
    assert result == [b"v0", b"v1", b"v2"]
    assert many == [f"v{i % 3}".encode() for i in range(60)]
    assert moved == b"v0"
    assert halfway["tryagain"] > before["tryagain"]  # waited while the keys were split
    assert halfway["ask"] > before["ask"]  # then ASK: EVALSHA, NOSCRIPT, EVAL
    assert after["ask"] >= halfway["ask"] + 60
    assert after["moved"] > halfway["moved"]
    wait_for(lambda: cluster.master_of(slot) == target, 30, "the slot did not move")


def test_a_failover_under_load_and_a_lost_master_lose_no_usage_and_no_money(
        cluster, cluster_gateways, on_cluster, fake):
    from django.conf import settings

    from keys import limits
    from keys.money import to_micro

    closed, opened = cluster_gateways
    upstream_create(name="c-failover", kind="openai", base_url=fake.openai_url,
                    models=["gpt-4o-mini"], api_keys=["sk-c-failover"])
    price = Decimal("0.01")
    ModelPrice.objects.create(model="gpt-4o-mini", per_request=price)
    tenant = tenants_on_two_masters(cluster)[0]
    tenant_topup(tenant=tenant, amount=Decimal("1000"))
    made = key_create(tenant=tenant, name="failover")
    slot = rediskeys.slot(rediskeys.group_tag(tenant.pk))
    urls = [closed.base_url, opened.base_url]
    answers: list[str] = []

    # 1. A graceful failover (CLUSTER FAILOVER on the replica) while requests flow: the
    # gateways follow the new master without a restart.
    master = cluster.master_of(slot)
    replica = cluster.replica_of(master)
    with Load(urls, made.secret) as load:
        wait_for(lambda: load.count_after(0) >= 20, 30, "no load before the failover")
        cluster.cli(replica, "cluster", "failover")
        wait_for(lambda: cluster.master_of(slot) == replica, 30, "the replica did not take over")
        moment = time.monotonic()
        wait_for(lambda: load.count_after(moment) >= 40, 60,
                 f"not served after the failover: {Counter(c for _, c in load.answers)}")
    answers += [c for _, c in load.answers]
    assert set(answers) <= {"ok", "limits_unavailable"}, Counter(answers)
    wait_quiet(cluster_gateways)

    # 2. The master is lost (killed) and nothing takes over until the operator says so:
    # meanwhile each gateway does what GATEWAY_REDIS_FAILURE says.
    master, old_master = replica, master
    wait_for(lambda: "slave" in cluster.cli(old_master, "role"), 30, "no replica")
    offsets = cluster.cli(master, "info", "replication")
    wait_for(lambda: _synced(cluster, master), 30, f"replica not in sync: {offsets}")
    cluster.cli(old_master, "config", "set", "cluster-replica-no-failover", "yes")
    cluster.procs[master].send_signal(signal.SIGKILL)
    cluster.procs[master].wait()
    shut = [code(r) for r in burst([closed.base_url], [(made.secret, CHAT)] * 3)]
    assert shut == ["limits_unavailable"] * 3  # fail closed: 503, nothing served
    served = [code(r) for r in burst([opened.base_url], [(made.secret, CHAT)] * 3)]
    assert served == ["ok"] * 3  # fail open: this process's own limiter admits
    answers += shut + served

    # 3. The replica takes over: both gateways serve again, without a restart.
    cluster.cli(old_master, "cluster", "failover", "takeover")
    cluster.wait_healthy(skip=(master,))
    wait_for(lambda: cluster.master_of(slot, port=old_master) == old_master, 30,
             "the takeover did not happen")

    def both_serve() -> bool:
        """Both answer, and the fail-open one has noticed Redis is back (it serves with its
        own limiter until then, and then hands the shared accounts what it charged)."""
        now = [code(r) for r in burst(urls, [(made.secret, CHAT)] * 2)]
        answers.extend(now)
        return now == ["ok", "ok"] and any("Redis is reachable again" in line
                                           for line in opened.log_lines())

    wait_for(both_serve, 60, "the gateways did not come back")
    cluster.start_node(master)  # the lost node comes back empty, as a replica
    cluster.wait_healthy()

    # Nothing lost: a usage row for every request served, the balance charged for each
    # exactly once, and the limiter's account back in line with the database.
    served_count = answers.count("ok")
    wait_for(lambda: UsageLog.objects.filter(tenant=tenant, cost__gt=0).count() == served_count,
             30, "usage rows missing")
    wait_quiet(cluster_gateways)
    tenant.refresh_from_db()
    assert tenant.balance == Decimal("1000") - price * served_count
    wait_for(lambda: limits.limiter().available("tenant", tenant.pk) == to_micro(tenant.balance),
             30, f"the limiter's account is not back in line with the database: "
                 f"{limits.limiter().available('tenant', tenant.pk)} != "
                 f"{to_micro(tenant.balance)} ({Counter(answers)})")
    assert settings.REDIS_CLUSTER


def _synced(cluster: RedisClusterServers, master: int) -> bool:
    """Every replica of ``master`` has everything it wrote."""
    info = dict(line.split(":", 1) for line in
                cluster.cli(master, "info", "replication").splitlines() if ":" in line)
    offset = info.get("master_repl_offset")
    replicas = [v for k, v in info.items() if k.startswith("slave") and k[5:].isdigit()]
    return bool(replicas) and all(f"offset={offset}," in r for r in replicas)
