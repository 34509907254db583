"""Masking of every secret, and a tenant's entries as its owners see them: the portal's
Activity page and the tenant API's audit router (filters, cursor pages, isolation, roles)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from billing.redemption import redeem_create
from gateway.models import Credential
from gateway.services import upstream_create
from keys.models import Invitation, Tenant
from keys.services import key_create, key_rotate, tenant_get_or_create
from keys.tokens import token_create
from portal.audit.context import Surface, origin
from portal.audit.models import AuditEntry
from portal.selectors import audit as sel
from portal.tenant_api import audit as audit_api
from tests.audit.helpers import everything_written, member, one

CREATE, UPDATE = AuditEntry.Action.CREATE, AuditEntry.Action.UPDATE


# --- masking ------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_no_secret_or_hash_is_ever_written_to_the_log() -> None:
    tenant, _ = tenant_get_or_create(name="acme")
    owner = member(tenant, "owner@example.com")
    made = key_create(tenant=tenant, name="ci")
    rotated = key_rotate(key=made.key)
    token = token_create(user=owner, name="bot", tenant=tenant)
    upstream = upstream_create(name="oa", kind="openai", base_url="http://127.0.0.1:9/v1",
                               models=["gpt-5"], api_keys=["sk-upstream-plain-AAAA1111"],
                               proxy_url="http://proxyuser:proxy-pass-77@proxy.example:3128")
    credential = Credential.objects.get(upstream=upstream)
    credential.set_secret("sk-upstream-rotated-BBBB2222")
    credential.save()
    codes = redeem_create(amount=1, count=2)

    secrets = [made.secret, made.key.secret_hash, rotated.secret, rotated.key.secret_hash,
               token.secret, token.token.secret_hash, "sk-upstream-plain-AAAA1111",
               "sk-upstream-rotated-BBBB2222", credential.secret_encrypted, "proxy-pass-77",
               *codes]
    from billing.models import RedemptionCode

    secrets += list(RedemptionCode.objects.values_list("code_hash", flat=True))
    written = everything_written()
    for secret in secrets:
        assert secret not in written, secret
    # Each secret's field is there, masked: the log says it was set or changed.
    assert one(made.key, CREATE).changes["secret_hash"] == [None, "(hidden)"]
    assert one(token.token, CREATE).changes["secret_hash"] == [None, "(hidden)"]
    assert one(credential, UPDATE).changes["secret_encrypted"] == ["(hidden)", "(hidden)"]
    assert one(credential, UPDATE).changes["last4"] == ["1111", "2222"]
    assert one(upstream, CREATE).changes["proxy_url"] == [
        None, "http://proxyuser:(hidden)@proxy.example:3128"]
    code_entries = AuditEntry.objects.filter(content_type__model="redemptioncode")
    assert code_entries.count() == 2
    assert {e.changes["code_hash"][1] for e in code_entries} == {"(hidden)"}
    assert {e.changes["amount"][1] for e in code_entries} == {"1"}  # as given


# --- the portal's Activity page -------------------------------------------------------------------

@pytest.fixture
def two_tenants() -> dict[str, Any]:
    acme, _ = tenant_get_or_create(name="acme")
    other, _ = tenant_get_or_create(name="globex")
    owner = member(acme, "owner@acme.example")
    admin = member(acme, "admin@acme.example", role="admin")
    plain = member(acme, "member@acme.example", role="member")
    rival = member(other, "owner@globex.example")
    with origin(Surface.CLI, label="cli (ops)"):
        key_create(tenant=acme, name="acme-key")
        key_create(tenant=other, name="globex-secret-project")
    return {"acme": acme, "other": other, "owner": owner, "admin": admin, "plain": plain,
            "rival": rival}


def _browser(user: Any) -> Client:
    browser = Client()
    browser.force_login(user)
    return browser


@pytest.mark.django_db
def test_owners_and_admins_see_their_tenants_entries_only(two_tenants: dict[str, Any]) -> None:
    url = reverse("portal:activity")
    for who in ("owner", "admin"):
        page = _browser(two_tenants[who]).get(url)
        assert page.status_code == 200
        html = page.content.decode()
        assert "acme-key" in html and "globex-secret-project" not in html
        assert "cli (ops)" in html
        assert 'href="/portal/activity/"' in html  # in the nav
    assert _browser(two_tenants["plain"]).get(url).status_code == 403
    nav = _browser(two_tenants["plain"]).get(reverse("portal:key_list")).content.decode()
    assert 'href="/portal/activity/"' not in nav
    rival = _browser(two_tenants["rival"]).get(url).content.decode()
    assert "globex-secret-project" in rival and "acme-key" not in rival


@pytest.mark.django_db
def test_the_activity_page_filters_and_pages(two_tenants: dict[str, Any]) -> None:
    acme, owner = two_tenants["acme"], two_tenants["owner"]
    browser = _browser(owner)
    browser.post(reverse("portal:member_invite"), {"email": "x@example.com", "role": "member"})
    url = reverse("portal:activity")

    html = browser.get(url, {"object_type": "invitation"}).content.decode()
    assert "x@example.com" in html and "acme-key" not in html
    html = browser.get(url, {"surface": "cli"}).content.decode()
    assert "acme-key" in html and "x@example.com" not in html
    html = browser.get(url, {"actor": "owner@acme.example"}).content.decode()
    assert "x@example.com" in html and "acme-key" not in html
    tomorrow = (timezone.localdate() + dt.timedelta(days=1)).isoformat()
    html = browser.get(url, {"date_from": tomorrow}).content.decode()
    assert "No changes match these filters." in html
    bad = browser.get(url, {"object_type": "upstream"}).content.decode()
    assert "Some filters are not valid" in bad
    assert "not valid any more" in browser.get(url, {"cursor": "garbage!"}).content.decode()
    partial = browser.get(url, HTTP_HX_REQUEST="true").content.decode()
    assert partial.startswith('<div id="audit-results"') and "<html" not in partial

    # 60 more entries: two pages of 50, walked with the cursor links, nothing twice.
    for n in range(60):
        Invitation.objects.create(tenant=acme, email=f"bulk{n}@example.com")
    first = browser.get(url, {"object_type": "invitation"})
    seen = [r["object_repr"] for r in first.context["rows"]]
    assert len(seen) == sel.PAGE_SIZE and first.context["older_url"]
    second = browser.get(url + first.context["older_url"])
    seen += [r["object_repr"] for r in second.context["rows"]]
    assert len(seen) == 61 == len(set(seen)) and not second.context["older_url"]
    back = browser.get(url + second.context["newer_url"])
    assert [r["object_repr"] for r in back.context["rows"]] == seen[:sel.PAGE_SIZE]


# --- the tenant API's router ----------------------------------------------------------------------

def _api(token: str, **params: Any) -> Any:
    return Client().get("/api/v1/audit", params, HTTP_AUTHORIZATION=f"Bearer {token}")


@pytest.mark.django_db
def test_the_router_lists_the_callers_tenant_with_filters_and_cursors(
        two_tenants: dict[str, Any]) -> None:
    acme, owner = two_tenants["acme"], two_tenants["owner"]
    token = token_create(user=owner, name="reader", tenant=acme).secret
    for n in range(5):
        Invitation.objects.create(tenant=acme, email=f"i{n}@example.com")

    body = _api(token).json()
    reprs = [item["object_repr"] for item in body["items"]]
    assert any("acme-key" in r for r in reprs)
    assert not any("globex" in r for r in reprs)
    key_entry = next(i for i in body["items"] if "acme-key" in i["object_repr"])
    assert key_entry["object_type"] == "key" and key_entry["action"] == "create"
    assert key_entry["surface"] == "cli" and key_entry["actor"] == "cli (ops)"
    assert key_entry["changes"]["name"] == [None, "acme-key"]
    assert key_entry["changes"]["secret_hash"] == [None, "(hidden)"]

    # Pages of two, newest first, walked to the end and back; nothing twice.
    walked, cursor = [], None
    while True:
        page = _api(token, object_type="invitation", limit=2,
                    **({"cursor": cursor} if cursor else {})).json()
        walked += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(walked) == 5 == len(set(walked)) and walked == sorted(walked, reverse=True)
    assert _api(token, surface="portal").json()["items"] == []
    assert _api(token, action="delete").json()["items"] == []
    assert len(_api(token, actor="cli").json()["items"]) == 1

    assert _api(token, object_type="upstream").status_code == 422
    assert _api(token, cursor="garbage!").status_code == 400
    assert _api(token, date_from="2026-02-02", date_to="2026-02-01").status_code == 400
    assert _api(token, limit=0).status_code == 422


@pytest.mark.django_db
def test_the_router_is_for_owners_and_admins_of_the_tokens_tenant(
        two_tenants: dict[str, Any]) -> None:
    acme, other = two_tenants["acme"], two_tenants["other"]
    admin_token = token_create(user=two_tenants["admin"], name="a", tenant=acme).secret
    assert _api(admin_token).status_code == 200
    member_token = token_create(user=two_tenants["plain"], name="m", tenant=acme).secret
    assert _api(member_token).status_code == 403
    rival_token = token_create(user=two_tenants["rival"], name="r", tenant=other).secret
    items = _api(rival_token).json()["items"]
    assert items and all(AuditEntry.objects.get(pk=i["id"]).tenant_id == other.pk
                         for i in items)
    assert not any("acme" in i["object_repr"] for i in items)
    assert Client().get("/api/v1/audit").status_code == 401


def test_the_routers_filter_names_are_the_selectors() -> None:
    from typing import get_args

    assert set(get_args(audit_api.ObjectType)) == set(sel.OBJECT_TYPES)
    assert set(get_args(audit_api.Action)) == set(sel.ACTIONS)
    assert set(get_args(audit_api.SurfaceName)) == set(sel.SURFACES)


@pytest.mark.django_db
def test_a_deleted_tenant_keeps_its_entries_with_its_id() -> None:
    with origin(Surface.CLI):
        call_command("tenant", "create", "--name", "shortlived", stdout=None)
    tenant = Tenant.objects.get(name="shortlived")
    pk = tenant.pk
    tenant.delete()
    assert AuditEntry.objects.filter(tenant_id=pk).count() == 2  # created, deleted
