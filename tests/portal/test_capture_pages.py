"""Who sees a request's captured bodies (issue 15): the tenant's owners on the portal's
request page and staff on the admin's usage row; never a member or an admin of the tenant,
nor another tenant (the page is a 404 there)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from billing.models import UsageLog
from gateway.models import CapturedExchange
from keys.models import Tenant
from keys.services import key_create
from tests.portal.test_usage_log import log, member

pytestmark = pytest.mark.django_db

REQUEST = '{"model":"gpt-5","input":"<b>why</b> is the sky blue?","password":"[redacted]"}'
RESPONSE = '{"id":"resp_1","output_text":"Rayleigh scattering"}'


@pytest.fixture
def acme() -> Tenant:
    return Tenant.objects.create(name="acme")


@pytest.fixture
def row(acme: Tenant) -> UsageLog:
    key = key_create(tenant=acme, name="k").key
    usage = log(acme, key)
    CapturedExchange.objects.create(
        request_id=usage.request_id, tenant=acme, key=key, created_at=timezone.now(),
        method="POST", path="/v1/responses", status=200, stream=False,
        request_headers={"user-agent": "codex_cli_rs/0.50"}, request_body=REQUEST,
        request_bytes=len(REQUEST), response_body=RESPONSE, response_bytes=4000,
        response_truncated=True)
    return usage


def detail(client: Client, usage: UsageLog) -> Any:
    return client.get(reverse("portal:usage_detail", args=[usage.request_id]))


def test_an_owner_sees_the_captured_bodies_escaped(acme: Tenant, row: UsageLog) -> None:
    page = detail(member("o@acme.example", acme, "owner"), row)
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="captured-exchange"' in html
    assert "POST /v1/responses" in html and "codex_cli_rs/0.50" in html
    assert "&lt;b&gt;why&lt;/b&gt;" in html and "<b>why</b>" not in html  # escaped
    assert '  &quot;password&quot;: &quot;[redacted]&quot;' in html  # whole JSON, indented
    assert "Rayleigh scattering" in html and "cut at 65,536 bytes" in html


@pytest.mark.parametrize("role", ["member", "admin"])
def test_members_and_admins_see_the_request_but_not_its_bodies(acme: Tenant, row: UsageLog,
                                                               role: str) -> None:
    page = detail(member(f"{role}@acme.example", acme, role), row)
    assert page.status_code == 200  # the request page itself
    html = page.content.decode()
    assert 'id="captured-exchange"' not in html
    assert "Rayleigh" not in html and "why" not in html and "Captured bodies" not in html


def test_another_tenant_gets_a_404(acme: Tenant, row: UsageLog) -> None:
    other = Tenant.objects.create(name="globex")
    page = detail(member("o@globex.example", other, "owner"), row)
    assert page.status_code == 404 and b"Rayleigh" not in page.content


def test_an_owner_is_told_when_nothing_was_captured(acme: Tenant) -> None:
    usage = log(acme, key_create(tenant=acme, name="k").key)
    page = detail(member("o@acme.example", acme, "owner"), usage)
    assert page.status_code == 200
    assert "body capture was off" in page.content.decode()


def test_staff_see_the_capture_on_the_admin_usage_page(row: UsageLog) -> None:
    url = reverse("admin:billing_usagelog_change", args=[row.pk])
    staff = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    admin = Client()
    admin.force_login(staff)
    page = admin.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="captured-exchange"' in html and "Rayleigh scattering" in html
    assert "&lt;b&gt;why&lt;/b&gt;" in html
    assert "portal/capture.css" in html
    # A row without a capture says so.
    bare = log(row.tenant)
    page = admin.get(reverse("admin:billing_usagelog_change", args=[bare.pk]))
    assert "body capture was off" in page.content.decode()
    # A user who is not staff never reaches the admin.
    plain = get_user_model().objects.create_user("ann", "ann@example.com", "pw")
    client = Client()
    client.force_login(plain)
    assert client.get(url).status_code == 302  # to the admin's login
