"""The hash-tag invariant Redis Cluster needs (REDIS_CLUSTER): every Lua script Turnpike runs
and every MULTI touches keys of one hash slot. The limiter's, the journals' and the
stored responses' calls are driven here against clients that record the keys each script
gets, and the slots are computed with redis-py's CRC16 (``redis.crc.key_slot``), as a
cluster does; the names a script builds while it runs (from a prefix in ARGV) are checked
with the prefix it was given."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from redis.crc import key_slot

from billing import usage
from billing.usagerow import UsageEvent
from gateway.capture import store as capture_store
from gateway.stored import store
from keys import limits
from keys.limits import Admission, RedisLimiter
from portal.infra import rediskeys
from portal.infra.fastredis import _key_of
from portal.infra.journal import RedisJournal

TENANTS = [1, 2, 7, 15, 16, 17, 31, 100, 12345]


def slots(names: list[Any]) -> set[int]:
    return {key_slot(n if isinstance(n, bytes) else str(n).encode()) for n in names}


class FastRecorder:
    """The hot path's client: records each script's keys and each command's key."""

    def __init__(self) -> None:
        self.scripts: list[tuple[list[Any], list[Any]]] = []
        self.commands: list[tuple[Any, ...]] = []

    async def evalsha(self, script: str, keys: list[Any], args: list[Any]) -> Any:
        self.scripts.append((keys, args))
        return [0, 1, 0, b"", []] if len(keys) == 10 and "admit" in script else 1

    async def execute(self, *args: Any) -> Any:
        self.commands.append(args)
        return 1


class SyncRecorder:
    """redis-py's client as the journals use it: records each EVAL's keys."""

    def __init__(self) -> None:
        self.scripts: list[tuple[list[Any], list[Any]]] = []

    def eval(self, script: str, numkeys: int, *rest: Any) -> Any:
        self.scripts.append((list(rest[:numkeys]), list(rest[numkeys:])))
        return [] if "LTRIM" in script else 0  # the claim returns its rows


def admission(tenant: int, key: int, **kw: Any) -> Admission:
    base: dict[str, Any] = dict(key_id=key, tenant_id=tenant, request_id=f"r{tenant}-{key}",
                                rpm=5, rpd=5, tpm=5, concurrency=2, reserve=100,
                                key_quota=True, commit=True, session="s1")
    base.update(kw)
    return Admission(**base)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> FastRecorder:
    client = FastRecorder()
    monkeypatch.setattr(RedisLimiter, "_client", staticmethod(lambda: client))
    return client


def test_the_limiters_scripts_each_touch_one_slot(recorder: FastRecorder, settings: Any
                                                  ) -> None:
    # Without a cluster, an account's load also reads the unposted costs under the names
    # before the tags (a single Redis has no slots to keep to).
    settings.REDIS_CLUSTER = True
    limiter = RedisLimiter()
    for tenant in TENANTS:
        a = admission(tenant, key=tenant * 3 + 1)

        async def run(a: Admission = a, tenant: int = tenant) -> None:
            await limiter.admit(a)
            await limiter.settle(a, refund=40, tokens=10, binding="route", row=b"{}")
            await limiter.init_account("tenant", tenant, 1000)
            await limiter.init_account("key", a.key_id, 1000, tenant_id=tenant)
            await limiter.renew([a])

        asyncio.run(run())
    assert len(recorder.scripts) == 4 * len(TENANTS)
    for keys, args in recorder.scripts:
        assert len(slots(keys)) == 1, keys
        # A name the script builds at run time (a reclaimed reservation's key account).
        built = [arg + "99" for arg in args if isinstance(arg, str) and "acct:key:" in arg]
        assert slots(keys + built) == slots(keys)
    for command in recorder.commands:  # renew: one key each
        assert _key_of(command) == command[1]


def test_a_cool_down_reaches_every_groups_copy(recorder: FastRecorder) -> None:
    asyncio.run(RedisLimiter().cool(42, 30))
    written = {c[1] for c in recorder.commands if c[0] == "HSET"}
    assert written == set(rediskeys.all_cooldowns())
    # Each group's admit reads the copy in its own slot.
    for tenant in TENANTS:
        assert slots([rediskeys.cooldowns(rediskeys.group_of(tenant))]) == slots(
            [rediskeys.account("tenant", tenant)])


def event(tenant: int, key: int, n: int) -> UsageEvent:
    from django.utils import timezone

    return UsageEvent(created_at=timezone.now(), request_id=f"req-{tenant}-{n}",
                      endpoint="chat", status_code=200, key_id=key, key_prefix="tp_x",
                      tenant_id=tenant, model="m", cost=Decimal("0.5"))


def test_the_usage_journals_claims_and_releases_stay_in_their_groups_slot() -> None:
    client = SyncRecorder()
    for journal in usage.GROUP_JOURNALS:
        assert journal.group is not None
        journal.claim(client, 10)
        journal.unclaim(client, "c1")
        journal.length(client)
        tenants = [t for t in range(200) if rediskeys.group_of(t) == journal.group][:5]
        usage._release_now(client, journal, "c1", [event(t, t + 1000, 1) for t in tenants])
        for keys, args in client.scripts:
            # The claim lists the pending count reads are named at run time from ARGV[1].
            built = [args[0] + "c9"] if keys[-1:] == [journal.claim_list("")] else []
            assert slots(keys + built) == slots([journal.key()]), keys
        client.scripts.clear()


def test_a_spooled_row_goes_to_its_tenants_groups_journal(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    pushed: dict[str, list[bytes]] = {}

    def push(self: RedisJournal, client: Any, rows: list[bytes]) -> None:
        pushed.setdefault(self.key(), []).extend(rows)

    monkeypatch.setattr(RedisJournal, "push", push)
    monkeypatch.setattr("portal.infra.redis.sync_redis", lambda: object())
    assert usage.spool([event(t, t, 1) for t in TENANTS])
    for tenant in TENANTS:
        assert any(f"req-{tenant}-1".encode() in row
                   for row in pushed[rediskeys.journal(rediskeys.group_of(tenant))])


def test_stored_responses_and_background_runs_share_one_slot() -> None:
    names = [store.doc_key("resp_1"), store.items_key("resp_1"), store.tombstone_key("resp_1"),
             store.pin_key("resp_1"), store.journal_key(), store.deletions_key(),
             store.JOURNAL.claims_key(), store.JOURNAL.claim_list("c1"),
             rediskeys.background_run("resp_1"), rediskeys.background_events("resp_1"),
             rediskeys.background_leases(), store.doc_key("resp_other")]
    assert len(slots(names)) == 1
    capture = [rediskeys.capture_journal(), capture_store.JOURNAL.claims_key(),
               capture_store.JOURNAL.claim_list("c1")]
    assert len(slots(capture)) == 1


def test_every_tenant_scoped_name_carries_its_tenants_group_tag() -> None:
    for tenant in TENANTS:
        key = tenant + 5000
        names = [rediskeys.rpm(key, tenant=tenant), rediskeys.rpd(key, "20260101", tenant=tenant),
                 rediskeys.tpm(key, tenant=tenant), rediskeys.concurrency(key, tenant=tenant),
                 rediskeys.sticky(key, "s", tenant=tenant), rediskeys.sticky(key, None,
                                                                             tenant=tenant),
                 rediskeys.account("tenant", tenant), rediskeys.account("key", key,
                                                                        tenant=tenant),
                 rediskeys.reservations(tenant), rediskeys.reclaimed(tenant),
                 rediskeys.unposted("tenant", tenant),
                 rediskeys.unposted("key", key, tenant=tenant),
                 rediskeys.journal(rediskeys.group_of(tenant)),
                 rediskeys.claims(group=rediskeys.group_of(tenant)),
                 rediskeys.cooldowns(rediskeys.group_of(tenant))]
        assert len(slots(names)) == 1, names
        assert rediskeys.account_id(rediskeys.account("key", key, tenant=tenant), "key") == key
        assert rediskeys.reservations_tenant(rediskeys.reservations(tenant)) == tenant


def test_the_groups_spread_evenly_over_three_masters_slot_ranges() -> None:
    group_slots = sorted(slots([tag for tag in rediskeys.TAGS]))
    assert len(group_slots) == rediskeys.GROUPS
    thirds = [sum(1 for s in group_slots if low <= s < high)
              for low, high in ((0, 5461), (5461, 10923), (10923, 16384))]
    assert sorted(thirds) == [5, 5, 6]


def test_the_cluster_client_routes_by_the_first_key() -> None:
    assert _key_of(("EVALSHA", "abc", 2, "k1", "k2", "arg")) == "k1"
    assert _key_of(("EVAL", "return 1", 0)) is None
    assert _key_of(("HSET", "h", "f", 1)) == "h"
    assert _key_of(("PING",)) is None
    assert _key_of(("SCRIPT", "LOAD", "return 1")) is None
    assert limits.MAX_MICRO  # the module the scripts come from is importable here
