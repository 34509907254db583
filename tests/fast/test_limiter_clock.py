"""The limiter's windows and leases over time, on a FakeClock: both backends (the Lua scripts
against the real Redis, in-process, and the memory backend) must give the same answers as
the clock moves, without a test ever sleeping. tests/keys/test_limits.py holds the rest of
the limiter's semantics (accounts, reservations, check order)."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
from django.test import override_settings

from keys import limits
from keys.limits import Admission, MemoryLimiter, RedisLimiter
from tests.clock import START, FakeClock

BACKENDS = [pytest.param(MemoryLimiter, id="memory")]
if os.environ.get("REDIS_URL"):
    BACKENDS.append(pytest.param(RedisLimiter, id="redis"))
redis_only = pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs Redis")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=BACKENDS)
async def limiter(request, clock):
    """A backend on the fake clock, with tenant 1's account loaded and funded."""
    backend = request.param(clock=clock)
    await backend.init_account("tenant", 1, 10**9)
    return backend


def ask(**kw) -> Admission:
    base = dict(key_id=1, tenant_id=1, request_id=uuid.uuid4().hex, rpm=0, rpd=0, tpm=0,
                concurrency=0, reserve=0, key_quota=False)
    return Admission(**{**base, **kw})


async def admit(limiter, **kw) -> limits.Decision:
    return await limiter.admit(ask(**kw))


async def test_rpm_is_a_sliding_minute(limiter, clock):
    assert (await admit(limiter, rpm=2)).code == limits.OK
    clock.advance(20)
    second = await admit(limiter, rpm=2)
    assert (second.code, second.rpm_used, second.rpm_reset_ms) == (limits.OK, 2, 40_000)
    clock.advance(10)
    refused = await admit(limiter, rpm=2)
    assert refused.code == limits.RPM and refused.retry_after_ms == 30_000  # the first leaves
    clock.advance(30)  # exactly a minute after the first
    assert (await admit(limiter, rpm=2)).code == limits.OK
    assert (await admit(limiter, rpm=2)).code == limits.RPM  # the second is still in


async def test_rpd_resets_at_local_midnight(limiter, clock):
    day, left = limits.local_day_and_seconds_left(clock())
    assert [(await admit(limiter, rpd=1)).code for _ in range(2)] == [limits.OK, limits.RPD]
    refused = await admit(limiter, rpd=1)
    assert refused.retry_after_ms == left * 1000
    clock.advance(left - 2)  # a second or so before midnight: still today
    assert limits.local_day_and_seconds_left(clock())[0] == day
    assert (await admit(limiter, rpd=1)).code == limits.RPD
    clock.advance(2)
    assert limits.local_day_and_seconds_left(clock())[0] != day
    assert (await admit(limiter, rpd=1)).code == limits.OK


async def test_tpm_tokens_leave_the_window_bucket_by_bucket(limiter, clock):
    first = ask(tpm=100)
    assert (await limiter.admit(first)).code == limits.OK
    await limiter.settle(first, refund=0, tokens=60)  # in the bucket starting at START
    clock.advance(25)
    second = ask(tpm=100)
    assert (await limiter.admit(second)).code == limits.OK
    await limiter.settle(second, refund=0, tokens=40)  # bucket START + 20 s
    refused = await admit(limiter, tpm=100)
    assert refused.code == limits.TPM and refused.retry_after_ms == 35_000  # START + 60 s
    clock.advance(35)  # the first bucket left; 40 of 100 remain in the window
    assert (await admit(limiter, tpm=100)).code == limits.OK


@override_settings(GATEWAY_CONCURRENCY_LEASE_SECONDS=10)
async def test_a_concurrency_lease_expires_unless_renewed(limiter, clock):
    running, dead = ask(concurrency=2), ask(concurrency=2)
    assert (await limiter.admit(running)).code == limits.OK
    assert (await limiter.admit(dead)).code == limits.OK
    clock.advance(9)
    await limiter.renew([running])  # only the live request renews
    assert (await admit(limiter, concurrency=2)).code == limits.CONCURRENCY
    clock.advance(1)  # the dead one's lease is over
    assert (await admit(limiter, concurrency=2, commit=False)).code == limits.OK
    clock.advance(8.9)
    assert (await admit(limiter, concurrency=1)).code == limits.CONCURRENCY
    clock.advance(0.2)  # and now the renewed one's, too
    assert (await admit(limiter, concurrency=1)).code == limits.OK


async def test_a_cooled_credential_is_reported_until_its_cool_down_ends(limiter, clock):
    await limiter.cool(42, 30)
    assert (await admit(limiter)).cooled == {42: int((START + 30) * 1000)}
    assert await asyncio.to_thread(limiter.cooldowns) == {42: START + 30}
    clock.advance(30)
    assert (await admit(limiter)).cooled == {}
    assert await asyncio.to_thread(limiter.cooldowns) == {}


async def test_uncool_ends_a_cool_down_at_once(limiter):
    await limiter.cool(42, 300)
    await asyncio.to_thread(limiter.uncool, 42)
    assert (await admit(limiter)).cooled == {}


async def test_a_credentials_upstream_rpm_counts_per_clock_minute(limiter, clock):
    assert [await limiter.hit_credential(5, 2) for _ in range(3)] == [True, True, False]
    assert await limiter.hit_credential(6, 2)  # each credential counts on its own
    clock.advance(60)
    assert await limiter.hit_credential(5, 2)


async def test_a_sticky_binding_is_recorded_for_the_session(limiter):
    served = ask(session="conv-1")
    assert (await limiter.admit(served)).binding is None
    await limiter.settle(served, refund=0, tokens=0, binding="3:31")
    assert (await admit(limiter, session="conv-1")).binding == "3:31"
    assert (await admit(limiter, session="conv-2")).binding is None
    assert (await admit(limiter, session="conv-1", key_id=2)).binding is None  # per key


@redis_only
@override_settings(GATEWAY_CONCURRENCY_LEASE_SECONDS=10)
async def test_the_reconciler_gives_back_reservations_whose_lease_ran_out(clock):
    """reclaim.lua (the reconciler's sweep) and admit.lua agree on when a lease is over."""
    from billing.reconcile import reclaim_expired

    limiter = RedisLimiter(clock=clock)
    await limiter.init_account("tenant", 1, 1000)
    held = ask(reserve=300)
    assert (await limiter.admit(held)).code == limits.OK
    assert await asyncio.to_thread(reclaim_expired, clock()) == 0  # still leased
    clock.advance(10)
    assert await asyncio.to_thread(reclaim_expired, clock()) == 1
    assert await asyncio.to_thread(limiter.available, "tenant", 1) == 1000
    await limiter.settle(held, refund=100, tokens=0)  # late: charges the 200 it cost
    assert await asyncio.to_thread(limiter.available, "tenant", 1) == 800
    await limiter.settle(held, refund=100, tokens=0)  # and only once
    assert await asyncio.to_thread(limiter.available, "tenant", 1) == 800
