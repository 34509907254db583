"""Routing across several upstreams and credentials: weights, priority, sticky sessions
across processes, failover, cool-downs, credential disabling, timeouts, health, groups and
model-name mapping — against real fake-upstream processes."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from io import StringIO

import httpx
import pytest
from django.core.management import call_command

from gateway.models import Credential, Upstream
from gateway.services import credential_add, upstream_create
from gateway.tasks import probe_upstreams
from keys.models import Group, Status
from tests.conftest import wait_for_usage
from tests.servers import free_port, start_fake_upstream, stop

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]
needs_redis = pytest.mark.skipif(not os.environ.get("REDIS_URL"),
                                 reason="sessions shared across processes live in Redis")


@pytest.fixture(scope="session")
def open_fake():
    """A fake upstream that accepts any credential, so the credential used shows which
    route served a request."""
    server = start_fake_upstream()
    yield server
    stop(server.proc)


@pytest.fixture
def fake(open_fake):
    open_fake.clear()
    return open_fake


def chat(gateway, secret: str, model: str, text: str = "hi", **extra) -> httpx.Response:
    return httpx.post(gateway.base_url + "/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {secret}"},
                      json={"model": model, "messages": [{"role": "user", "content": text}],
                            **extra})


def credentials_used(fake, path: str = "/v1/chat/completions") -> list[str]:
    return [r["headers"].get("authorization", "").removeprefix("Bearer ")
            for r in fake.requests() if r["path"] == path]


def add(fake, name: str, models: list[str], keys: list[str], **kw) -> Upstream:
    return upstream_create(name=name, kind="openai", base_url=fake.openai_url, models=models,
                           api_keys=keys, **kw)


def test_weights_share_conversations_within_a_priority_tier(gateway, fake, api_key):
    add(fake, "heavy", ["wm"], ["sk-heavy"], weight=3)
    add(fake, "light", ["wm"], ["sk-light"], weight=1)

    async def run() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            sem = asyncio.Semaphore(20)

            async def one(i: int) -> int:
                async with sem:
                    r = await client.post(gateway.base_url + "/chat/completions", headers={
                        "Authorization": f"Bearer {api_key.secret}"}, json={
                        "model": "wm", "messages": [{"role": "user", "content": f"q{i}"}]})
                    return r.status_code
            return await asyncio.gather(*(one(i) for i in range(400)))

    assert set(asyncio.run(run())) == {200}
    used = Counter(credentials_used(fake))
    share = used["sk-heavy"] / (used["sk-heavy"] + used["sk-light"])
    assert 0.69 <= share <= 0.81, used  # 0.75 expected; 400 draws: sd ~0.022


def test_the_highest_priority_tier_takes_everything(gateway, fake, api_key):
    add(fake, "backup", ["pm"], ["sk-backup"], weight=10)
    add(fake, "primary", ["pm"], ["sk-primary"], priority=5)
    for i in range(20):
        assert chat(gateway, api_key.secret, "pm", f"q{i}").status_code == 200
    assert set(credentials_used(fake)) == {"sk-primary"}


def test_a_conversation_stays_on_one_credential_without_a_session_key(gateway, fake, api_key):
    add(fake, "pool", ["cm"], [f"sk-pool-{i}" for i in range(6)])
    for turn in range(8):
        assert chat(gateway, api_key.secret, "cm", "the same first message",
                    messages=[{"role": "user", "content": "the same first message"},
                              {"role": "assistant", "content": f"turn {turn}"},
                              {"role": "user", "content": "go on"}]).status_code == 200
    assert len(set(credentials_used(fake))) == 1


@needs_redis
def test_a_session_sticks_to_its_credential_across_processes_until_it_fails(
        gateway, gateway_default_ttl, fake, api_key):
    add(fake, "sticky", ["sm"], [f"sk-sticky-{i}" for i in range(4)])
    gateways = [gateway, gateway_default_ttl]
    for i in range(10):  # different first messages: only the session key can keep them
        resp = chat(gateways[i % 2], api_key.secret, "sm", f"turn {i}",
                    prompt_cache_key="session-one")
        assert resp.status_code == 200
    first = set(credentials_used(fake))
    assert len(first) == 1
    bound = first.pop()
    fake.script_key(bound, status=429, retry_after=60)
    resp = chat(gateway, api_key.secret, "sm", "after the limit", prompt_cache_key="session-one")
    assert resp.status_code == 200  # moved on without the client noticing
    moved = credentials_used(fake)[-1]
    assert moved != bound
    httpx.delete(fake.url + "/_fake/keys")  # the old credential recovers...
    for i in range(6):
        assert chat(gateways[i % 2], api_key.secret, "sm", f"later {i}",
                    prompt_cache_key="session-one").status_code == 200
    assert set(credentials_used(fake)[-6:]) == {moved}  # ...but the session stays put


def test_failover_before_the_first_byte_is_invisible_and_recorded(gateway, fake, api_key):
    add(fake, "broken", ["fm"], ["sk-broken"], priority=1)
    add(fake, "healthy", ["fm"], ["sk-healthy"])
    fake.script_key("sk-broken", status=503)
    resp = chat(gateway, api_key.secret, "fm", stream=True)
    assert resp.status_code == 200 and "tok0" in resp.text and "error" not in resp.text
    row = wait_for_usage(resp.headers["x-request-id"])
    assert [(a["upstream"], a["status"]) for a in row.attempts] == [("broken", 503),
                                                                  ("healthy", 200)]
    assert row.upstream.name == "healthy" and row.status_code == 200


def test_a_429_cools_the_credential_for_the_time_the_upstream_asked(gateway, fake, api_key):
    add(fake, "limited", ["lm"], ["sk-limited"], priority=1)
    add(fake, "spare", ["lm"], ["sk-spare"])
    fake.script_key("sk-limited", status=429, retry_after=2, count=1)
    first = chat(gateway, api_key.secret, "lm")
    assert first.status_code == 200
    assert [a["status"] for a in wait_for_usage(first.headers["x-request-id"]).attempts] == [
        429, 200]
    cooling = chat(gateway, api_key.secret, "lm")
    assert [a["upstream"] for a in wait_for_usage(cooling.headers["x-request-id"]).attempts] \
        == ["spare"]  # not even tried while cooling down
    time.sleep(2.2)
    back = chat(gateway, api_key.secret, "lm")
    assert [a["upstream"] for a in wait_for_usage(back.headers["x-request-id"]).attempts] == [
        "limited"]


def test_a_credential_refused_by_the_upstream_is_disabled_with_the_reason(
        gateway, fake, api_key, admin_client):
    upstream = add(fake, "refusing", ["am"], ["sk-revoked"], priority=1)
    add(fake, "fallback", ["am"], ["sk-fine"])
    fake.script_key("sk-revoked", status=401)
    assert chat(gateway, api_key.secret, "am").status_code == 200
    credential = Credential.objects.get(upstream=upstream)
    assert credential.status == Status.DISABLED
    assert "401" in credential.disabled_reason
    page = admin_client.get("/admin/gateway/credential/")
    assert b"HTTP 401" in page.content
    fake.clear()
    for _ in range(3):
        assert chat(gateway, api_key.secret, "am").status_code == 200
    assert set(credentials_used(fake)) == {"sk-fine"}
    # An operator fixes the key upstream and re-enables the credential: it is used at once.
    credential.status = Status.ACTIVE
    credential.disabled_reason = ""
    credential.save()
    assert chat(gateway, api_key.secret, "am").status_code == 200
    assert credentials_used(fake)[-1] == "sk-revoked"


def test_a_slow_first_byte_fails_over_by_the_upstreams_own_timeout(gateway, fake, api_key):
    add(fake, "slow", ["tm"], ["sk-slow"], priority=1, timeout_first_byte=0.3)
    add(fake, "quick", ["tm"], ["sk-quick"])
    fake.script_key("sk-slow", hold=3)
    started = time.monotonic()
    resp = chat(gateway, api_key.secret, "tm")
    assert resp.status_code == 200 and time.monotonic() - started < 2.5
    attempts = wait_for_usage(resp.headers["x-request-id"]).attempts
    assert [(a["upstream"], a["error"]) for a in attempts] == [("slow", "upstream_timeout"),
                                                             ("quick", "")]


def test_when_every_route_fails_the_client_gets_the_last_error(gateway, fake, api_key):
    add(fake, "down", ["dm"], ["sk-d1", "sk-d2"])
    fake.script_key("sk-d1", status=500)
    fake.script_key("sk-d2", status=500)
    resp = chat(gateway, api_key.secret, "dm")
    assert resp.status_code == 500 and resp.json()["error"]["message"]
    attempts = wait_for_usage(resp.headers["x-request-id"]).attempts
    assert len(attempts) == 1  # a 5xx is the upstream's fault: its other credential is skipped


def test_a_credential_rpm_moves_requests_on_before_the_upstream_limit(gateway, fake, api_key):
    upstream = add(fake, "metered", ["rm"], [], priority=1)
    credential = credential_add(upstream=upstream, secret="sk-metered")
    credential.rpm = 2
    credential.save()
    add(fake, "overflow", ["rm"], ["sk-overflow"])
    for _ in range(4):
        assert chat(gateway, api_key.secret, "rm").status_code == 200
    assert credentials_used(fake) == ["sk-metered", "sk-metered", "sk-overflow", "sk-overflow"]


def test_the_health_task_disables_a_dead_upstream_and_brings_it_back(gateway, fake, api_key):
    dead = upstream_create(name="flaky", kind="openai", base_url=f"http://127.0.0.1:{free_port()}/v1",
                           models=["hm"], api_keys=["sk-flaky"], priority=1)
    add(fake, "steady", ["hm"], ["sk-steady"])
    for _ in range(3):
        probe_upstreams.apply()
    dead.refresh_from_db()
    assert dead.auto_disabled and dead.health == "unhealthy" and dead.health_failures == 3
    resp = chat(gateway, api_key.secret, "hm")
    assert [a["upstream"] for a in wait_for_usage(resp.headers["x-request-id"]).attempts] == [
        "steady"]  # not even tried
    dead.base_url = fake.openai_url  # it comes back
    dead.save()
    probe_upstreams.apply()
    dead.refresh_from_db()
    assert not dead.auto_disabled and dead.health == "healthy" and dead.health_latency_ms >= 0
    resp = chat(gateway, api_key.secret, "hm")
    assert [a["upstream"] for a in wait_for_usage(resp.headers["x-request-id"]).attempts] == [
        "flaky"]


def test_groups_keep_dedicated_upstreams_to_themselves(gateway, fake, tenant, make_key):
    premium = Group.objects.create(name="premium", dedicated_upstreams=True)
    add(fake, "premium-up", ["premium-model"], ["sk-premium"], groups="premium")
    add(fake, "public-up", ["public-model"], ["sk-public"])
    vip = make_key(group=premium)
    regular = make_key()

    def listed(secret: str) -> list[str]:
        return [m["id"] for m in httpx.get(gateway.base_url + "/models", headers={
            "Authorization": f"Bearer {secret}"}).json()["data"]]

    assert listed(vip.secret) == ["premium-model"]
    assert listed(regular.secret) == ["public-model"]
    assert chat(gateway, vip.secret, "premium-model").status_code == 200
    assert chat(gateway, vip.secret, "public-model").status_code == 404
    assert chat(gateway, regular.secret, "premium-model").status_code == 404


def test_client_model_names_can_be_mapped_to_the_upstreams_names(gateway, fake, api_key):
    add(fake, "mapped", [], ["sk-map"], model_map={"gpt-5-codex": "gpt-5.1-codex"})
    resp = chat(gateway, api_key.secret, "gpt-5-codex")
    assert resp.status_code == 200
    assert fake.requests()[-1]["body"]["model"] == "gpt-5.1-codex"
    models = httpx.get(gateway.base_url + "/models",
                       headers={"Authorization": f"Bearer {api_key.secret}"}).json()
    assert "gpt-5-codex" in [m["id"] for m in models["data"]]
    assert wait_for_usage(resp.headers["x-request-id"]).model == "gpt-5-codex"


def test_the_upstream_cli_adds_every_routing_option_and_toggles_upstreams(fake):
    Group.objects.create(name="gold")
    out = StringIO()
    call_command("upstream", "add", "--name", "cli-up", "--kind", "openai",
                 "--base-url", fake.openai_url, "--api-key", "sk-1", "--api-key", "sk-2",
                 "--models", "a,b", "--priority", "2", "--weight", "5",
                 "--map", "x=y", "--map", "c=d", "--groups", "gold",
                 "--timeout-connect", "1.5", "--timeout-first-byte", "20",
                 "--timeout-idle", "90", "--proxy", "http://127.0.0.1:3128", stdout=out)
    upstream = Upstream.objects.get(name="cli-up")
    assert (upstream.priority, upstream.weight, upstream.model_map) == (2, 5,
                                                                       {"x": "y", "c": "d"})
    assert [g.name for g in upstream.groups.all()] == ["gold"]
    assert (upstream.timeout_connect, upstream.timeout_first_byte, upstream.timeout_idle) == (
        1.5, 20, 90)
    assert upstream.proxy_url == "http://127.0.0.1:3128" and upstream.credentials.count() == 2
    call_command("upstream", "disable", "cli-up", stdout=out)
    upstream.refresh_from_db()
    assert upstream.status == Status.DISABLED
    call_command("upstream", "enable", "cli-up", stdout=out)
    upstream.refresh_from_db()
    assert upstream.status == Status.ACTIVE
    upstream.proxy_url = ""
    upstream.save()
    call_command("upstream", "test", "cli-up", stdout=out)
    assert "cli-up: healthy" in out.getvalue()
