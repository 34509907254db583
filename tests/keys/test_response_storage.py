"""Response storage settings (issue 14): a tenant's on/off and retention, a key's
inherit/on/off override, and what the gateway reads of them (``KeySnapshot.store_days``),
through every surface that sets them: the CLI, the tenant API, the operations API, the
portal's settings and key pages."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse

from keys.models import ApiKey, Membership, Tenant
from keys.services import key_create, tenant_update
from keys.snapshots import KeySnapshot, build_key_snapshot, key_snapshots
from keys.tokens import token_create
from portal.infra import rediskeys
from portal.infra.redis import sync_redis
from tests.keys.test_cli import run

pytestmark = pytest.mark.django_db


def run_json(*args: str) -> Any:
    return json.loads(run(*args, "--json"))


def store_days(key: ApiKey) -> int:
    snap = build_key_snapshot(key.secret_hash)
    assert snap is not None
    return KeySnapshot.from_dict(snap).store_days


def test_store_days_follow_the_tenant_unless_the_key_says_otherwise() -> None:
    tenant = Tenant.objects.create(name="acme")
    inherit = key_create(tenant=tenant, name="a").key
    on = key_create(tenant=tenant, name="b", response_storage="on").key
    off = key_create(tenant=tenant, name="c", response_storage="off").key
    assert (store_days(inherit), store_days(on), store_days(off)) == (30, 30, 0)
    tenant_update(tenant=tenant, response_storage="off", response_retention_days=7)
    assert (store_days(inherit), store_days(on), store_days(off)) == (0, 7, 0)
    # A snapshot cached before the field existed reads as the model's default.
    old = {k: v for k, v in build_key_snapshot(inherit.secret_hash).items()  # type: ignore[union-attr]
           if k != "store_days"}
    assert KeySnapshot.from_dict(old).store_days == 30


@pytest.mark.django_db(transaction=True)
def test_a_tenant_change_evicts_its_keys_snapshots() -> None:
    tenant = Tenant.objects.create(name="acme")
    key = key_create(tenant=tenant, name="a").key
    client = sync_redis()
    assert client is not None
    cached = rediskeys.snapshot("key", key.secret_hash)
    client.set(cached, b"{}")
    tenant_update(tenant=tenant, response_retention_days=5)
    assert client.get(cached) is None
    key_snapshots.invalidate([key.secret_hash])


def test_cli_tenant_create_update_and_key_flags() -> None:
    made = run_json("tenant", "create", "--name", "zdr", "--response-storage", "off",
                    "--response-retention-days", "7")
    tenant = Tenant.objects.get(name="zdr")
    assert (tenant.response_storage, tenant.response_retention_days) == ("off", 7)
    assert made["id"] == tenant.pk
    shown = run_json("tenant", "show", "zdr")
    assert (shown["response_storage"], shown["response_retention_days"]) == ("off", 7)
    updated = run_json("tenant", "update", "zdr", "--response-storage", "on")
    assert updated["changed"] == ["response_storage"]
    assert updated["response_storage"] == "on"
    assert run("tenant", "update", "zdr", "--response-retention-days", "90").strip() == \
        "Tenant zdr: changed response_retention_days."
    tenant.refresh_from_db()
    assert (tenant.response_storage, tenant.response_retention_days) == ("on", 90)
    assert run_json("tenant", "create", "--name", "plain")["id"]
    plain = Tenant.objects.get(name="plain")
    assert (plain.response_storage, plain.response_retention_days) == ("on", 30)

    data = json.loads(run("key", "create", "--tenant", "zdr", "--name", "k",
                          "--response-storage", "off", "--json"))
    key = ApiKey.objects.get(pk=data["id"])
    assert data["response_storage"] == key.response_storage == "off"
    run("key", "update", key.prefix, "--response-storage", "inherit")
    key.refresh_from_db()
    assert key.response_storage == "inherit"


@pytest.mark.parametrize("args", [
    ("tenant", "update", "zdr"),
    ("tenant", "update", "zdr", "--response-retention-days", "0"),
    ("tenant", "update", "zdr", "--response-retention-days", "3651"),
    ("tenant", "update", "zdr", "--response-storage", "maybe"),
    ("tenant", "create", "--name", "x", "--response-retention-days", "soon"),
])
def test_cli_refuses_bad_storage_settings(args: tuple[str, ...]) -> None:
    Tenant.objects.create(name="zdr")
    with pytest.raises((CommandError, SystemExit)):
        run(*args)
    tenant = Tenant.objects.get(name="zdr")
    assert (tenant.response_storage, tenant.response_retention_days) == ("on", 30)
    assert not Tenant.objects.filter(name="x").exists()


def _owner(tenant: Tenant) -> Any:
    user = get_user_model().objects.create_user(username="o@acme.example",
                                                email="o@acme.example", password="pw-12345!")
    Membership.objects.create(tenant=tenant, user=user, role="owner")
    return user


def test_tenant_api_reads_and_changes_the_storage_settings() -> None:
    tenant = Tenant.objects.create(name="acme")
    owner = _owner(tenant)
    headers = {"Authorization": "Bearer " + token_create(user=owner, name="t",
                                                          scope="write").secret}
    client = Client()
    got = client.get("/api/v1/tenant", headers=headers).json()
    assert (got["response_storage"], got["response_retention_days"]) == ("on", 30)
    changed = client.patch("/api/v1/tenant", {"response_storage": "off",
                                              "response_retention_days": 3},
                           content_type="application/json", headers=headers).json()
    assert (changed["response_storage"], changed["response_retention_days"]) == ("off", 3)
    for bad in ({"response_retention_days": 0}, {"response_storage": "maybe"}):
        answer = client.patch("/api/v1/tenant", bad, content_type="application/json",
                              headers=headers)
        assert answer.status_code == 422, answer.content
    tenant.refresh_from_db()
    assert (tenant.response_storage, tenant.response_retention_days) == ("off", 3)
    # Keys: created with an override, changed, shown.
    made = client.post("/api/v1/keys", {"name": "k", "response_storage": "on"},
                       content_type="application/json", headers=headers)
    assert made.status_code == 201, made.content
    assert made.json()["response_storage"] == "on"
    key_id = made.json()["id"]
    patched = client.patch(f"/api/v1/keys/{key_id}", {"response_storage": "off"},
                           content_type="application/json", headers=headers).json()
    assert patched["response_storage"] == "off"
    assert ApiKey.objects.get(pk=key_id).response_storage == "off"


def test_portal_settings_page_sets_storage_for_owners() -> None:
    tenant = Tenant.objects.create(name="acme")
    client = Client()
    client.force_login(_owner(tenant))
    page = client.get(reverse("portal:settings"))
    assert page.status_code == 200
    assert b'name="response_storage"' in page.content
    assert b'name="response_retention_days"' in page.content
    saved = client.post(reverse("portal:settings"), {
        "low_balance_threshold": "", "response_storage": "off",
        "response_retention_days": "14"})
    assert saved.status_code == 302
    tenant.refresh_from_db()
    assert (tenant.response_storage, tenant.response_retention_days) == ("off", 14)
    refused = client.post(reverse("portal:settings"), {
        "response_storage": "on", "response_retention_days": "0"})
    assert refused.status_code == 200  # the form again, with its error
    tenant.refresh_from_db()
    assert tenant.response_retention_days == 14


def test_portal_key_form_sets_the_key_override() -> None:
    tenant = Tenant.objects.create(name="acme")
    client = Client()
    client.force_login(_owner(tenant))
    key = key_create(tenant=tenant, name="k").key
    page = client.get(reverse("portal:key_edit", args=[key.pk]))
    assert page.status_code == 200 and b'name="response_storage"' in page.content
    saved = client.post(reverse("portal:key_edit", args=[key.pk]), {
        "name": "k", "group": "", "expiry": "never", "response_storage": "off"})
    assert saved.status_code == 302, saved.content[:2000]
    key.refresh_from_db()
    assert key.response_storage == "off"
    detail = client.get(reverse("portal:key_detail", args=[key.pk]))
    assert "Off (zero data retention)" in detail.content.decode()


def _tenant_form(admin_client: Client, tenant: Tenant, **fields: str) -> dict[str, Any]:
    page = admin_client.get(reverse("admin:keys_tenant_change", args=[tenant.pk]))
    assert b'name="response_storage"' in page.content
    data: dict[str, Any] = {"name": tenant.name, "status": "active", "group": "",
                            "top_up": "", "top_up_note": "", **fields}
    for formset in page.context["inline_admin_formsets"]:
        management = formset.formset.management_form
        for name, field in management.fields.items():
            data[f"{management.prefix}-{name}"] = management.initial.get(name, field.initial)
    return data


def test_admin_sets_the_tenant_storage_and_keeps_it_when_left_out(admin_client: Client) -> None:
    tenant = Tenant.objects.create(name="acme")
    url = reverse("admin:keys_tenant_change", args=[tenant.pk])
    saved = admin_client.post(url, _tenant_form(admin_client, tenant, response_storage="off",
                                                response_retention_days="9"))
    assert saved.status_code == 302, saved.content.decode()[:2000]
    tenant.refresh_from_db()
    assert (tenant.response_storage, tenant.response_retention_days) == ("off", 9)
    # A form without them (a script written before they existed) keeps them as they are.
    kept = admin_client.post(url, _tenant_form(admin_client, tenant))
    assert kept.status_code == 302
    tenant.refresh_from_db()
    assert (tenant.response_storage, tenant.response_retention_days) == ("off", 9)
    bad = admin_client.post(url, _tenant_form(admin_client, tenant,
                                              response_retention_days="0"))
    assert bad.status_code == 200  # the form again, with the error
    key = key_create(tenant=tenant, name="k").key
    page = admin_client.get(reverse("admin:keys_apikey_change", args=[key.pk]))
    assert b'name="response_storage"' in page.content
