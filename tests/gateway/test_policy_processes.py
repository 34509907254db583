"""Exactness across gateway processes: counters and reservations live in Redis and are
taken atomically, so two processes sharing one Redis give the answers one would."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections import Counter
from decimal import Decimal

import httpx
import pytest

from billing.models import ModelPrice, UsageLog
from billing.services import tenant_topup
from keys.models import ApiKey
from tests.conftest import gateway_env
from tests.servers import start_gateway, stop

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.e2e,
    pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="cross-process state is Redis"),
]

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def burst(urls: list[str], secret: str, count: int,
          body: dict | None = None, timeout: float = 60) -> list[httpx.Response]:
    """``count`` requests at once, request i to urls[i % len(urls)] (alternating between
    the gateways), each on its own connection."""

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
            return await asyncio.gather(*(
                client.post(urls[i % len(urls)] + "/chat/completions", json=body or CHAT,
                            headers={"Authorization": f"Bearer {secret}"})
                for i in range(count)))

    return asyncio.run(run())


def outcome(responses: list[httpx.Response]) -> Counter[str]:
    return Counter("ok" if r.status_code == 200 else r.json()["error"]["code"]
                   for r in responses)


def test_rpm_60_lets_exactly_60_of_150_simultaneous_requests_through_two_processes(
        gateway, gateway_default_ttl, upstream, make_key):
    made = make_key(rpm=62)
    for url in (gateway.base_url, gateway_default_ttl.base_url):  # both know the key now
        assert burst([url], made.secret, 1)[0].status_code == 200
    responses = burst([gateway.base_url, gateway_default_ttl.base_url], made.secret, 150)
    assert outcome(responses) == Counter({"ok": 60, "rate_limit_rpm": 90})
    # Both processes answered, each counting against the one shared window.
    assert len({r.request.url.port for r in responses}) == 2


def test_concurrency_3_never_has_more_than_3_in_flight_across_two_processes(
        gateway, gateway_default_ttl, upstream, make_key, fake_upstream):
    made = make_key(concurrency=3)
    fake_upstream.clear()
    body = {**CHAT, "messages": [{"role": "user", "content": "[[fake hold=1.5]]"}]}
    responses = burst([gateway.base_url, gateway_default_ttl.base_url], made.secret, 20, body)
    result = outcome(responses)
    assert result["ok"] == 3 and result["concurrent_limit"] == 17
    assert fake_upstream.stats()["max_inflight"] == 3
    # Every slot came back when its request finished.
    again = burst([gateway.base_url, gateway_default_ttl.base_url], made.secret, 3)
    assert outcome(again) == Counter({"ok": 3})


def test_a_quota_covering_5_requests_is_never_overspent_by_30_parallel_ones(
        gateway, gateway_default_ttl, upstream, make_key):
    ModelPrice.objects.create(model="gpt-4o-mini", per_request=Decimal("1"))
    made = make_key()
    tenant_topup(tenant=made.key.tenant, amount=Decimal("5"))
    responses = burst([gateway.base_url, gateway_default_ttl.base_url], made.secret, 30)
    assert outcome(responses) == Counter({"ok": 5, "quota_exceeded": 25})
    deadline = time.monotonic() + 10
    while UsageLog.objects.filter(cost__gt=0).count() < 5:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    made.key.tenant.refresh_from_db()
    assert made.key.tenant.balance == Decimal("0")


def test_a_key_quota_is_shared_by_both_processes(gateway, gateway_default_ttl, upstream,
                                                 make_key):
    ModelPrice.objects.create(model="gpt-4o-mini", per_request=Decimal("0.5"))
    made = make_key(quota=Decimal("2"))
    tenant_topup(tenant=made.key.tenant, amount=Decimal("100"))
    responses = burst([gateway.base_url, gateway_default_ttl.base_url], made.secret, 12)
    assert outcome(responses) == Counter({"ok": 4, "quota_exceeded": 8})


def test_slots_are_freed_when_the_upstream_fails_or_the_client_leaves(
        gateway, gateway_default_ttl, upstream, make_key, fake_upstream):
    made = make_key(concurrency=1)
    headers = {"Authorization": f"Bearer {made.secret}"}
    failed = httpx.post(gateway.base_url + "/chat/completions", headers=headers, json={
        **CHAT, "messages": [{"role": "user", "content": "[[fake status=500]]"}]})
    assert failed.status_code == 500
    after = httpx.post(gateway_default_ttl.base_url + "/chat/completions", headers=headers,
                       json=CHAT)
    assert after.status_code == 200, after.text
    body = {**CHAT, "stream": True,
            "messages": [{"role": "user", "content": "[[fake chunks=100 delay=0.2]]"}]}
    with httpx.stream("POST", gateway.base_url + "/chat/completions", headers=headers,
                      json=body) as resp:
        for line in resp.iter_lines():
            if "tok0" in line:
                break
    deadline = time.monotonic() + 5
    while httpx.post(gateway_default_ttl.base_url + "/chat/completions", headers=headers,
                     json=CHAT).status_code != 200:
        assert time.monotonic() < deadline, "the disconnected stream kept its slot"
        time.sleep(0.05)


def test_a_crashed_processs_slots_expire_on_their_own(gateway, upstream, make_key,
                                                      fake_upstream):
    made = make_key(concurrency=1)
    doomed = start_gateway(gateway_env(GATEWAY_CONCURRENCY_LEASE_SECONDS="2"))
    try:
        holder = threading.Thread(target=lambda: _swallow(lambda: httpx.post(
            doomed.base_url + "/chat/completions", timeout=30,
            headers={"Authorization": f"Bearer {made.secret}"},
            json={**CHAT, "messages": [{"role": "user", "content": "[[fake hold=30]]"}]})))
        holder.start()
        deadline = time.monotonic() + 5
        while fake_upstream.stats()["inflight"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(1.5)  # past the first renewal, so the lease is the renewed one
        assert burst([gateway.base_url], made.secret, 1)[0].status_code == 429
        os.kill(doomed.proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        while burst([gateway.base_url], made.secret, 1)[0].status_code != 200:
            assert time.monotonic() - killed < 5, "the dead process's slot never expired"
            time.sleep(0.1)
        holder.join(timeout=10)
    finally:
        stop(doomed.proc)


def _swallow(call) -> None:
    try:
        call()
    except httpx.HTTPError:
        pass


def test_an_admin_change_applies_on_every_process_within_a_second(
        gateway_default_ttl, gateway_default_ttl_2, upstream, make_key):
    made = make_key(rpm=1000)
    urls = [gateway_default_ttl.base_url, gateway_default_ttl_2.base_url]
    admitted = 4
    assert outcome(burst(urls, made.secret, admitted)) == Counter({"ok": 4})  # both cached it
    key = ApiKey.objects.get(pk=made.key.pk)
    key.allowed_models = ["gpt-5"]
    key.save()
    changed = time.monotonic()
    for url in urls:
        while burst([url], made.secret, 1)[0].status_code == 200:
            admitted += 1
            assert time.monotonic() - changed < 1.5, f"{url} still allows the old model"
            time.sleep(0.05)
    assert outcome(burst(urls, made.secret, 2)) == Counter({"model_not_allowed": 2})
    # Lower the RPM to one more than this minute has used: exactly one more gets through.
    key.allowed_models = []
    key.rpm = admitted + 1
    key.save()
    time.sleep(1.1)
    assert outcome(burst(urls, made.secret, 10)) == Counter({"ok": 1, "rate_limit_rpm": 9})


def test_the_embedded_default_without_redis_gives_the_same_answers_in_one_process(
        upstream, make_key, fake_upstream):
    """No REDIS_URL: the in-process limiter, same order and exactness for one process."""
    made = make_key(rpm=5, concurrency=2)
    solo = start_gateway(gateway_env(REDIS_URL="", GATEWAY_SNAPSHOT_TTL="0"))
    try:
        body = {**CHAT, "messages": [{"role": "user", "content": "[[fake hold=0.5]]"}]}
        first = outcome(burst([solo.base_url], made.secret, 6, body))
        assert first == Counter({"ok": 2, "concurrent_limit": 4})
        # The refusals took no RPM: 3 of the 5 are left.
        second = outcome([burst([solo.base_url], made.secret, 1)[0] for _ in range(4)])
        assert second == Counter({"ok": 3, "rate_limit_rpm": 1})
    finally:
        stop(solo.proc)
