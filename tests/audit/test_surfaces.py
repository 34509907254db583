"""An audit entry for every surface a change can come from: the admin, the portal (WSGI and
ASGI), a token-authenticated API (ninja and DRF, as the tenant and operations APIs do it),
the command line, a Celery task; with who, from where and what changed (before and after).
And the /v1 hot path writes none."""

from __future__ import annotations

import logging
import time
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.db import connection, transaction
from django.test import AsyncClient, Client
from django.urls import reverse

from billing.models import LedgerEntry, ModelPrice, RedemptionCode
from billing.services import tenant_topup
from gateway.services import upstream_create
from gateway.tasks import probe_upstreams
from keys.models import ApiKey, Group, Invitation, Status, Tenant
from keys.services import key_create, tenant_get_or_create
from keys.tokens import token_create
from portal.audit.context import Surface, current, origin
from portal.audit.models import AuditEntry
from tests.audit.helpers import member, one
from tests.conftest import wait_for_usage

CREATE, UPDATE, DELETE = (AuditEntry.Action.CREATE, AuditEntry.Action.UPDATE,
                          AuditEntry.Action.DELETE)


def _url(model: type, view: str, *args: Any) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


# --- admin ------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_admin_create_change_and_delete_record_the_staff_user_address_and_values(
        admin_client: Client, admin_user: Any) -> None:
    response = admin_client.post(_url(Group, "add"), {
        "name": "pro", "description": "", "allowed_models": "gpt-5*", "rpm": "60", "rpd": "0",
        "concurrency": "0", "max_tokens": "0", "price_multiplier": "1"},
        REMOTE_ADDR="198.51.100.7")
    assert response.status_code == 302, response.content.decode()[:2000]
    group = Group.objects.get(name="pro")

    created = one(group, CREATE)
    assert created.surface == Surface.ADMIN
    assert created.actor_id == admin_user.pk and created.actor_kind == "user"
    assert created.actor_label == (admin_user.email or admin_user.username)
    assert created.remote_addr == "198.51.100.7"
    assert created.changes["name"] == [None, "pro"]
    assert created.changes["rpm"] == [None, 60]
    assert created.tenant_id is None  # a global object: staff-only

    admin_client.post(_url(Group, "change", group.pk), {
        "name": "pro", "description": "", "allowed_models": "gpt-5*", "rpm": "120",
        "rpd": "0", "concurrency": "0", "max_tokens": "0", "price_multiplier": "1"})
    changed = one(group, UPDATE)
    assert changed.changes == {"rpm": [60, 120]}  # only what changed, before and after
    assert changed.surface == Surface.ADMIN and changed.actor_id == admin_user.pk

    pk = group.pk
    admin_client.post(_url(Group, "delete", pk), {"post": "yes"})
    assert not Group.objects.filter(pk=pk).exists()
    deleted = AuditEntry.objects.get(object_pk=str(pk), action=DELETE,
                                     content_type__model="group")
    assert deleted.changes["name"] == ["pro", None]
    assert deleted.actor_id == admin_user.pk


@pytest.mark.django_db
def test_admin_top_up_records_the_balance_before_and_after(admin_client: Client,
                                                            admin_user: Any) -> None:
    tenant = Tenant.objects.create(name="acme")
    tenant_topup(tenant=tenant, amount=Decimal("5"))  # no origin here: the system
    page = admin_client.get(_url(Tenant, "change", tenant.pk))
    data: dict[str, Any] = {"name": "acme", "status": "active", "group": "",
                            "top_up": "10", "top_up_note": "invoice 42"}
    for formset in page.context["inline_admin_formsets"]:
        management = formset.formset.management_form
        for name, field in management.fields.items():
            data[f"{management.prefix}-{name}"] = management.initial.get(name, field.initial)
        for form in formset.formset.initial_forms:  # the existing rows (read-only) by id
            data[form.add_prefix("id")] = form.instance.pk
    response = admin_client.post(_url(Tenant, "change", tenant.pk), data)
    assert response.status_code == 302, response.content.decode()[:3000]

    entries = AuditEntry.objects.filter(content_type__model="ledgerentry",
                                        tenant_id=tenant.pk).order_by("id")
    system, admin = list(entries)
    assert system.surface == Surface.SYSTEM and system.actor_id is None
    assert system.changes["balance"] == ["0.000000", "5.000000"]
    assert admin.surface == Surface.ADMIN and admin.actor_id == admin_user.pk
    assert admin.changes["kind"] == [None, "topup"]
    assert admin.changes["amount"] == [None, "10.000000"]
    assert admin.changes["balance"] == ["5.000000", "15.000000"]
    assert admin.changes["note"] == [None, "invoice 42"]


@pytest.mark.django_db
def test_the_admin_lists_and_filters_entries(admin_client: Client) -> None:
    tenant, _ = tenant_get_or_create(name="acme")
    with origin(Surface.CLI, label="cli (ops)"):
        key_create(tenant=tenant, name="from the cli")
    Group.objects.create(name="by the system")
    changelist = _url(AuditEntry, "changelist")

    page = admin_client.get(changelist, {"surface": "cli"})
    assert page.status_code == 200
    html = page.content.decode()
    assert "from the cli" in html and "by the system" not in html
    ct = one(Group.objects.get(), CREATE).content_type_id
    html = admin_client.get(changelist, {"object_type": ct}).content.decode()
    assert "by the system" in html and "from the cli" not in html
    html = admin_client.get(changelist, {"tenant_id": tenant.pk, "actor_kind": "cli",
                                         "action": CREATE}).content.decode()
    assert "from the cli" in html and "by the system" not in html
    entry = AuditEntry.objects.filter(surface="cli").first()
    detail = admin_client.get(_url(AuditEntry, "change", entry.pk))
    assert detail.status_code == 200 and "cli (ops)" in detail.content.decode()
    # Read-only: nothing can be added, changed or deleted there.
    assert admin_client.get(_url(AuditEntry, "add")).status_code == 403
    assert admin_client.post(_url(AuditEntry, "delete", entry.pk),
                             {"post": "yes"}).status_code == 403
    assert AuditEntry.objects.filter(pk=entry.pk).exists()


# --- portal -----------------------------------------------------------------------------------

@pytest.mark.django_db
def test_portal_changes_record_the_member_the_portal_and_the_values() -> None:
    tenant, _ = tenant_get_or_create(name="acme")
    owner = member(tenant, "owner@example.com")
    key = key_create(tenant=tenant, name="ci", created_by=owner).key
    browser = Client(REMOTE_ADDR="203.0.113.5")
    browser.force_login(owner)

    browser.post(reverse("portal:key_disable", args=[key.pk]))
    entry = one(key, UPDATE)
    assert entry.changes == {"status": ["active", "disabled"]}
    assert (entry.surface, entry.actor_id, entry.actor_kind) == (Surface.PORTAL, owner.pk,
                                                                  "user")
    assert entry.actor_email == "owner@example.com" and entry.remote_addr == "203.0.113.5"
    assert entry.tenant_id == tenant.pk

    browser.post(reverse("portal:member_invite"), {"email": "new@example.com",
                                                   "role": "member"})
    invitation = Invitation.objects.get(email="new@example.com")
    assert one(invitation, CREATE).changes["role"] == [None, "member"]
    browser.post(reverse("portal:member_invite"), {"email": "new@example.com",
                                                   "role": "admin"})
    revoked = one(invitation, UPDATE)  # the earlier invitation, withdrawn by the new one
    assert revoked.changes["revoked_at"][0] is None and revoked.changes["revoked_at"][1]
    assert revoked.actor_id == owner.pk and revoked.surface == Surface.PORTAL

    browser.post(reverse("portal:balance_alert"), {"threshold": "25"})
    settings_entry = one(tenant, UPDATE)
    assert settings_entry.changes == {"low_balance_threshold": [None, "25.000000"]}

    with origin(Surface.CLI):
        codes = call_command_out("redeem", "create", "--amount", "3", "--count", "1")
    code = codes.strip().splitlines()[-1].split()[-1]
    browser.post(reverse("portal:balance_redeem"), {"code": code})
    row = RedemptionCode.objects.get()
    used = one(row, UPDATE)
    assert used.tenant_id == tenant.pk and used.actor_id == owner.pk
    assert used.changes["redeemed_by"] == [None, "acme"]
    credit = AuditEntry.objects.get(content_type__model="ledgerentry", tenant_id=tenant.pk)
    assert credit.changes["kind"] == [None, LedgerEntry.Kind.REDEMPTION]
    assert credit.changes["balance"] == ["0.000000", "3.000000"]
    assert credit.surface == Surface.PORTAL and credit.actor_id == owner.pk


def call_command_out(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.mark.django_db(transaction=True)
async def test_under_asgi_the_portal_user_is_recorded() -> None:
    """The portal runs under daphne: sync views run in a thread through sync_to_async, and
    the origin set by the middleware must reach the save there."""
    tenant, owner, key = await sync_to_async(_asgi_world)()
    client = AsyncClient()
    await client.aforce_login(owner)
    response = await client.post(reverse("portal:key_disable", args=[key.pk]))
    assert response.status_code == 302
    entry = await sync_to_async(one)(key, UPDATE)
    assert entry.actor_id == owner.pk and entry.actor_kind == "user"
    assert entry.surface == Surface.PORTAL and entry.remote_addr == "127.0.0.1"  # ASGI scope
    assert entry.changes == {"status": ["active", "disabled"]}


def _asgi_world() -> tuple[Tenant, Any, ApiKey]:
    tenant, _ = tenant_get_or_create(name="asgi")
    owner = member(tenant, "asgi-owner@example.com")
    return tenant, owner, key_create(tenant=tenant, name="k").key


# --- APIs: a personal access token (ninja) and DRF ---------------------------------------------

@pytest.mark.django_db
def test_a_token_change_records_the_token_and_its_user_on_the_tenant_api() -> None:
    tenant, _ = tenant_get_or_create(name="acme")
    owner = member(tenant, "owner@example.com")
    made = token_create(user=owner, name="deploy bot", scope="write", tenant=tenant)
    key = key_create(tenant=tenant, name="ci").key
    response = Client().post(f"/api/v1/keys/{key.pk}/disable",
                             HTTP_AUTHORIZATION=f"Bearer {made.secret}")
    assert response.status_code == 200, response.content
    entry = one(key, UPDATE)
    assert entry.surface == Surface.TENANT_API
    assert entry.actor_kind == "token" and entry.actor_id == owner.pk
    assert entry.token_id == made.token.pk
    assert entry.actor_label == f"owner@example.com (token deploy bot: {made.token.masked})"
    assert made.secret not in entry.actor_label
    assert entry.remote_addr == "127.0.0.1"


@pytest.mark.django_db
def test_a_drf_view_records_its_authenticated_token_on_the_ops_api(admin_user: Any) -> None:
    made = token_create(user=admin_user, name="ops", scope="write", staff=True)
    group = Group.objects.create(name="basic")
    response = Client().patch(f"/api/ops/groups/{group.pk}/", {"name": "starter"},
                              content_type="application/json",
                              HTTP_AUTHORIZATION=f"Bearer {made.secret}")
    assert response.status_code == 200, response.content
    entry = one(group, UPDATE)
    assert entry.changes == {"name": ["basic", "starter"]}
    assert entry.surface == Surface.OPS_API
    assert (entry.actor_kind, entry.actor_id, entry.token_id) == ("token", admin_user.pk,
                                                                  made.token.pk)


# --- command line and Celery --------------------------------------------------------------------

@pytest.mark.django_db
def test_cli_commands_record_cli_and_the_os_user() -> None:
    output = call_command_out("key", "create", "--tenant", "clico", "--name", "ci",
                              "--rpm", "10")
    secret = output.strip().splitlines()[-1]
    key = ApiKey.objects.get(name="ci")
    tenant = key.tenant
    for entry in (one(tenant, CREATE), one(key, CREATE)):
        assert entry.surface == Surface.CLI and entry.actor_kind == "cli"
        assert entry.actor_label.startswith("cli") and entry.actor_id is None
        assert entry.tenant_id == tenant.pk
    assert one(key, CREATE).changes["rpm"] == [None, 10]
    assert secret not in str(one(key, CREATE).changes)

    call_command_out("key", "disable", key.prefix)
    assert one(key, UPDATE).changes == {"status": ["active", "disabled"]}
    call_command_out("tenant", "topup", "clico", "7.5", "--note", "wire")
    credit = AuditEntry.objects.get(content_type__model="ledgerentry")
    assert credit.surface == Surface.CLI
    assert credit.changes["balance"] == ["0.000000", "7.500000"]
    assert current().surface == Surface.SYSTEM  # the command's origin ended with it


@pytest.mark.django_db
def test_a_celery_task_records_system(settings: Any) -> None:
    settings.GATEWAY_HEALTH_FAILURES = 1
    upstream = upstream_create(name="down", kind="openai", base_url="http://127.0.0.1:9/v1",
                               models=["gpt-5"], api_keys=["sk-upstream-down-0001"])
    with origin(Surface.CLI, label="cli (test)"):
        result = probe_upstreams.delay()  # eager in tests: the task's own origin applies
        assert current().surface == Surface.CLI  # and the caller's is back after it
    assert result.get() == {"down": False}
    upstream.refresh_from_db()
    assert upstream.auto_disabled
    entry = one(upstream, UPDATE)
    assert entry.changes == {"auto_disabled": [False, True]}
    assert entry.surface == Surface.SYSTEM and entry.actor_kind == "system"
    assert entry.actor_id is None


# --- failures and the hot path -----------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_a_failed_audit_write_is_logged_and_never_breaks_the_change(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The entry is written in a savepoint of the change's transaction: a database error
    there is rolled back to the savepoint and logged, and the change commits."""
    original = AuditEntry.save

    def failing_save(self: AuditEntry, *args: Any, **kwargs: Any) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1/0")  # a real error from PostgreSQL
        original(self, *args, **kwargs)

    tenant, _ = tenant_get_or_create(name="acme")
    key = key_create(tenant=tenant, name="ci").key
    monkeypatch.setattr(AuditEntry, "save", failing_save)
    with caplog.at_level(logging.ERROR, logger="turnpike.audit"), transaction.atomic():
        key.status = Status.DISABLED
        key.save(update_fields=["status"])
        key.name = "renamed"  # the transaction is still usable after the failed entry
        key.save(update_fields=["name"])
    monkeypatch.setattr(AuditEntry, "save", original)
    key.refresh_from_db()
    assert (key.status, key.name) == (Status.DISABLED, "renamed")
    assert not AuditEntry.objects.filter(action=UPDATE).exists()
    assert "audit entry not written for ApiKey" in caplog.text


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_v1_traffic_and_its_charges_write_no_audit_entries(client: Any, tenant: Tenant) -> None:
    """The hot path is unchanged: a served request writes its usage row and the charge
    posted to the ledger, and not one audit entry."""
    ModelPrice.objects.create(model="gpt-4o-mini", input_per_million=Decimal("100"),
                              output_per_million=Decimal("100"))
    tenant_topup(tenant=tenant, amount=Decimal("100"))
    before = AuditEntry.objects.count()
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert wait_for_usage(raw.headers["x-request-id"]).cost > 0
    deadline = time.monotonic() + 10  # the charge is posted with the usage batch
    while not LedgerEntry.objects.filter(tenant=tenant, kind="charge").exists():
        assert time.monotonic() < deadline, "no charge posted"
        time.sleep(0.05)
    assert AuditEntry.objects.count() == before
