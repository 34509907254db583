"""The OpenAI-style billing endpoints chat clients call to show a balance
(``/v1/dashboard/billing/subscription`` and ``/usage``), through a real gateway, read with
plain httpx and with the official SDK: the key's quota or the tenant's balance, date ranges
over raw rows and rollups, and every bad input answered in OpenAI's error envelope."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from billing.models import ModelPrice, UsageLog, UsageRollup
from billing.rollups import local_today, rollup_recent_days
from billing.services import tenant_topup
from keys.models import ApiKey, Status
from tests.conftest import wait_for_usage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

SUBSCRIPTION = "/dashboard/billing/subscription"
USAGE = "/dashboard/billing/usage"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi there"}]}


@pytest.fixture
def priced(tenant):
    # 0.25 per request, whatever the tokens: every answered request costs exactly that.
    ModelPrice.objects.create(model="gpt-4o-mini", per_request=Decimal("0.25"))
    tenant_topup(tenant=tenant, amount=Decimal("10"))
    return tenant


def get(gateway, path: str, secret: str | None, **params: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    return httpx.get(gateway.url + path, headers=headers, params=params)


def spend(gateway, secret: str, times: int = 1) -> None:
    """Answered chat requests, each waited for until its usage row (and charge) landed."""
    for _ in range(times):
        response = httpx.post(gateway.base_url + "/chat/completions", json=CHAT,
                              headers={"Authorization": f"Bearer {secret}"})
        assert response.status_code == 200, response.text
        assert wait_for_usage(response.headers["x-request-id"]).cost == Decimal("0.25")


def test_a_tenant_key_sees_the_tenant_balance(gateway, upstream, api_key, priced):
    spend(gateway, api_key.secret, times=2)
    sub = get(gateway, "/v1" + SUBSCRIPTION, api_key.secret)
    assert sub.status_code == 200
    assert sub.headers["content-type"] == "application/json"
    # limit = what is left (9.5) + what was charged (0.5): limit - usage is the balance.
    assert sub.json() == {"object": "billing_subscription", "has_payment_method": True,
                          "soft_limit_usd": 10.0, "hard_limit_usd": 10.0,
                          "system_hard_limit_usd": 10.0, "access_until": 0}
    usage = get(gateway, "/v1" + USAGE, api_key.secret)
    assert usage.json() == {"object": "list", "total_usage": 50.0}  # cents


def test_a_key_with_a_quota_sees_its_own_quota(gateway, upstream, make_key, priced):
    capped = make_key(name="capped", quota=Decimal("2"))
    other = make_key(name="other")
    spend(gateway, capped.secret)
    spend(gateway, other.secret, times=3)
    sub = get(gateway, "/v1" + SUBSCRIPTION, capped.secret).json()
    assert sub["hard_limit_usd"] == sub["soft_limit_usd"] == 2.0
    assert get(gateway, "/v1" + USAGE, capped.secret).json()["total_usage"] == 25.0
    # The tenant-wide view of a key without a quota counts every key of the tenant.
    assert get(gateway, "/v1" + USAGE, other.secret).json()["total_usage"] == 100.0
    assert get(gateway, "/v1" + SUBSCRIPTION, other.secret).json()["hard_limit_usd"] == 10.0


def test_access_until_is_the_key_expiry(gateway, upstream, make_key):
    expires = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    made = make_key(expires_at=expires)
    sub = get(gateway, SUBSCRIPTION, made.secret).json()
    assert sub["access_until"] == int(expires.timestamp())


@pytest.mark.parametrize("prefix", ["/v1", "", "/codex/v1", "/codex"])
def test_every_path_form_answers(gateway, upstream, api_key, priced, prefix):
    assert get(gateway, prefix + SUBSCRIPTION, api_key.secret).json()["object"] == \
        "billing_subscription"
    answer = get(gateway, prefix + USAGE, api_key.secret)
    assert answer.json()["object"] == "list"
    assert answer.headers["x-turnpike-cost"] == "0.000000"  # asking costs nothing


def test_usage_between_dates_counts_those_local_days(gateway, upstream, api_key, priced):
    spend(gateway, api_key.secret, times=3)
    today = local_today()
    day = timedelta(days=1)

    def total(start: Any, end: Any) -> float:
        answer = get(gateway, USAGE, api_key.secret, start_date=str(start), end_date=str(end))
        assert answer.status_code == 200, answer.text
        return answer.json()["total_usage"]

    assert total(today, today + day) == 75.0
    assert total(today - 30 * day, today + day) == 75.0
    assert total(today - 30 * day, today) == 0.0  # the end date is not included
    assert total(today + day, today + 2 * day) == 0.0
    assert total(today, today) == 0.0
    only_start = get(gateway, USAGE, api_key.secret, start_date=str(today)).json()
    assert only_start["total_usage"] == 75.0


def test_usage_between_dates_reads_rollups_for_days_whose_rows_expired(gateway, upstream,
                                                                        api_key, priced):
    spend(gateway, api_key.secret)  # today: a raw row
    key = ApiKey.objects.get(pk=api_key.key.pk)
    today = local_today()
    old = datetime.now(UTC) - timedelta(days=3)
    UsageLog.objects.create(created_at=old, request_id="req_old", key=key, tenant=key.tenant,
                            endpoint="chat/completions", model="gpt-4o-mini",
                            status_code=200, cost=Decimal("1.5"))
    rollup_recent_days()
    assert UsageRollup.objects.filter(tenant=key.tenant, cost__gt=0).exists()
    UsageLog.objects.filter(request_id="req_old").delete()  # expired after its rollup
    answer = get(gateway, USAGE, api_key.secret, start_date=str(today - timedelta(days=10)),
                 end_date=str(today + timedelta(days=1)))
    assert answer.json()["total_usage"] == 175.0  # 1.5 rolled up + 0.25 raw, once each


@pytest.mark.parametrize("params, param", [
    ({"start_date": "yesterday"}, "start_date"),
    ({"start_date": "2025-01-01", "end_date": "2025-13-01"}, "end_date"),
    ({"start_date": "2025-02-01", "end_date": "2025-01-01"}, "end_date"),
])
def test_bad_dates_are_a_400_naming_the_parameter(gateway, upstream, api_key, params, param):
    answer = get(gateway, "/v1" + USAGE, api_key.secret, **params)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert param in error["message"]


@pytest.mark.parametrize("path", [SUBSCRIPTION, USAGE])
def test_bad_keys_get_openai_errors(gateway, upstream, make_key, path):
    assert get(gateway, "/v1" + path, None).json()["error"]["code"] == "missing_api_key"
    wrong = get(gateway, "/v1" + path, "sk-tp-not-a-key")
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    disabled = make_key(name="off")
    ApiKey.objects.filter(pk=disabled.key.pk).update(status=Status.DISABLED)
    off = get(gateway, "/v1" + path, disabled.secret)
    assert off.status_code == 403 and off.json()["error"]["code"] == "api_key_disabled"
    expired = make_key(name="old", expires_at=datetime.now(UTC) - timedelta(days=1))
    late = get(gateway, "/v1" + path, expired.secret)
    assert late.status_code == 401 and late.json()["error"]["code"] == "api_key_expired"
    post = httpx.post(gateway.url + "/v1" + path,
                      headers={"Authorization": f"Bearer {make_key().secret}"})
    assert post.status_code == 405 and post.json()["error"]["code"] == "method_not_allowed"


def test_the_openai_sdk_reads_both_endpoints(gateway, upstream, make_key, priced):
    made = make_key(quota=Decimal("3"))
    spend(gateway, made.secret, times=2)
    client = openai.OpenAI(base_url=gateway.base_url, api_key=made.secret, max_retries=0)
    sub = client.get(SUBSCRIPTION, cast_to=object)
    usage = client.get(USAGE, cast_to=object, options={"params": {
        "start_date": str(local_today()), "end_date": str(local_today() + timedelta(days=1))}})
    assert sub["hard_limit_usd"] == 3.0
    assert usage == {"object": "list", "total_usage": 50.0}
    assert sub["hard_limit_usd"] - usage["total_usage"] / 100 == 2.5  # what the key has left
    bad = openai.OpenAI(base_url=gateway.base_url, api_key="sk-tp-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.get(SUBSCRIPTION, cast_to=object)
    assert caught.value.code == "invalid_api_key"
