"""The limiter's answers, the same for both backends: Redis (shared by every gateway
process) and in-process (the embedded default). Pure and in-process (the fast tier): the
limiter runs on a FakeClock, so leases expire when a test moves time on, not by sleeping."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
from django.test import override_settings

from keys import limits
from keys.limits import Admission, MemoryLimiter, RedisLimiter
from portal.infra import rediskeys
from tests.clock import FakeClock

pytestmark = pytest.mark.fast

BACKENDS = [pytest.param(MemoryLimiter, id="memory")]
if os.environ.get("REDIS_URL"):
    BACKENDS.append(pytest.param(RedisLimiter, id="redis"))


@pytest.fixture(autouse=True)
def own_redis_keys(settings) -> None:
    """Every test here gets Redis keys of its own: the gateway processes other tests of the
    run keep alive share the run's prefix, and their usage writers take rows from the
    journal these tests count (and accounts 1 are everyone's)."""
    settings.GATEWAY_REDIS_PREFIX += f"limits-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=BACKENDS)
def limiter(request, clock):
    return request.param(clock=clock)


def admission(**kw) -> Admission:
    base = dict(key_id=1, tenant_id=1, request_id="", rpm=0, rpd=0, tpm=0, concurrency=0,
                reserve=0, key_quota=False, commit=True)
    base.update(kw)
    if not base["request_id"]:
        base["request_id"] = uuid.uuid4().hex
    return Admission(**base)


async def funded(limiter, tenant_avail: int = 10**12, key_avail: int | None = None) -> None:
    await limiter.init_account("tenant", 1, tenant_avail)
    if key_avail is not None:
        await limiter.init_account("key", 1, key_avail, tenant_id=1)


async def test_an_unloaded_account_is_reported_before_anything_is_counted(limiter):
    assert (await limiter.admit(admission(rpm=5))).code == limits.NO_TENANT_ACCOUNT
    await funded(limiter)
    assert (await limiter.admit(admission(key_quota=True))).code == limits.NO_KEY_ACCOUNT
    assert (await limiter.admit(admission(rpm=5))).rpm_used == 1


async def test_rpm_admits_exactly_the_limit_of_simultaneous_requests(limiter):
    await funded(limiter)
    decisions = await asyncio.gather(*(limiter.admit(admission(rpm=60)) for _ in range(150)))
    codes = [d.code for d in decisions]
    assert codes.count(limits.OK) == 60 and codes.count(limits.RPM) == 90
    refused = [d for d in decisions if d.code == limits.RPM]
    assert all(0 < d.retry_after_ms <= 60_000 for d in refused)


async def test_rpd_counts_per_day_and_says_when_the_day_ends(limiter, clock):
    await funded(limiter)
    assert [(await limiter.admit(admission(rpd=2))).code for _ in range(3)] == [0, 0, limits.RPD]
    refused = await limiter.admit(admission(rpd=2))
    _, seconds_left = limits.local_day_and_seconds_left(clock())
    assert abs(refused.retry_after_ms / 1000 - seconds_left) <= 2


async def test_concurrency_slots_are_taken_and_given_back(limiter):
    await funded(limiter)
    held = [admission(concurrency=2) for _ in range(2)]
    for a in held:
        assert (await limiter.admit(a)).code == limits.OK
    assert (await limiter.admit(admission(concurrency=2))).code == limits.CONCURRENCY
    await limiter.settle(held[0], refund=0, tokens=0)
    assert (await limiter.admit(admission(concurrency=2))).code == limits.OK


@override_settings(GATEWAY_CONCURRENCY_LEASE_SECONDS=0.3)
async def test_a_slot_whose_lease_is_not_renewed_expires(limiter, clock):
    await funded(limiter)
    assert (await limiter.admit(admission(concurrency=1))).code == limits.OK
    assert (await limiter.admit(admission(concurrency=1))).code == limits.CONCURRENCY
    clock.advance(0.4)
    assert (await limiter.admit(admission(concurrency=1))).code == limits.OK


@override_settings(GATEWAY_CONCURRENCY_LEASE_SECONDS=0.5)
async def test_a_renewed_lease_keeps_its_slot(limiter, clock):
    await funded(limiter)
    running = admission(concurrency=1)
    await limiter.admit(running)
    for _ in range(4):
        clock.advance(0.2)
        await limiter.renew([running])
    assert (await limiter.admit(admission(concurrency=1))).code == limits.CONCURRENCY


async def test_a_refusal_by_a_later_check_consumes_no_earlier_counter(limiter):
    await funded(limiter, tenant_avail=1000)
    blocker = admission(concurrency=1)
    assert (await limiter.admit(blocker)).code == limits.OK
    for _ in range(5):  # each passes quota, rpm and rpd, then fails concurrency
        refused = await limiter.admit(admission(rpm=2, rpd=2, concurrency=1, reserve=100))
        assert refused.code == limits.CONCURRENCY
    await limiter.settle(blocker, refund=0, tokens=0)
    ok = await limiter.admit(admission(rpm=2, rpd=2, concurrency=1, reserve=100))
    assert ok.code == limits.OK and ok.rpm_used == 1


async def test_check_only_mode_answers_without_taking_anything(limiter):
    await funded(limiter, tenant_avail=100)
    for _ in range(3):
        assert (await limiter.admit(admission(rpm=1, reserve=100, commit=False))).code == 0
    assert (await limiter.admit(admission(rpm=1, reserve=100))).code == limits.OK
    assert (await limiter.admit(admission(rpm=5, reserve=1))).code == limits.QUOTA


async def test_parallel_reservations_never_overspend_a_balance(limiter):
    await funded(limiter, tenant_avail=20 * 1000)
    decisions = await asyncio.gather(*(limiter.admit(admission(reserve=1000))
                                       for _ in range(64)))
    assert [d.code for d in decisions].count(limits.OK) == 20


async def test_a_key_quota_limits_independently_of_the_balance(limiter):
    await funded(limiter, key_avail=3000)
    codes = [(await limiter.admit(admission(reserve=1000, key_quota=True))).code
             for _ in range(4)]
    assert codes == [0, 0, 0, limits.QUOTA]


async def test_settling_refunds_the_unused_reservation(limiter):
    await funded(limiter, tenant_avail=1000)
    first = admission(reserve=1000)
    assert (await limiter.admit(first)).code == limits.OK
    assert (await limiter.admit(admission(reserve=1))).code == limits.QUOTA
    await limiter.settle(first, refund=600, tokens=0)  # it cost 400
    assert (await limiter.admit(admission(reserve=600))).code == limits.OK
    assert (await limiter.admit(admission(reserve=1))).code == limits.QUOTA


async def test_tpm_counts_tokens_when_requests_settle(limiter):
    await funded(limiter)
    a = admission(tpm=100)
    assert (await limiter.admit(a)).code == limits.OK
    await limiter.settle(a, refund=0, tokens=100)
    refused = await limiter.admit(admission(tpm=100))
    assert refused.code == limits.TPM and 0 < refused.retry_after_ms <= 60_000


async def test_adjusting_an_account_moves_the_available_amount(limiter):
    await funded(limiter, tenant_avail=0)
    assert (await limiter.admit(admission(reserve=5))).code == limits.QUOTA
    await asyncio.to_thread(limiter.adjust_account, "tenant", 1, 5)
    assert (await limiter.admit(admission(reserve=5))).code == limits.OK
    await asyncio.to_thread(limiter.drop_account, "tenant", 1)
    assert (await limiter.admit(admission())).code == limits.NO_TENANT_ACCOUNT


# --- money that cannot be stranded --------------------------------------------------------

@pytest.mark.parametrize("reserve", [-1, -10**9, 10**16])
async def test_an_impossible_reservation_is_refused_and_changes_nothing(limiter, reserve):
    """A negative reservation once left a tenant 'reserved' forever: the limiter refuses
    it outright (the Lua script itself, not only the Python in front of it)."""
    await funded(limiter, tenant_avail=1000)
    with pytest.raises(Exception, match="out of range|impossible"):
        await limiter.admit(admission(reserve=reserve))
    assert await asyncio.to_thread(limiter.available, "tenant", 1) == 1000
    assert (await limiter.admit(admission(reserve=1000))).code == limits.OK


async def test_an_impossible_settlement_is_refused_and_changes_nothing(limiter):
    await funded(limiter, tenant_avail=1000)
    a = admission(reserve=100)
    assert (await limiter.admit(a)).code == limits.OK
    for refund in (101, 10**18, -10**16):  # a negative cost, or one beyond any real amount
        with pytest.raises(Exception, match="out of range|impossible"):
            await limiter.settle(a, refund=refund, tokens=0)
    assert await asyncio.to_thread(limiter.available, "tenant", 1) == 900
    await limiter.settle(a, refund=40, tokens=0)
    assert await asyncio.to_thread(limiter.available, "tenant", 1) == 940


redis_only = pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="shared reservations")


@redis_only
@override_settings(GATEWAY_CONCURRENCY_LEASE_SECONDS=0.3)
async def test_a_reservation_outliving_its_lease_is_given_back_and_a_late_settle_charges_the_cost(
        clock):
    limiter = RedisLimiter(clock=clock)
    await funded(limiter, tenant_avail=1000, key_avail=1000)
    dead = admission(reserve=400, key_quota=True)  # its process dies: nobody renews it
    assert (await limiter.admit(dead)).code == limits.OK
    assert await asyncio.to_thread(limiter.available, "tenant", 1) == 600
    clock.advance(0.4)
    # The next admission for the tenant gives the expired reservation back first.
    assert (await limiter.admit(admission())).code == limits.OK
    assert await asyncio.to_thread(limiter.available, "tenant", 1) == 1000
    assert await asyncio.to_thread(limiter.available, "key", 1, 1) == 1000
    # A settle arriving after all (a slow process, not a dead one) charges exactly its cost.
    await limiter.settle(dead, refund=300, tokens=0)  # it cost 100
    assert await asyncio.to_thread(limiter.available, "tenant", 1) == 900
    assert await asyncio.to_thread(limiter.available, "key", 1, 1) == 900
    await limiter.settle(dead, refund=300, tokens=0)  # sent again: nothing changes
    assert await asyncio.to_thread(limiter.available, "tenant", 1) == 900


@redis_only
async def test_settling_twice_changes_nothing():
    """A process that lost the reply to its settle (Redis went away) sends it again."""
    from portal.infra.redis import sync_redis

    limiter = RedisLimiter()
    await funded(limiter, tenant_avail=1000)
    a = admission(reserve=300)
    assert (await limiter.admit(a)).code == limits.OK
    for _ in range(3):
        await limiter.settle(a, refund=100, tokens=0, row=b'{"request_id":"r2"}')
    assert await asyncio.to_thread(limiter.available, "tenant", 1) == 800
    assert sync_redis().llen(rediskeys.journal(rediskeys.group_of(1))) == 1


@redis_only
@override_settings(GATEWAY_CONCURRENCY_LEASE_SECONDS=0.3)
async def test_a_renewed_reservation_is_kept(clock):
    limiter = RedisLimiter(clock=clock)
    await funded(limiter, tenant_avail=1000)
    running = admission(reserve=400)
    assert (await limiter.admit(running)).code == limits.OK
    for _ in range(3):
        clock.advance(0.15)
        await limiter.renew([running])
        assert (await limiter.admit(admission())).code == limits.OK
    assert await asyncio.to_thread(limiter.available, "tenant", 1) == 600
    await limiter.settle(running, refund=400, tokens=0)
    assert await asyncio.to_thread(limiter.available, "tenant", 1) == 1000


@redis_only
async def test_settling_journals_the_usage_row_and_notes_its_cost_as_unposted():
    from portal.infra.redis import sync_redis

    limiter = RedisLimiter()
    await funded(limiter, tenant_avail=1000)
    a = admission(reserve=300)
    assert (await limiter.admit(a)).code == limits.OK
    await limiter.settle(a, refund=100, tokens=0, row=b'{"request_id":"r1"}')
    client = sync_redis()
    journal = rediskeys.journal(rediskeys.group_of(1))
    assert client.lrange(journal, 0, -1) == [b'{"request_id":"r1"}']
    assert int(client.hget(rediskeys.account("tenant", 1), "avail")) == 800
    assert client.hgetall(rediskeys.unposted("tenant", 1)) == {a.request_id.encode(): b"200"}
    assert client.zcard(rediskeys.reservations(1)) == 0


@redis_only
async def test_an_account_loaded_while_requests_run_counts_what_they_hold():
    """An account dropped (a quota edit) or lost while requests are in flight and rows are
    unwritten loads as database amount - reservations - unposted, and settles exactly."""
    limiter = RedisLimiter()
    await funded(limiter, tenant_avail=1000)
    running, done = admission(reserve=300), admission(reserve=100)
    assert (await limiter.admit(running)).code == limits.OK
    assert (await limiter.admit(done)).code == limits.OK
    await limiter.settle(done, refund=40, tokens=0, row=b"{}")  # cost 60, row not written
    await asyncio.to_thread(limiter.drop_account, "tenant", 1)
    await limiter.init_account("tenant", 1, 1000)  # the database does not know of either
    assert await asyncio.to_thread(limiter.available, "tenant", 1) == 1000 - 300 - 60
    await limiter.settle(running, refund=250, tokens=0)  # cost 50
    assert await asyncio.to_thread(limiter.available, "tenant", 1) == 1000 - 60 - 50
