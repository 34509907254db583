"""What the operations API does: secrets shown once or never, writes through the services
(so the gateway sees them at once, as after an admin change), top-ups through the ledger
(the limiter's balance in Redis moves too), and the "test now" probe. The gateway tests
run a real gateway process and call it with the openai SDK."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import openai
import pytest
from django.test import Client

from billing.models import LedgerEntry, ModelPrice, RedemptionCode
from billing.redemption import code_hash, redeem
from billing.services import ledger_mismatches
from gateway.models import Credential, Upstream
from keys import limits
from keys.models import AccessToken, ApiKey, Membership, Status, Tenant
from keys.money import from_micro
from keys.secrets import hash_secret
from tests.conftest import UPSTREAM_SECRET
from tests.portal.ops_helpers import UPSTREAM_PLAINTEXT, Callers, make_callers, make_rows

CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture
def callers(db: Any) -> Callers:
    return make_callers()


@pytest.fixture
def ops(callers: Callers) -> Any:
    """Call the API with the staff read-write token; JSON in, (status, JSON) out."""
    client = Client()

    def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        if method == "get":
            response = client.get("/api/ops/" + path, headers=callers.staff_write)
        else:
            response = getattr(client, method)(
                "/api/ops/" + path, data=json.dumps(body or {}),
                content_type="application/json", headers=callers.staff_write)
        return response.status_code, (response.json() if response.content else None)

    return call


# --- secrets --------------------------------------------------------------------------------

@pytest.mark.django_db
def test_a_new_key_s_secret_is_returned_once_and_never_again(ops: Any, callers: Callers,
                                                               tenant: Tenant) -> None:
    code, made = ops("post", "keys/", {"tenant": tenant.pk, "name": "ci",
                                       "allowed_models": ["gpt-5*"], "rpm": 60,
                                       "quota": "5.5", "allowed_ips": ["10.0.0.0/8"]})
    assert code == 201, made
    key = ApiKey.objects.get(pk=made["id"])
    assert key.secret_hash == hash_secret(made["secret"])
    assert key.created_by == callers.staff_user
    assert (key.allowed_models, key.rpm, key.quota) == (["gpt-5*"], 60, Decimal("5.5"))
    assert made["masked"] == key.masked
    for path in ("keys/", f"keys/{key.pk}/"):
        code, body = ops("get", path)
        assert code == 200 and made["secret"] not in json.dumps(body)
        assert "secret" not in json.dumps(body)

    code, rotated = ops("post", f"keys/{key.pk}/rotate/", {"grace_seconds": 0})
    assert code == 201 and rotated["secret"] != made["secret"]
    assert ApiKey.objects.get(secret_hash=hash_secret(rotated["secret"])).rotated_from == key
    key.refresh_from_db()
    assert key.is_expired


@pytest.mark.django_db
def test_bad_key_input_is_a_400_naming_the_field(ops: Any, tenant: Tenant) -> None:
    code, body = ops("post", "keys/", {"tenant": tenant.pk, "name": "x",
                                       "allowed_ips": ["not-an-ip"]})
    assert code == 400 and "allowed_ips" in body
    code, body = ops("post", "keys/", {"tenant": tenant.pk, "name": "  "})
    assert code == 400
    code, body = ops("post", "keys/", {"tenant": 10**9, "name": "x"})
    assert code == 400 and "tenant" in body
    assert not ApiKey.objects.exists()


@pytest.mark.django_db
def test_a_credential_s_secret_is_write_only(ops: Any, callers: Callers) -> None:
    rows = make_rows(callers.member_user)
    upstream = rows["upstreams"]
    code, made = ops("post", "credentials/", {"upstream": upstream.pk, "name": "second",
                                              "secret": "sk-brand-new-secret-XyZ9"})
    assert code == 201, made
    stored = Credential.objects.get(pk=made["id"])
    assert stored.get_secret() == "sk-brand-new-secret-XyZ9"
    assert "sk-brand-new-secret-XyZ9" not in stored.secret_encrypted
    assert made["last4"] == "XyZ9" and "secret" not in made

    code, body = ops("patch", f"credentials/{stored.pk}/", {"secret": "sk-rotated-0000-AbC1"})
    assert code == 200 and "sk-rotated" not in json.dumps(body)
    stored.refresh_from_db()
    assert stored.get_secret() == "sk-rotated-0000-AbC1"
    code, body = ops("patch", f"credentials/{stored.pk}/", {"name": "renamed"})
    stored.refresh_from_db()
    assert stored.get_secret() == "sk-rotated-0000-AbC1", "a blank secret keeps the old one"

    code, body = ops("post", "upstreams/", {
        "name": "other", "kind": "openai", "base_url": "https://api.example.com/v1",
        "served_models": ["gpt-5"], "api_keys": ["sk-created-with-upstream-Q1w2"]})
    assert code == 201, body
    assert Upstream.objects.get(name="other").credentials.get().get_secret() == \
        "sk-created-with-upstream-Q1w2"

    everything = json.dumps([ops("get", path)[1] for path in (
        "credentials/", f"credentials/{stored.pk}/", "upstreams/", "upstream-health/")])
    for plaintext in (UPSTREAM_PLAINTEXT, "sk-rotated-0000-AbC1",
                      "sk-created-with-upstream-Q1w2"):
        assert plaintext not in everything
    assert "secret_encrypted" not in everything

    code, body = ops("post", "credentials/", {"upstream": upstream.pk, "name": "none"})
    assert code == 400 and "secret" in body


@pytest.mark.django_db
def test_redemption_codes_are_returned_once_at_creation(ops: Any, tenant: Tenant) -> None:
    code, made = ops("post", "redemption-batches/", {"amount": "2.5", "count": 3,
                                                     "batch": "promo"})
    assert code == 201, made
    assert len(made["codes"]) == 3 and made["batch"] == "promo"
    stored = set(RedemptionCode.objects.filter(batch="promo").values_list("code_hash",
                                                                         flat=True))
    assert stored == {code_hash(c) for c in made["codes"]}
    listed = json.dumps([ops("get", p)[1] for p in ("redemption-codes/",
                                                    "redemption-batches/")])
    assert not any(c in listed for c in made["codes"])

    redeem(code=made["codes"][0], tenant=tenant)
    code, batches = ops("get", "redemption-batches/?batch=promo")
    assert batches["results"] == [{**batches["results"][0], "batch": "promo", "codes": 3,
                                   "active": 2, "redeemed": 1, "expired": 0}]
    code, active = ops("get", "redemption-codes/?state=active&batch=promo")
    assert active["count"] == 2
    code, body = ops("post", "redemption-batches/", {"amount": "1", "count": 0})
    assert code == 400 and "count" in body


# --- money ----------------------------------------------------------------------------------

@pytest.mark.django_db
def test_topup_posts_a_ledger_entry_and_moves_the_balance(ops: Any, callers: Callers,
                                                          tenant: Tenant) -> None:
    code, body = ops("post", "ledger/topup/", {"tenant": tenant.pk, "amount": "12.5",
                                               "note": "invoice 42"})
    assert code == 201, body
    tenant.refresh_from_db()
    assert tenant.balance == Decimal("12.5") and Decimal(body["balance"]) == tenant.balance
    entry = LedgerEntry.objects.get(pk=body["entry"]["id"])
    assert (entry.kind, entry.amount, entry.note, entry.created_by) == (
        "topup", Decimal("12.5"), "invoice 42", callers.staff_user)
    code, body = ops("post", "ledger/topup/", {"tenant": tenant.pk, "amount": "-2.5"})
    assert code == 201 and body["entry"]["kind"] == "adjustment"
    tenant.refresh_from_db()
    assert tenant.balance == Decimal("10")
    assert ledger_mismatches() == []
    code, listed = ops("get", f"ledger/?tenant={tenant.pk}&ordering=amount")
    assert [e["amount"] for e in listed["results"]] == ["-2.500000", "12.500000"]
    for bad in ({"tenant": tenant.pk, "amount": "0"}, {"tenant": tenant.pk, "amount": "x"},
                {"tenant": tenant.pk, "amount": "1.0000001"},
                {"tenant": tenant.pk, "amount": "1e12"}, {"amount": "1"}):
        code, body = ops("post", "ledger/topup/", bad)
        assert code == 400, bad
    code, money = ops("get", f"tenants/{tenant.pk}/balance/")
    assert money["balance"] == money["ledger_total"] == "10.000000"


@pytest.mark.django_db
def test_a_tenant_created_with_an_opening_balance_has_it_in_the_ledger(ops: Any) -> None:
    code, body = ops("post", "tenants/", {"name": "newco", "opening_balance": "7"})
    assert code == 201, body
    assert body["balance"] == "7.000000"
    tenant = Tenant.objects.get(name="newco")
    assert list(tenant.ledger.values_list("kind", "amount")) == [("topup", Decimal("7"))]
    code, body = ops("post", "tenants/", {"name": "newco"})
    assert code == 400 and "name" in body
    code, body = ops("patch", f"tenants/{tenant.pk}/", {"opening_balance": "1"})
    assert code == 400


# --- members ---------------------------------------------------------------------------------

@pytest.mark.django_db
def test_members_follow_the_portal_s_rules(ops: Any, callers: Callers, tenant: Tenant) -> None:
    code, body = ops("post", "members/", {"tenant": tenant.pk,
                                          "user": callers.member_user.pk, "role": "owner"})
    assert code == 201, body
    assert body["email"] == "member@example.com"
    membership = Membership.objects.get(pk=body["id"])
    code, body = ops("patch", f"members/{membership.pk}/", {"role": "admin"})
    assert code == 400 and "last owner" in body["detail"]
    code, body = ops("delete", f"members/{membership.pk}/")
    assert code == 400 and "last owner" in body["detail"]
    code, body = ops("post", "members/", {"tenant": tenant.pk,
                                          "user": callers.staff_user.pk, "role": "owner"})
    assert code == 201
    code, body = ops("post", "members/", {"tenant": tenant.pk,
                                          "user": callers.member_user.pk, "role": "member"})
    assert code == 200 and body["role"] == "member"
    code, _ = ops("delete", f"members/{membership.pk}/")
    assert code == 204 and not Membership.objects.filter(pk=membership.pk).exists()


# --- tokens, filters, pagination ------------------------------------------------------------

@pytest.mark.django_db
def test_staff_list_and_revoke_personal_access_tokens(ops: Any, callers: Callers) -> None:
    target = AccessToken.objects.get(user=callers.member_user)
    code, body = ops("get", f"tokens/?user={callers.member_user.pk}")
    assert [t["id"] for t in body["results"]] == [target.pk]
    code, body = ops("post", f"tokens/{target.pk}/revoke/")
    assert code == 200 and body["revoked_at"]
    assert Client().get("/api/ops/tenants/", headers=callers.member_pat).status_code == 401


@pytest.mark.django_db
def test_lists_filter_order_and_paginate(ops: Any, tenant: Tenant) -> None:
    for name in ("bravo", "alpha", "charlie"):
        ops("post", "keys/", {"tenant": tenant.pk, "name": name})
    ops("post", "tenants/", {"name": "other"})
    code, body = ops("get", f"keys/?tenant={tenant.pk}&ordering=name&page_size=2")
    assert body["count"] == 3 and [k["name"] for k in body["results"]] == ["alpha", "bravo"]
    assert body["next"]
    code, body = ops("get", "keys/?search=charl")
    assert [k["name"] for k in body["results"]] == ["charlie"]
    code, body = ops("get", "keys/?tenant=999999")
    assert code == 200 and body["results"] == []
    code, body = ops("get", "keys/?created_at__gte=2000-01-01T00:00:00%2B20:00")
    assert code == 200 and body["count"] == 3
    code, body = ops("get", "keys/?status=bogus")
    assert code == 400 and "status" in body
    code, body = ops("get", "usage/?page_size=1")
    assert code == 200 and "next" in body and "count" not in body


# --- the gateway sees each change at once -----------------------------------------------------

def _models(gateway: Any, secret: str) -> Any:
    sdk = openai.OpenAI(base_url=gateway.base_url, api_key=secret, max_retries=0)
    return sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT)


def _refused(gateway: Any, secret: str, error: type[Exception], code: str) -> None:
    with pytest.raises(error) as info:
        _models(gateway, secret)
    assert info.value.code == code  # type: ignore[attr-defined]


@pytest.mark.django_db(transaction=True)
@pytest.mark.e2e
def test_key_tenant_and_group_changes_reach_the_gateway(
        gateway: Any, upstream: Any, ops: Any, tenant: Tenant) -> None:
    code, group = ops("post", "groups/", {"name": "narrow", "allowed_models": ["gpt-5"]})
    assert code == 201
    code, made = ops("post", "keys/", {"tenant": tenant.pk, "name": "live",
                                       "group": group["id"]})
    _refused(gateway, made["secret"], openai.PermissionDeniedError, "model_not_allowed")
    assert ops("patch", f"groups/{group['id']}/", {"allowed_models": []})[0] == 200
    assert _models(gateway, made["secret"]).choices[0].message.content

    assert ops("post", f"keys/{made['id']}/disable/")[0] == 200
    _refused(gateway, made["secret"], openai.PermissionDeniedError, "api_key_disabled")
    assert ops("post", f"keys/{made['id']}/enable/")[0] == 200
    _models(gateway, made["secret"])

    assert ops("patch", f"tenants/{tenant.pk}/", {"status": "disabled"})[0] == 200
    _refused(gateway, made["secret"], openai.PermissionDeniedError, "tenant_disabled")
    assert ops("post", f"tenants/{tenant.pk}/enable/")[0] == 200
    _models(gateway, made["secret"])

    assert ops("delete", f"keys/{made['id']}/")[0] == 204
    with pytest.raises(openai.AuthenticationError):
        _models(gateway, made["secret"])


@pytest.mark.django_db(transaction=True)
@pytest.mark.e2e
def test_a_topup_reaches_the_limiter_s_balance(gateway: Any, upstream: Any, ops: Any,
                                              tenant: Tenant) -> None:
    ModelPrice.objects.create(model="gpt-4o-mini", per_request=Decimal("1"))
    code, made = ops("post", "keys/", {"tenant": tenant.pk, "name": "paid"})
    # Refused, and the tenant's account (0) is now loaded in the limiter.
    _refused(gateway, made["secret"], openai.RateLimitError, "quota_exceeded")

    code, body = ops("post", "ledger/topup/", {"tenant": tenant.pk, "amount": "3"})
    assert code == 201
    available = limits.limiter().available("tenant", tenant.pk)
    assert available is not None and from_micro(available) == Decimal("3")
    for _ in range(3):
        _models(gateway, made["secret"])
    _refused(gateway, made["secret"], openai.RateLimitError, "quota_exceeded")


@pytest.mark.django_db(transaction=True)
@pytest.mark.e2e
def test_test_now_probes_the_upstream_and_records_its_health(
        fake_upstream: Any, upstream: Upstream, ops: Any) -> None:
    code, body = ops("post", f"upstreams/{upstream.pk}/test/")
    assert code == 200, body
    assert body["ok"] is True and body["error"] == ""
    assert body["upstream"]["health"] == "healthy"
    upstream.refresh_from_db()
    assert upstream.health == "healthy" and upstream.health_checked_at is not None
    probes = [r for r in fake_upstream.requests() if r.get("path", "").endswith("/models")]
    assert probes and UPSTREAM_SECRET in json.dumps(probes[-1])

    credential = upstream.credentials.get()
    assert ops("patch", f"credentials/{credential.pk}/", {"secret": "sk-wrong-0000"})[0] == 200
    code, body = ops("post", f"upstreams/{upstream.pk}/test/")
    assert body["ok"] is False and "401" in body["error"]
    code, health = ops("get", "upstream-health/?health=unhealthy")
    assert [u["name"] for u in health["results"]] == [upstream.name]
    assert health["results"][0]["health_failures"] == 1


@pytest.mark.django_db
def test_an_upstream_disabled_by_the_api_is_out_until_enabled(ops: Any, callers: Callers
                                                              ) -> None:
    upstream = make_rows(callers.member_user)["upstreams"]
    Upstream.objects.filter(pk=upstream.pk).update(auto_disabled=True, health_failures=5)
    assert ops("post", f"upstreams/{upstream.pk}/disable/")[1]["status"] == Status.DISABLED
    code, body = ops("post", f"upstreams/{upstream.pk}/enable/")
    assert body["status"] == "active" and body["auto_disabled"] is False
    code, body = ops("patch", f"upstreams/{upstream.pk}/", {"api_keys": ["x"]})
    assert code == 400 and "api_keys" in body


# --- schema and docs ------------------------------------------------------------------------

@pytest.mark.django_db
def test_schema_and_docs_are_served_without_a_cdn(callers: Callers) -> None:
    client = Client()
    schema = client.get("/api/ops/schema/?format=json", headers=callers.staff_write)
    assert schema.status_code == 200
    document = schema.json()
    assert document["openapi"].startswith("3.") and "/api/ops/keys/" in document["paths"]
    client.force_login(callers.staff_user)
    for path in ("/api/ops/docs/", "/api/ops/redoc/"):
        page = client.get(path).content.decode()
        assert "https://" not in page and "//cdn" not in page and "googleapis" not in page
        assert "/static/drf_spectacular_sidecar/" in page
    script = client.get("/api/ops/docs/?script")
    assert script.status_code == 200 and b"SwaggerUIBundle" in script.content
    for asset in ("swagger-ui-dist/swagger-ui-bundle.js", "redoc/bundles/redoc.standalone.js"):
        response = client.get(f"/static/drf_spectacular_sidecar/{asset}")
        assert response.status_code == 200
