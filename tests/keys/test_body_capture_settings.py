"""Body capture settings (issue 15): a tenant's capture window, a key's inherit/on/off
override with a window of its own, what the gateway reads of them
(``KeySnapshot.capture_until``), and every surface that sets them: the CLI, the tenant API
(the tenant's window: owners only), the operations API, the portal's settings and key
pages, the admin."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from keys.models import ApiKey, Membership, Tenant
from keys.services import key_create, key_rotate, tenant_update
from keys.snapshots import KeySnapshot, build_key_snapshot
from keys.tokens import token_create
from tests.keys.test_cli import run
from tests.portal.ops_helpers import make_callers

pytestmark = pytest.mark.django_db


def run_json(*args: str) -> Any:
    return json.loads(run(*args, "--json"))


def capture_until(key: ApiKey) -> float:
    snap = build_key_snapshot(key.secret_hash)
    assert snap is not None
    return KeySnapshot.from_dict(snap).capture_until


def later(**delta: float) -> Any:
    return timezone.now() + timedelta(**delta)


def test_the_snapshot_resolves_the_key_against_its_tenant() -> None:
    tenant = Tenant.objects.create(name="acme")
    inherit = key_create(tenant=tenant, name="a").key
    own = later(hours=1)
    on = key_create(tenant=tenant, name="b", capture_bodies="on",
                    capture_bodies_until=own).key
    off = key_create(tenant=tenant, name="c", capture_bodies="off").key
    assert (capture_until(inherit), capture_until(on), capture_until(off)) == (
        0, own.timestamp(), 0)
    window = later(days=2)
    tenant_update(tenant=tenant, capture_bodies_until=window)
    assert (capture_until(inherit), capture_until(on), capture_until(off)) == (
        window.timestamp(), own.timestamp(), 0)
    # A snapshot cached before the field existed reads as off.
    old = {k: v for k, v in build_key_snapshot(inherit.secret_hash).items()  # type: ignore[union-attr]
           if k != "capture_until"}
    assert KeySnapshot.from_dict(old).capture_until == 0
    # A rotated key keeps its predecessor's setting.
    assert capture_until(key_rotate(key=on).key) == own.timestamp()


def test_the_model_refuses_an_on_without_a_window_and_a_window_too_long() -> None:
    tenant = Tenant.objects.create(name="acme")
    with pytest.raises(ValidationError, match="Give the time capture stops"):
        key_create(tenant=tenant, name="a", capture_bodies="on")
    with pytest.raises(ValidationError, match="at most 30 days"):
        key_create(tenant=tenant, name="a", capture_bodies="on",
                   capture_bodies_until=later(days=31))
    with pytest.raises(ValidationError, match="at most 30 days"):
        tenant_update(tenant=tenant, capture_bodies_until=later(days=31))
    assert not ApiKey.objects.exists()
    tenant.refresh_from_db()
    assert tenant.capture_bodies_until is None


def test_cli_switches_capture_on_for_a_while_and_off() -> None:
    made = run_json("tenant", "create", "--name", "acme", "--capture-bodies", "24h")
    tenant = Tenant.objects.get(pk=made["id"])
    assert tenant.capture_bodies_until is not None
    assert abs((tenant.capture_bodies_until - later(hours=24)).total_seconds()) < 60
    shown = run_json("tenant", "show", "acme")
    assert shown["capture_bodies_until"] == tenant.capture_bodies_until.isoformat()
    updated = run_json("tenant", "update", "acme", "--capture-bodies", "off")
    assert updated["changed"] == ["capture_bodies_until"]
    tenant.refresh_from_db()
    assert tenant.capture_bodies_until is None
    run("tenant", "update", "acme", "--capture-bodies",
        (timezone.localtime() + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M"))
    tenant.refresh_from_db()
    assert tenant.capture_bodies_until is not None

    data = run_json("key", "create", "--tenant", "acme", "--name", "k",
                    "--capture-bodies", "30m")
    key = ApiKey.objects.get(pk=data["id"])
    assert data["capture_bodies"] == key.capture_bodies == "on"
    assert key.capture_bodies_until is not None and data["capture_bodies_until"]
    run("key", "update", key.prefix, "--capture-bodies", "off")
    key.refresh_from_db()
    assert (key.capture_bodies, key.capture_bodies_until) == ("off", None)
    run("key", "update", key.prefix, "--capture-bodies", "inherit")
    key.refresh_from_db()
    assert (key.capture_bodies, key.capture_bodies_until) == ("inherit", None)


@pytest.mark.parametrize("args", [
    ("tenant", "update", "acme", "--capture-bodies", "inherit"),  # a key's word only
    ("tenant", "update", "acme", "--capture-bodies", "soon"),
    ("tenant", "update", "acme", "--capture-bodies", "31d"),
    ("tenant", "update", "acme", "--capture-bodies", "2020-01-01T00:00"),
    ("tenant", "update", "acme", "--capture-bodies", "0"),
    ("key", "update", "sk-tp-", "--capture-bodies", "maybe"),
])
def test_cli_refuses_bad_capture_settings(args: tuple[str, ...]) -> None:
    tenant = Tenant.objects.create(name="acme")
    key = key_create(tenant=tenant, name="k").key
    args = tuple(key.prefix if a == "sk-tp-" else a for a in args)
    with pytest.raises((CommandError, SystemExit)):
        run(*args)
    tenant.refresh_from_db()
    key.refresh_from_db()
    assert tenant.capture_bodies_until is None and key.capture_bodies == "inherit"


def _user(tenant: Tenant, email: str, role: str) -> Any:
    user = get_user_model().objects.create_user(username=email, email=email,
                                                password="pw-12345!")
    Membership.objects.create(tenant=tenant, user=user, role=role)
    return user


def _api(user: Any) -> tuple[Client, dict[str, str]]:
    return Client(), {"Authorization": "Bearer " + token_create(user=user, name="t",
                                                                scope="write").secret}


def test_tenant_api_owners_set_the_window_and_others_cannot() -> None:
    tenant = Tenant.objects.create(name="acme")
    client, owner = _api(_user(tenant, "o@acme.example", "owner"))
    assert client.get("/api/v1/tenant", headers=owner).json()["capture_bodies_until"] is None
    until = later(hours=6)
    changed = client.patch("/api/v1/tenant", {"capture_bodies_until": until.isoformat()},
                           content_type="application/json", headers=owner)
    assert changed.status_code == 200, changed.content
    tenant.refresh_from_db()
    assert tenant.capture_bodies_until == until
    # Left out: unchanged; null: off.
    client.patch("/api/v1/tenant", {"members_can_create_keys": True},
                 content_type="application/json", headers=owner)
    tenant.refresh_from_db()
    assert tenant.capture_bodies_until == until
    for bad in (later(days=40), later(hours=-1)):
        answer = client.patch("/api/v1/tenant", {"capture_bodies_until": bad.isoformat()},
                              content_type="application/json", headers=owner)
        assert answer.status_code == 422, answer.content
    for role in ("admin", "member"):
        other, headers = _api(_user(tenant, f"{role}@acme.example", role))
        answer = other.patch("/api/v1/tenant", {"capture_bodies_until": None},
                             content_type="application/json", headers=headers)
        assert answer.status_code == 403, (role, answer.content)
    tenant.refresh_from_db()
    assert tenant.capture_bodies_until == until
    off = client.patch("/api/v1/tenant", {"capture_bodies_until": None},
                       content_type="application/json", headers=owner).json()
    assert off["capture_bodies_until"] is None


def test_tenant_api_sets_a_key_s_capture() -> None:
    tenant = Tenant.objects.create(name="acme")
    client, owner = _api(_user(tenant, "o@acme.example", "owner"))
    until = later(hours=3)
    made = client.post("/api/v1/keys", {"name": "k", "capture_bodies": "on",
                                        "capture_bodies_until": until.isoformat()},
                       content_type="application/json", headers=owner)
    assert made.status_code == 201, made.content
    assert made.json()["capture_bodies"] == "on"
    key = ApiKey.objects.get(pk=made.json()["id"])
    assert key.capture_bodies_until == until
    # A change to something else keeps the window to the second.
    client.patch(f"/api/v1/keys/{key.pk}", {"name": "renamed"},
                 content_type="application/json", headers=owner)
    key.refresh_from_db()
    assert (key.name, key.capture_bodies_until) == ("renamed", until)
    refused = client.patch(f"/api/v1/keys/{key.pk}", {"capture_bodies": "on",
                                                      "capture_bodies_until": None},
                           content_type="application/json", headers=owner)
    assert refused.status_code == 422
    assert "capture_bodies_until" in refused.json()["error"]["details"]
    off = client.patch(f"/api/v1/keys/{key.pk}", {"capture_bodies": "off"},
                       content_type="application/json", headers=owner).json()
    assert (off["capture_bodies"], off["capture_bodies_until"]) == ("off", None)


def test_ops_api_sets_the_tenant_window_and_the_key_override() -> None:
    callers = make_callers()
    client = Client()

    def call(method: str, path: str, body: Any) -> Any:
        return getattr(client, method)("/api/ops/" + path, data=json.dumps(body),
                                       content_type="application/json",
                                       headers=callers.staff_write)

    until = later(hours=5)
    made = call("post", "tenants/", {"name": "acme", "capture_bodies_until": until.isoformat()})
    assert made.status_code == 201, made.content
    tenant = Tenant.objects.get(pk=made.json()["id"])
    assert tenant.capture_bodies_until == until
    assert call("patch", f"tenants/{tenant.pk}/", {
        "capture_bodies_until": later(days=60).isoformat()}).status_code == 400
    assert call("patch", f"tenants/{tenant.pk}/",
                {"capture_bodies_until": None}).status_code == 200
    tenant.refresh_from_db()
    assert tenant.capture_bodies_until is None

    key = call("post", "keys/", {"tenant": tenant.pk, "name": "k", "capture_bodies": "on",
                                 "capture_bodies_until": until.isoformat()})
    assert key.status_code == 201, key.content
    assert key.json()["capture_bodies"] == "on"
    assert call("post", "keys/", {"tenant": tenant.pk, "name": "k2",
                                  "capture_bodies": "on"}).status_code == 400
    off = call("patch", f"keys/{key.json()['id']}/", {"capture_bodies": "off"})
    assert off.status_code == 200 and off.json()["capture_bodies_until"] is None


def test_portal_settings_set_the_window_for_owners_only() -> None:
    tenant = Tenant.objects.create(name="acme")
    owner = Client()
    owner.force_login(_user(tenant, "o@acme.example", "owner"))
    page = owner.get(reverse("portal:settings"))
    assert b'name="capture_bodies_until"' in page.content
    until = (timezone.localtime() + timedelta(days=2)).replace(second=0, microsecond=0)
    saved = owner.post(reverse("portal:settings"), {
        "low_balance_threshold": "", "capture_bodies_until": until.strftime("%Y-%m-%dT%H:%M")})
    assert saved.status_code == 302
    tenant.refresh_from_db()
    assert tenant.capture_bodies_until == until
    # A post without the field keeps it; an empty one switches capture off.
    owner.post(reverse("portal:settings"), {"low_balance_threshold": ""})
    tenant.refresh_from_db()
    assert tenant.capture_bodies_until == until
    refused = owner.post(reverse("portal:settings"), {
        "capture_bodies_until": (timezone.localtime() - timedelta(hours=1)).strftime(
            "%Y-%m-%dT%H:%M")})
    assert refused.status_code == 200 and b"in the future" in refused.content
    owner.post(reverse("portal:settings"), {"capture_bodies_until": ""})
    tenant.refresh_from_db()
    assert tenant.capture_bodies_until is None
    member = Client()
    member.force_login(_user(tenant, "m@acme.example", "member"))
    assert member.post(reverse("portal:settings"), {
        "capture_bodies_until": until.strftime("%Y-%m-%dT%H:%M")}).status_code == 403
    tenant.refresh_from_db()
    assert tenant.capture_bodies_until is None


def test_portal_key_form_sets_the_key_s_capture() -> None:
    tenant = Tenant.objects.create(name="acme")
    client = Client()
    client.force_login(_user(tenant, "o@acme.example", "owner"))
    key = key_create(tenant=tenant, name="k").key
    page = client.get(reverse("portal:key_edit", args=[key.pk]))
    assert b'name="capture_bodies"' in page.content
    until = (timezone.localtime() + timedelta(hours=4)).replace(second=0, microsecond=0)
    form = {"name": "k", "group": "", "expiry": "never", "capture_bodies": "on",
            "capture_bodies_until": until.strftime("%Y-%m-%dT%H:%M")}
    saved = client.post(reverse("portal:key_edit", args=[key.pk]), form)
    assert saved.status_code == 302, saved.content[:2000]
    key.refresh_from_db()
    assert (key.capture_bodies, key.capture_bodies_until) == ("on", until)
    detail = client.get(reverse("portal:key_detail", args=[key.pk]))
    assert "On until a time" in detail.content.decode()
    missing = client.post(reverse("portal:key_edit", args=[key.pk]),
                          {**form, "capture_bodies_until": ""})
    assert missing.status_code == 200 and b"Pick the time capture stops" in missing.content
    client.post(reverse("portal:key_edit", args=[key.pk]), {**form, "capture_bodies": "off"})
    key.refresh_from_db()
    assert (key.capture_bodies, key.capture_bodies_until) == ("off", None)


def _tenant_form(admin_client: Client, tenant: Tenant, **fields: str) -> dict[str, Any]:
    """The admin's tenant form as a script posts it (its inline management forms included)."""
    page = admin_client.get(reverse("admin:keys_tenant_change", args=[tenant.pk]))
    data: dict[str, Any] = {"name": tenant.name, "status": "active", "group": "",
                            "top_up": "", "top_up_note": "", **fields}
    for formset in page.context["inline_admin_formsets"]:
        management = formset.formset.management_form
        for name, field in management.fields.items():
            data[f"{management.prefix}-{name}"] = management.initial.get(name, field.initial)
    return data


def test_admin_sets_the_tenant_window_and_keeps_it_when_left_out(admin_client: Client) -> None:
    tenant = Tenant.objects.create(name="acme")
    url = reverse("admin:keys_tenant_change", args=[tenant.pk])
    page = admin_client.get(url)
    assert b'name="capture_bodies_until_0"' in page.content
    until = (timezone.localtime() + timedelta(days=1)).replace(second=0, microsecond=0)
    saved = admin_client.post(url, _tenant_form(
        admin_client, tenant, capture_bodies_until_0=until.strftime("%Y-%m-%d"),
        capture_bodies_until_1=until.strftime("%H:%M:%S")))
    assert saved.status_code == 302, saved.content.decode()[:3000]
    tenant.refresh_from_db()
    assert tenant.capture_bodies_until == until
    # Left out of the post altogether (a script written before the field): kept.
    assert admin_client.post(url, _tenant_form(admin_client, tenant)).status_code == 302
    tenant.refresh_from_db()
    assert tenant.capture_bodies_until == until
    # Posted empty: off.
    assert admin_client.post(url, _tenant_form(
        admin_client, tenant, capture_bodies_until_0="",
        capture_bodies_until_1="")).status_code == 302
    tenant.refresh_from_db()
    assert tenant.capture_bodies_until is None
    key = key_create(tenant=tenant, name="k").key
    page = admin_client.get(reverse("admin:keys_apikey_change", args=[key.pk]))
    assert b'name="capture_bodies"' in page.content
    assert b'name="capture_bodies_until_0"' in page.content
