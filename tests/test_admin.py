"""The Django admin for our apps: every page renders, secrets stay write-only, actions work.

These run in-process with the test client (``admin_client`` is a logged-in superuser);
no gateway or upstream processes are needed.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from billing.models import LedgerEntry, ModelPrice, RedemptionCode, UsageLog, UsageRollup
from billing.redemption import redeem_create
from billing.services import tenant_topup
from gateway.models import Credential, ModelRule, OperatorAlert, Upstream
from gateway.services import credential_add, upstream_create
from keys.models import AccessToken, ApiKey, Group, Membership, Status, Tenant
from keys.secrets import KEY_PREFIX, hash_secret
from keys.services import key_create, tenant_get_or_create
from keys.tokens import token_create
from portal.audit.models import AuditEntry

OUR_APPS = ("keys", "gateway", "billing", "audit")
REGISTERED = sorted(
    (model for model in admin.site._registry if model._meta.app_label in OUR_APPS),
    key=lambda m: m._meta.label,
)
# No add page: read-only, or (tokens) made only where the secret can be shown once.
READ_ONLY = {UsageLog, LedgerEntry, UsageRollup, AuditEntry, AccessToken, OperatorAlert}
SECRET_RE = re.compile(re.escape(KEY_PREFIX) + r"[A-Za-z0-9]{43}")

UPSTREAM_PLAINTEXT = "sk-live-upstream-plaintext-9f3Q"
INLINE_PLAINTEXT = "sk-live-inline-plaintext-77Zx"


def _url(model: type, view: str, *args: Any) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def _db_secret_column(credential_id: int) -> str:
    """The raw column as stored, read past the ORM."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT secret_encrypted FROM {Credential._meta.db_table} WHERE id = %s",
            [credential_id],
        )
        return cursor.fetchone()[0]


@pytest.fixture
def rows(admin_user: Any) -> dict[type, Any]:
    """At least one row of every model our admin registers, built through the services."""
    group = Group.objects.create(name="pro", allowed_models=["gpt-5*"], rpm=60)
    tenant, _ = tenant_get_or_create(name="acme", group=group)
    member = get_user_model().objects.create_user("alice", "alice@example.com", "pw")
    membership = Membership.objects.create(tenant=tenant, user=member,
                                           role=Membership.Role.OWNER)
    made = key_create(tenant=tenant, name="ci key", models=["gpt-5", "o3"], rpm=10,
                      quota=Decimal("3.5"), created_by=admin_user)
    upstream = upstream_create(name="openai-main", kind="openai",
                               base_url="https://api.example.com/v1/",
                               models=[f"m{i}" for i in range(8)])
    credential = credential_add(upstream=upstream, secret=UPSTREAM_PLAINTEXT, name="primary")
    price = ModelPrice.objects.create(model="gpt-5*", input_per_million=Decimal("1.25"),
                                      output_per_million=Decimal("10"))
    ledger = tenant_topup(tenant=tenant, amount=Decimal("25"), note="welcome")
    rollup = UsageRollup.objects.create(date=timezone.localdate(), tenant=tenant, key=made.key,
                                        model="gpt-5", requests=2, errors=1, input_tokens=12,
                                        output_tokens=34, cost=Decimal("0.0012"))
    redeem_create(amount=Decimal("5"), count=1, batch="admin-test")
    code = RedemptionCode.objects.get(batch="admin-test")
    rule = ModelRule.objects.create(model_pattern="gpt-5.4", protocol="responses",
                                    force={"reasoning": {"effort": "xhigh"}}, drop=["top_p"])
    usage = UsageLog.objects.create(
        created_at=timezone.now(), request_id="req-ok-1", key=made.key,
        key_prefix=made.key.prefix, tenant=tenant, endpoint="chat", model="gpt-5",
        upstream=upstream, credential=credential, status_code=200, input_tokens=12,
        output_tokens=34, cost=Decimal("0.0012"), latency_ms=120, ttfb_ms=40,
        client_ip="127.0.0.1", user_agent="pytest",
    )
    UsageLog.objects.create(
        created_at=timezone.now(), request_id="req-limited-2", key=made.key,
        key_prefix=made.key.prefix, tenant=tenant, endpoint="chat", model="gpt-5",
        status_code=429, error_code="rate_limited",
    )
    token = token_create(user=member, name="script", tenant=tenant).token
    alert = OperatorAlert.objects.create(
        kind="upstream_down", subject=str(upstream.pk), firing=True, changed_at=timezone.now(),
        summary="Upstream openai-main auto-disabled by the health probe",
        admin_path=f"/admin/gateway/upstream/{upstream.pk}/change/")
    return {
        AccessToken: token, AuditEntry: AuditEntry.objects.filter(object_pk=str(made.key.pk),
                                                                  content_type__model="apikey")
        .get(),
        Group: group, Tenant: tenant, Membership: membership, ApiKey: made.key,
        Upstream: upstream, Credential: credential, ModelPrice: price, UsageLog: usage,
        ModelRule: rule, LedgerEntry: ledger, UsageRollup: rollup, RedemptionCode: code,
        OperatorAlert: alert, "secret": made.secret,
    }


def test_our_apps_register_every_expected_model() -> None:
    assert set(REGISTERED) >= {Group, Tenant, Membership, ApiKey, Upstream, Credential,
                               ModelPrice, UsageLog}


@pytest.mark.django_db
@pytest.mark.parametrize("model", REGISTERED, ids=lambda m: m._meta.label)
def test_every_admin_changelist_renders(model: type, rows: dict[type, Any],
                                        admin_client: Client) -> None:
    assert model in rows, f"the rows fixture makes no {model._meta.label}; add one"
    response = admin_client.get(_url(model, "changelist"))
    assert response.status_code == 200
    # The row is listed (its change/view link is on the page).
    assert _url(model, "change", rows[model].pk) in response.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize("model", REGISTERED, ids=lambda m: m._meta.label)
def test_every_admin_add_page_renders_unless_read_only(model: type, rows: dict[type, Any],
                                                       admin_client: Client) -> None:
    response = admin_client.get(_url(model, "add"))
    assert response.status_code == (403 if model in READ_ONLY else 200)


@pytest.mark.django_db
@pytest.mark.parametrize("model", REGISTERED, ids=lambda m: m._meta.label)
def test_every_object_change_page_renders(model: type, rows: dict[type, Any],
                                          admin_client: Client) -> None:
    response = admin_client.get(_url(model, "change", rows[model].pk))
    assert response.status_code == 200
    assert str(rows[model]) in response.content.decode()


@pytest.mark.django_db
def test_usage_log_is_read_only_in_admin(rows: dict[type, Any], admin_client: Client) -> None:
    usage = rows[UsageLog]
    assert admin_client.get(_url(UsageLog, "add")).status_code == 403
    assert admin_client.post(_url(UsageLog, "add"), {"request_id": "forged"}).status_code == 403
    view = admin_client.get(_url(UsageLog, "change", usage.pk))
    assert view.status_code == 200
    html = view.content.decode()
    assert 'name="_save"' not in html  # a view page, not a form
    assert "deletelink" not in html
    posted = admin_client.post(_url(UsageLog, "change", usage.pk), {"status_code": "500"})
    assert posted.status_code == 403
    assert admin_client.get(_url(UsageLog, "delete", usage.pk)).status_code == 403
    usage.refresh_from_db()
    assert usage.status_code == 200
    assert not UsageLog.objects.filter(request_id="forged").exists()


@pytest.mark.django_db
def test_api_key_changelist_search_by_tenant_name_finds_the_key(
        rows: dict[type, Any], admin_client: Client, make_key: Any) -> None:
    other_tenant, _ = tenant_get_or_create(name="globex")
    other = make_key(tenant=other_tenant, name="globex key").key
    acme_key = rows[ApiKey]

    found = admin_client.get(_url(ApiKey, "changelist"), {"q": "acme"})
    assert found.status_code == 200
    assert list(found.context["cl"].result_list) == [acme_key]

    found = admin_client.get(_url(ApiKey, "changelist"), {"q": "globex"})
    assert list(found.context["cl"].result_list) == [other]

    none = admin_client.get(_url(ApiKey, "changelist"), {"q": "no-such-tenant"})
    assert list(none.context["cl"].result_list) == []


@pytest.mark.django_db
def test_usage_log_changelist_filters_by_status_code(rows: dict[type, Any],
                                                     admin_client: Client) -> None:
    response = admin_client.get(_url(UsageLog, "changelist"), {"status_code": "429"})
    assert response.status_code == 200
    assert [r.request_id for r in response.context["cl"].result_list] == ["req-limited-2"]

    response = admin_client.get(_url(UsageLog, "changelist"), {"status_code": "200"})
    assert [r.request_id for r in response.context["cl"].result_list] == ["req-ok-1"]

    response = admin_client.get(_url(UsageLog, "changelist"))
    assert {r.request_id for r in response.context["cl"].result_list} == {
        "req-ok-1", "req-limited-2"}


@pytest.mark.django_db
def test_tenant_changelist_filters_by_status(rows: dict[type, Any],
                                             admin_client: Client) -> None:
    Tenant.objects.create(name="dormant", status=Status.DISABLED)
    response = admin_client.get(_url(Tenant, "changelist"), {"status__exact": "disabled"})
    assert response.status_code == 200
    assert [t.name for t in response.context["cl"].result_list] == ["dormant"]


def _api_key_form(tenant: Tenant, **overrides: Any) -> dict[str, Any]:
    data = {
        "tenant": tenant.pk, "name": "from admin", "status": "active",
        "expires_at_0": "", "expires_at_1": "", "group": "", "created_by": "",
        "allowed_models": "gpt-5\no3", "denied_models": "", "allowed_ips": "",
        "rpm": "30", "rpd": "", "tpm": "", "concurrency": "", "max_tokens": "", "quota": "",
    }
    data.update(overrides)
    return data


@pytest.mark.django_db
def test_creating_an_api_key_in_admin_shows_the_secret_once_and_stores_only_its_hash(
        tenant: Tenant, admin_client: Client, admin_user: Any) -> None:
    response = admin_client.post(_url(ApiKey, "add"), _api_key_form(tenant), follow=True)
    assert response.status_code == 200
    assert response.redirect_chain, "the add form did not redirect (form errors?)"

    key = ApiKey.objects.get(name="from admin")
    notes = [str(m) for m in response.context["messages"]]
    secrets_in_messages = [s for note in notes for s in SECRET_RE.findall(note)]
    assert len(secrets_in_messages) == 1
    secret = secrets_in_messages[0]
    html = response.content.decode()
    assert html.count(secret) == 1

    assert hash_secret(secret) == key.secret_hash
    assert key.prefix == secret[: len(KEY_PREFIX) + 4]
    assert key.last4 == secret[-4:]
    assert key.created_by == admin_user
    assert key.allowed_models == ["gpt-5", "o3"]
    assert key.rpm == 30
    # Nothing stored holds the secret itself.
    stored = [str(v) for v in ApiKey.objects.filter(pk=key.pk).values().get().values()]
    assert not any(secret in v for v in stored)

    change = admin_client.get(_url(ApiKey, "change", key.pk))
    assert change.status_code == 200
    change_html = change.content.decode()
    assert secret not in change_html
    assert secret[len(KEY_PREFIX) + 4:-4] not in change_html
    assert key.masked in change_html
    # The message was consumed: the next page does not repeat it.
    assert secret not in admin_client.get(_url(ApiKey, "changelist")).content.decode()


@pytest.mark.django_db
def test_editing_an_api_key_in_admin_keeps_its_secret(
        rows: dict[type, Any], admin_client: Client) -> None:
    key = rows[ApiKey]
    before = (key.secret_hash, key.prefix, key.last4)
    response = admin_client.post(
        _url(ApiKey, "change", key.pk),
        _api_key_form(key.tenant, name="renamed", rpm="5"), follow=True)
    assert response.status_code == 200
    assert not SECRET_RE.search(response.content.decode())
    key.refresh_from_db()
    assert key.name == "renamed" and key.rpm == 5
    assert (key.secret_hash, key.prefix, key.last4) == before
    assert hash_secret(rows["secret"]) == key.secret_hash


def _credential_form(upstream: Upstream, **overrides: Any) -> dict[str, Any]:
    data = {"upstream": upstream.pk, "name": "added in admin", "secret": UPSTREAM_PLAINTEXT,
            "status": "active", "disabled_reason": ""}
    data.update(overrides)
    return data


@pytest.mark.django_db
def test_adding_a_credential_in_admin_encrypts_its_secret(
        rows: dict[type, Any], admin_client: Client) -> None:
    upstream = rows[Upstream]
    plaintext = "sk-admin-form-secret-AbCd"
    response = admin_client.post(_url(Credential, "add"),
                                 _credential_form(upstream, secret=plaintext), follow=True)
    assert response.status_code == 200
    assert response.redirect_chain, "the add form did not redirect (form errors?)"
    credential = Credential.objects.get(name="added in admin")

    raw = _db_secret_column(credential.pk)
    assert raw and plaintext not in raw
    assert credential.get_secret() == plaintext
    assert credential.last4 == "AbCd"

    html = admin_client.get(_url(Credential, "change", credential.pk)).content.decode()
    assert plaintext not in html
    assert "…AbCd" in html
    assert plaintext not in admin_client.get(_url(Credential, "changelist")).content.decode()


@pytest.mark.django_db
def test_a_new_credential_without_a_secret_is_rejected(
        rows: dict[type, Any], admin_client: Client) -> None:
    response = admin_client.post(_url(Credential, "add"),
                                 _credential_form(rows[Upstream], secret=""))
    assert response.status_code == 200  # the form again, with an error
    assert "A new credential needs its secret." in response.content.decode()
    assert not Credential.objects.filter(name="added in admin").exists()


@pytest.mark.django_db
def test_saving_a_credential_with_a_blank_secret_keeps_the_old_one(
        rows: dict[type, Any], admin_client: Client) -> None:
    credential = rows[Credential]
    encrypted_before = credential.secret_encrypted
    response = admin_client.post(
        _url(Credential, "change", credential.pk),
        _credential_form(credential.upstream, name="renamed", secret="", status="disabled",
                         disabled_reason="rotating"),
        follow=True)
    assert response.status_code == 200
    assert response.redirect_chain, "the change form did not redirect (form errors?)"
    credential.refresh_from_db()
    assert credential.name == "renamed"
    assert credential.status == "disabled"
    assert credential.secret_encrypted == encrypted_before
    assert credential.get_secret() == UPSTREAM_PLAINTEXT
    assert credential.last4 == UPSTREAM_PLAINTEXT[-4:]


@pytest.mark.django_db
def test_saving_a_credential_with_a_new_secret_replaces_it(
        rows: dict[type, Any], admin_client: Client) -> None:
    credential = rows[Credential]
    response = admin_client.post(
        _url(Credential, "change", credential.pk),
        _credential_form(credential.upstream, name="primary", secret="sk-rotated-secret-WXYZ"),
        follow=True)
    assert response.redirect_chain, "the change form did not redirect (form errors?)"
    credential.refresh_from_db()
    assert credential.get_secret() == "sk-rotated-secret-WXYZ"
    assert credential.last4 == "WXYZ"
    assert "sk-rotated-secret-WXYZ" not in _db_secret_column(credential.pk)


def _upstream_form(upstream: Upstream | None, credentials: list[dict[str, Any]],
                   **overrides: Any) -> dict[str, Any]:
    initial = [c for c in credentials if c.get("id")]
    data: dict[str, Any] = {
        "name": upstream.name if upstream else "via-inline",
        "kind": upstream.kind if upstream else "openai",
        "base_url": upstream.base_url if upstream else "https://inline.example.com/v1",
        "served_models": "\n".join(upstream.served_models) if upstream else "gpt-5",
        "priority": "0", "weight": "1", "status": "active",
        "credentials-TOTAL_FORMS": str(len(credentials)),
        "credentials-INITIAL_FORMS": str(len(initial)),
        "credentials-MIN_NUM_FORMS": "0", "credentials-MAX_NUM_FORMS": "1000",
    }
    for index, cred in enumerate(credentials):
        for field in ("id", "name", "secret", "status", "disabled_reason"):
            data[f"credentials-{index}-{field}"] = cred.get(field, "")
        data[f"credentials-{index}-upstream"] = upstream.pk if upstream and cred.get("id") else ""
    data.update(overrides)
    return data


@pytest.mark.django_db
def test_adding_a_credential_through_the_upstream_inline_encrypts_it(
        rows: dict[type, Any], admin_client: Client) -> None:
    upstream = rows[Upstream]
    existing = rows[Credential]
    data = _upstream_form(upstream, [
        {"id": existing.pk, "name": existing.name, "secret": "", "status": "active"},
        {"name": "inline", "secret": INLINE_PLAINTEXT, "status": "active"},
    ])
    response = admin_client.post(_url(Upstream, "change", upstream.pk), data, follow=True)
    assert response.status_code == 200
    assert response.redirect_chain, "the change form did not redirect (form errors?)"

    added = Credential.objects.get(upstream=upstream, name="inline")
    assert INLINE_PLAINTEXT not in _db_secret_column(added.pk)
    assert added.get_secret() == INLINE_PLAINTEXT
    # The existing credential's blank secret kept its old one.
    existing.refresh_from_db()
    assert existing.get_secret() == UPSTREAM_PLAINTEXT

    html = admin_client.get(_url(Upstream, "change", upstream.pk)).content.decode()
    assert INLINE_PLAINTEXT not in html
    assert UPSTREAM_PLAINTEXT not in html
    assert f"…{INLINE_PLAINTEXT[-4:]}" in html
    assert f"…{UPSTREAM_PLAINTEXT[-4:]}" in html


@pytest.mark.django_db
def test_creating_an_upstream_with_an_inline_credential_encrypts_it(
        admin_client: Client) -> None:
    data = _upstream_form(None, [{"name": "first", "secret": INLINE_PLAINTEXT,
                                  "status": "active"}])
    response = admin_client.post(_url(Upstream, "add"), data, follow=True)
    assert response.redirect_chain, "the add form did not redirect (form errors?)"
    upstream = Upstream.objects.get(name="via-inline")
    credential = upstream.credentials.get()
    assert credential.get_secret() == INLINE_PLAINTEXT
    assert INLINE_PLAINTEXT not in _db_secret_column(credential.pk)
    assert INLINE_PLAINTEXT not in admin_client.get(
        _url(Upstream, "change", upstream.pk)).content.decode()


def _run_action(client: Client, model: type, action: str, pks: list[int]) -> Any:
    return client.post(_url(model, "changelist"),
                       {"action": action, "_selected_action": [str(pk) for pk in pks]},
                       follow=True)


@pytest.mark.django_db
def test_the_disable_action_disables_api_keys_and_enable_restores_them(
        rows: dict[type, Any], admin_client: Client, make_key: Any) -> None:
    key = rows[ApiKey]
    bystander = make_key(name="untouched").key
    response = _run_action(admin_client, ApiKey, "disable", [key.pk])
    assert response.status_code == 200
    key.refresh_from_db()
    bystander.refresh_from_db()
    assert key.status == Status.DISABLED
    assert bystander.status == Status.ACTIVE

    _run_action(admin_client, ApiKey, "enable", [key.pk])
    key.refresh_from_db()
    assert key.status == Status.ACTIVE


@pytest.mark.django_db
def test_the_disable_action_disables_tenants_and_enable_restores_them(
        rows: dict[type, Any], admin_client: Client) -> None:
    tenant = rows[Tenant]
    bystander, _ = tenant_get_or_create(name="bystander")
    response = _run_action(admin_client, Tenant, "disable", [tenant.pk])
    assert response.status_code == 200
    tenant.refresh_from_db()
    bystander.refresh_from_db()
    assert tenant.status == Status.DISABLED
    assert bystander.status == Status.ACTIVE

    _run_action(admin_client, Tenant, "enable", [tenant.pk])
    tenant.refresh_from_db()
    assert tenant.status == Status.ACTIVE
