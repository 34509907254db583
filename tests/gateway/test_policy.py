"""The key policy through a real gateway: every check, its code, and the order."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
from django.utils import timezone

from billing.models import ModelPrice
from billing.services import tenant_topup
from keys.models import Group, Status
from tests.conftest import wait_for_usage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


def chat(gateway, secret: str, **body) -> httpx.Response:
    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **body}
    return httpx.post(gateway.base_url + "/chat/completions", json=payload,
                      headers={"Authorization": f"Bearer {secret}"}, timeout=30)


def code_of(resp: httpx.Response) -> str | None:
    return resp.json()["error"]["code"] if resp.status_code >= 400 else None


def expect(resp: httpx.Response, status: int, code: str | None) -> None:
    assert (resp.status_code, code_of(resp)) == (status, code), resp.text
    if status == 429:
        assert int(resp.headers["retry-after"]) >= 1


def test_a_disabled_key_is_refused_before_its_expiry_is_looked_at(gateway, upstream, make_key):
    made = make_key(expires_at=timezone.now() - timedelta(days=1))
    made.key.status = Status.DISABLED
    made.key.save()
    expect(chat(gateway, made.secret), 403, "api_key_disabled")


def test_an_expired_key_is_refused_before_its_model_is_looked_at(gateway, upstream, make_key):
    made = make_key(expires_at=timezone.now() - timedelta(days=1), models="other-model")
    expect(chat(gateway, made.secret), 401, "api_key_expired")


def test_model_permission_comes_before_quota(gateway, upstream, make_key):
    ModelPrice.objects.create(model="gpt-*", per_request=Decimal("1"))
    made = make_key(models="gpt-5")
    expect(chat(gateway, made.secret), 403, "model_not_allowed")
    expect(chat(gateway, made.secret, model="gpt-5"), 429, "quota_exceeded")


def test_quota_comes_before_rpm(gateway, upstream, make_key):
    ModelPrice.objects.create(model="gpt-4o-mini", per_request=Decimal("1"))
    made = make_key(rpm=1)
    expect(chat(gateway, made.secret), 429, "quota_exceeded")
    tenant_topup(tenant=made.key.tenant, amount=Decimal("1"))
    expect(chat(gateway, made.secret), 200, None)  # the refusals consumed no RPM
    tenant_topup(tenant=made.key.tenant, amount=Decimal("5"))
    expect(chat(gateway, made.secret), 429, "rate_limit_rpm")


def test_rpm_comes_before_rpd_and_says_when_to_retry(gateway, upstream, make_key):
    made = make_key(rpm=2, rpd=2)
    first = chat(gateway, made.secret)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    expect(chat(gateway, made.secret), 200, None)
    refused = chat(gateway, made.secret)
    expect(refused, 429, "rate_limit_rpm")
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.json()["error"]["message"].startswith("Rate limit exceeded")


def test_rpd_refuses_once_the_day_is_used_up(gateway, upstream, make_key):
    made = make_key(rpd=1)
    expect(chat(gateway, made.secret), 200, None)
    refused = chat(gateway, made.secret)
    expect(refused, 429, "rate_limit_rpd")
    assert int(refused.headers["retry-after"]) <= 86_400 + 1


def test_tpm_counts_the_real_tokens_of_finished_requests(gateway, upstream, make_key):
    made = make_key(tpm=5)
    expect(chat(gateway, made.secret), 200, None)  # 1 input + 3 output tokens: 4 < 5
    expect(chat(gateway, made.secret), 200, None)  # 8 >= 5 from now on
    deadline = time.monotonic() + 5
    while (resp := chat(gateway, made.secret)).status_code == 200:
        assert time.monotonic() < deadline  # settling happens just after the response
        time.sleep(0.05)
    expect(resp, 429, "rate_limit_tpm")


def test_concurrency_refuses_a_request_beyond_the_limit_and_frees_the_slot(
        gateway, upstream, make_key, fake_upstream):
    made = make_key(concurrency=1)
    held: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: held.append(chat(
        gateway, made.secret, messages=[{"role": "user", "content": "[[fake hold=1.5]]"}])))
    thread.start()
    deadline = time.monotonic() + 5
    while fake_upstream.stats()["inflight"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    expect(chat(gateway, made.secret), 429, "concurrent_limit")
    thread.join()
    assert held[0].status_code == 200
    expect(chat(gateway, made.secret), 200, None)


def test_max_tokens_is_checked_last_and_takes_the_larger_of_both_names(
        gateway, upstream, make_key):
    made = make_key(max_tokens=100, rpm=2)
    expect(chat(gateway, made.secret, max_tokens=100), 200, None)
    refused = chat(gateway, made.secret, max_tokens=50, max_completion_tokens=150)
    expect(refused, 400, "max_tokens_exceeded")
    resp = httpx.post(gateway.base_url + "/responses",
                      json={"model": "gpt-5", "input": "x", "max_output_tokens": 101},
                      headers={"Authorization": f"Bearer {made.secret}"})
    expect(resp, 400, "max_tokens_exceeded")
    expect(chat(gateway, made.secret), 200, None)  # the refusals took no RPM
    # With the RPM used up, the earlier check is the one reported.
    expect(chat(gateway, made.secret, max_tokens=500), 429, "rate_limit_rpm")


def test_ip_allow_list_is_checked_with_the_key_status(gateway, upstream, make_key):
    outside = make_key(allowed_ips="10.0.0.0/8")
    expect(chat(gateway, outside.secret), 403, "ip_not_allowed")
    inside = make_key(allowed_ips="10.0.0.0/8, 127.0.0.1/32")
    expect(chat(gateway, inside.secret), 200, None)


def test_limits_fall_back_to_the_group_and_zero_means_unlimited(gateway, upstream, tenant,
                                                                 make_key):
    group = Group.objects.create(name="starter", rpm=1, allowed_models=["gpt-5*"])
    tenant.group = group
    tenant.save()
    inherits = make_key()
    expect(chat(gateway, inherits.secret, model="gpt-5"), 200, None)
    expect(chat(gateway, inherits.secret, model="gpt-5"), 429, "rate_limit_rpm")
    expect(chat(gateway, inherits.secret), 403, "model_not_allowed")
    unlimited = make_key(rpm=0, models="*")
    for _ in range(3):
        expect(chat(gateway, unlimited.secret), 200, None)


def test_an_unknown_model_the_key_may_use_is_404(gateway, upstream, make_key):
    made = make_key(models="gpt-*")
    expect(chat(gateway, made.secret, model="gpt-unknown"), 404, "model_not_found")
    expect(chat(gateway, made.secret, model="claude-x"), 403, "model_not_allowed")


def test_the_real_cost_is_charged_and_the_rest_of_the_reservation_returned(
        gateway, upstream, make_key):
    ModelPrice.objects.create(model="gpt-4o-mini", input_per_million=Decimal("1000000"),
                              output_per_million=Decimal("2000000"))
    made = make_key(quota=Decimal("100"))
    tenant_topup(tenant=made.key.tenant, amount=Decimal("1000"))
    resp = chat(gateway, made.secret, max_tokens=10)  # reserves input estimate + 10 output
    assert resp.status_code == 200
    row = wait_for_usage(resp.headers["x-request-id"])
    assert (row.input_tokens, row.output_tokens) == (1, 3)
    assert row.cost == Decimal("7")  # 1 x 1 + 3 x 2 per token
    made.key.tenant.refresh_from_db()
    made.key.refresh_from_db()
    assert made.key.tenant.balance == Decimal("993")
    assert made.key.quota_used == Decimal("7")
    # 93 left on the key quota: a request reserving more than that is refused.
    expect(chat(gateway, made.secret, max_tokens=60), 429, "quota_exceeded")
    expect(chat(gateway, made.secret, max_tokens=20), 200, None)
