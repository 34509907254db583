"""The tenant API at /api/ (portal/api.py), through Django's test client in-process.

It authenticates with the same Turnpike key a client sends to /v1, and every error has
the body ``{"message": ..., "extra": {"code": ...}}``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from django.test import Client
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from billing.models import LedgerEntry, RedemptionCode
from billing.redemption import CODE_PREFIX, redeem_create
from billing.services import tenant_topup
from keys.models import ApiKey, Status, Tenant
from keys.services import CreatedKey, tenant_get_or_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def http() -> Client:
    return Client()


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def error_of(response: Any, status: int, code: str) -> str:
    """Assert the one error shape; return the message."""
    assert response.status_code == status, response.content
    data = response.json()
    assert set(data) == {"message", "extra"}
    assert isinstance(data["message"], str) and data["message"]
    assert data["extra"]["code"] == code
    return data["message"]


def make_code(amount: str = "10", **kwargs: Any) -> str:
    return redeem_create(amount=Decimal(amount), count=1, **kwargs)[0]


# --- balance and authentication ------------------------------------------------------------

def test_balance_returns_the_tenant_its_balance_and_the_currency(
        http: Client, tenant: Tenant, api_key: CreatedKey) -> None:
    tenant_topup(tenant=tenant, amount=Decimal("12.5"))

    response = http.get("/api/balance", headers=auth(api_key.secret))

    assert response.status_code == 200
    assert response.json() == {"tenant": "acme", "balance": "12.500000", "currency": "USD"}


def test_balance_uses_the_billing_currency_setting(
        http: Client, api_key: CreatedKey, settings: Any) -> None:
    settings.BILLING_CURRENCY = "EUR"
    response = http.get("/api/balance", headers=auth(api_key.secret))
    assert response.json()["currency"] == "EUR"


def test_the_key_is_also_accepted_in_an_x_api_key_header_or_a_lower_case_bearer(
        http: Client, api_key: CreatedKey) -> None:
    for headers in ({"X-Api-Key": api_key.secret},
                    {"Authorization": f"bearer {api_key.secret}"},
                    {"Authorization": api_key.secret}):
        response = http.get("/api/balance", headers=headers)
        assert response.status_code == 200, headers
        assert response.json()["tenant"] == "acme"


def test_a_request_without_a_key_is_refused_with_401(http: Client) -> None:
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Bearer   "}):
        response = http.get("/api/balance", headers=headers)
        assert "No API key" in error_of(response, 401, "missing_api_key")
        assert response["WWW-Authenticate"].startswith("Bearer")


def test_an_unknown_key_is_refused_with_401(http: Client, api_key: CreatedKey) -> None:
    wrong = api_key.secret[:-1] + ("A" if api_key.secret[-1] != "A" else "B")
    response = http.get("/api/balance", headers=auth(wrong))
    assert "not valid" in error_of(response, 401, "invalid_api_key")


def test_a_disabled_key_is_refused_with_403(http: Client, api_key: CreatedKey) -> None:
    ApiKey.objects.filter(pk=api_key.key.pk).update(status=Status.DISABLED)
    response = http.get("/api/balance", headers=auth(api_key.secret))
    assert "API key is disabled" in error_of(response, 403, "api_key_disabled")


def test_a_key_of_a_disabled_tenant_is_refused_with_403(
        http: Client, tenant: Tenant, api_key: CreatedKey) -> None:
    Tenant.objects.filter(pk=tenant.pk).update(status=Status.DISABLED)
    code = make_code("5")

    response = http.post("/api/redeem", {"code": code}, content_type="application/json",
                         headers=auth(api_key.secret))

    assert "tenant" in error_of(response, 403, "tenant_disabled")
    assert not LedgerEntry.objects.exists()
    assert RedemptionCode.objects.get().redeemed_at is None


def test_an_expired_key_is_refused_with_401(http: Client,
                                            make_key: Callable[..., CreatedKey]) -> None:
    made = make_key(name="old", expires_at=timezone.now() + timedelta(minutes=1))
    ApiKey.objects.filter(pk=made.key.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1))
    response = http.get("/api/balance", headers=auth(made.secret))
    assert "expired" in error_of(response, 401, "api_key_expired")


def test_a_key_limited_to_other_addresses_is_refused_with_403(
        http: Client, make_key: Callable[..., CreatedKey]) -> None:
    elsewhere = make_key(name="office only", allowed_ips=["10.0.0.0/8"])
    here = make_key(name="loopback", allowed_ips=["127.0.0.0/8"])

    refused = http.get("/api/balance", headers=auth(elsewhere.secret))
    assert "127.0.0.1" in error_of(refused, 403, "ip_not_allowed")
    assert http.get("/api/balance", headers=auth(here.secret)).status_code == 200


# --- redeem --------------------------------------------------------------------------------

def test_redeem_credits_the_balance_and_returns_the_ledger_entry(
        http: Client, tenant: Tenant, api_key: CreatedKey) -> None:
    tenant_topup(tenant=tenant, amount=Decimal("1"))
    code = make_code("25.5")

    response = http.post("/api/redeem", {"code": code}, content_type="application/json",
                         headers=auth(api_key.secret))

    assert response.status_code == 200, response.content
    data = response.json()
    assert data["tenant"] == "acme"
    assert data["balance"] == "26.500000"
    assert data["currency"] == "USD"
    entry = LedgerEntry.objects.get(kind=LedgerEntry.Kind.REDEMPTION)
    assert data["entry"]["id"] == entry.pk
    assert data["entry"]["kind"] == "redemption"
    assert Decimal(data["entry"]["amount"]) == Decimal("25.5")
    assert data["entry"]["reference"] == code[:13]
    created = parse_datetime(data["entry"]["created_at"])  # JSON keeps milliseconds
    assert created is not None
    assert abs(created - entry.created_at) < timedelta(milliseconds=1)
    tenant.refresh_from_db()
    assert tenant.balance == Decimal("26.5")
    assert RedemptionCode.objects.get().redeemed_by == tenant


def test_a_script_can_redeem_without_a_csrf_token(tenant: Tenant,
                                                 api_key: CreatedKey) -> None:
    script = Client(enforce_csrf_checks=True)  # like curl: no cookies, no CSRF token
    response = script.post("/api/redeem", {"code": make_code("2")},
                           content_type="application/json", headers=auth(api_key.secret))
    assert response.status_code == 200, response.content
    assert response.json()["balance"] == "2.000000"


def test_redeem_of_an_unknown_or_malformed_code_is_a_400(
        http: Client, tenant: Tenant, api_key: CreatedKey) -> None:
    unknown = CODE_PREFIX + "2345-6789-ABCD-EFGH-JKMN-PQRS"
    for code, words in ((unknown, "No such redemption code"),
                        ("free money please", "not a redemption code")):
        response = http.post("/api/redeem", {"code": code}, content_type="application/json",
                             headers=auth(api_key.secret))
        assert words in error_of(response, 400, "redemption_code_invalid")
    tenant.refresh_from_db()
    assert tenant.balance == 0


def test_redeem_of_a_used_code_is_a_400_and_credits_nobody_again(
        http: Client, tenant: Tenant, api_key: CreatedKey,
        make_key: Callable[..., CreatedKey]) -> None:
    other_tenant, _ = tenant_get_or_create(name="globex")
    other = make_key(tenant=other_tenant, name="globex key")
    code = make_code("10")
    first = http.post("/api/redeem", {"code": code}, content_type="application/json",
                      headers=auth(api_key.secret))
    assert first.status_code == 200

    for secret in (api_key.secret, other.secret):
        again = http.post("/api/redeem", {"code": code}, content_type="application/json",
                          headers=auth(secret))
        assert "already been used" in error_of(again, 400, "redemption_code_redeemed")

    tenant.refresh_from_db()
    other_tenant.refresh_from_db()
    assert (tenant.balance, other_tenant.balance) == (Decimal("10"), Decimal("0"))
    assert LedgerEntry.objects.count() == 1


def test_redeem_of_an_expired_code_is_a_400(http: Client, tenant: Tenant,
                                           api_key: CreatedKey) -> None:
    code = make_code("10", expires_at=timezone.now() + timedelta(hours=1))
    RedemptionCode.objects.update(expires_at=timezone.now() - timedelta(seconds=1))

    response = http.post("/api/redeem", {"code": code}, content_type="application/json",
                         headers=auth(api_key.secret))

    assert "expired" in error_of(response, 400, "redemption_code_expired")
    tenant.refresh_from_db()
    assert tenant.balance == 0


@pytest.mark.parametrize("payload", [{}, {"code": ""}, {"code": 12}, {"coupon": "x"}])
def test_redeem_with_a_bad_body_is_a_400_that_lists_the_errors(
        http: Client, api_key: CreatedKey, payload: dict[str, Any]) -> None:
    response = http.post("/api/redeem", payload, content_type="application/json",
                         headers=auth(api_key.secret))
    error_of(response, 400, "invalid_request")
    errors = response.json()["extra"]["errors"]
    assert errors and all("code" in e["loc"] for e in errors)


def test_redeem_with_a_body_that_is_not_json_is_a_400(http: Client,
                                                      api_key: CreatedKey) -> None:
    response = http.post("/api/redeem", "{not json", content_type="application/json",
                         headers=auth(api_key.secret))
    assert "Cannot parse" in error_of(response, 400, "invalid_request")


def test_redeem_without_a_key_is_a_401_and_uses_no_code(http: Client) -> None:
    code = make_code("10")
    response = http.post("/api/redeem", {"code": code}, content_type="application/json")
    error_of(response, 401, "missing_api_key")
    assert RedemptionCode.objects.get().redeemed_at is None


# --- ledger --------------------------------------------------------------------------------

def test_ledger_lists_the_tenants_latest_entries_newest_first(
        http: Client, tenant: Tenant, api_key: CreatedKey) -> None:
    other, _ = tenant_get_or_create(name="globex")
    tenant_topup(tenant=other, amount=Decimal("99"), note="not yours")
    for amount in ("1", "2", "3"):
        tenant_topup(tenant=tenant, amount=Decimal(amount), note=f"top-up {amount}")
    code = make_code("4")
    http.post("/api/redeem", {"code": code}, content_type="application/json",
              headers=auth(api_key.secret))

    response = http.get("/api/ledger", headers=auth(api_key.secret))

    assert response.status_code == 200
    data = response.json()
    assert data["tenant"] == "acme" and data["currency"] == "USD"
    assert [(e["kind"], Decimal(e["amount"])) for e in data["entries"]] == [
        ("redemption", 4), ("topup", 3), ("topup", 2), ("topup", 1)]
    assert data["entries"][1]["note"] == "top-up 3"
    assert set(data["entries"][0]) == {"id", "kind", "amount", "reference", "note",
                                       "created_at"}

    limited = http.get("/api/ledger", {"limit": 2}, headers=auth(api_key.secret)).json()
    assert [Decimal(e["amount"]) for e in limited["entries"]] == [4, 3]


@pytest.mark.parametrize("limit", ["0", "501", "many"])
def test_ledger_with_a_limit_out_of_range_is_a_400(http: Client, api_key: CreatedKey,
                                                   limit: str) -> None:
    response = http.get("/api/ledger", {"limit": limit}, headers=auth(api_key.secret))
    error_of(response, 400, "invalid_request")


def test_ledger_without_a_valid_key_is_a_401(http: Client) -> None:
    response = http.get("/api/ledger", headers=auth("sk-tp-nope"))
    error_of(response, 401, "invalid_api_key")


# --- docs ----------------------------------------------------------------------------------

def test_openapi_lists_the_endpoints_with_bearer_auth_and_the_error_shape(
        http: Client) -> None:
    response = http.get("/api/openapi.json")

    assert response.status_code == 200
    spec = response.json()
    assert set(spec["paths"]) >= {"/api/balance", "/api/redeem", "/api/ledger"}
    assert "get" in spec["paths"]["/api/balance"]
    assert "get" in spec["paths"]["/api/ledger"]
    redeem_op = spec["paths"]["/api/redeem"]["post"]
    assert {"200", "400", "401", "403"} <= set(redeem_op["responses"])
    assert redeem_op["security"]
    schemes = spec["components"]["securitySchemes"]
    assert {"type": "http", "scheme": "bearer"} in schemes.values()
    error = spec["components"]["schemas"]["ErrorOut"]
    assert set(error["properties"]) == {"message", "extra"}


def test_the_api_docs_page_renders_without_a_key(http: Client) -> None:
    response = http.get("/api/docs")
    assert response.status_code == 200
    assert "openapi.json" in response.content.decode()


# --- served by the real ASGI app -----------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_the_gateway_process_serves_the_api_next_to_v1(gateway: Any, tenant: Tenant,
                                                       api_key: CreatedKey) -> None:
    """portal.asgi routes /v1 to the gateway and /api/ to Django: one key works for both."""
    code = make_code("6")

    redeemed = httpx.post(gateway.url + "/api/redeem", json={"code": code},
                          headers=auth(api_key.secret), timeout=10)
    balance = httpx.get(gateway.url + "/api/balance", headers=auth(api_key.secret), timeout=10)
    refused = httpx.get(gateway.url + "/api/balance", timeout=10)

    assert redeemed.status_code == 200, redeemed.text
    assert balance.json() == {"tenant": "acme", "balance": "6.000000", "currency": "USD"}
    assert refused.status_code == 401
    assert refused.json()["extra"]["code"] == "missing_api_key"
