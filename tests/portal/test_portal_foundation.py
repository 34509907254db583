"""The portal's shared parts: login, tenant choice and roles, invitations, languages, CSP."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core import signing
from django.test import Client, override_settings
from django.urls import reverse

from keys.models import Invitation, Membership, Tenant
from portal import invitations
from portal.tenancy import can

pytestmark = pytest.mark.django_db


def member(email: str, tenant: Tenant, role: str = "member") -> Client:
    user = get_user_model().objects.create_user(username=email, email=email, password="pw-12345!")
    Membership.objects.create(tenant=tenant, user=user, role=role)
    client = Client()
    client.force_login(user)
    return client


def test_the_portal_needs_a_login_and_shows_the_users_tenant():
    acme = Tenant.objects.create(name="acme")
    assert Client().get("/portal/").status_code == 302
    page = member("a@example.com", acme).get("/portal/")
    assert page.status_code == 200 and b"acme" in page.content


def test_a_user_without_a_tenant_gets_404_not_someone_elses():
    Tenant.objects.create(name="acme")
    user = get_user_model().objects.create_user(username="x", email="x@example.com",
                                                password="pw")
    client = Client()
    client.force_login(user)
    assert client.get("/portal/").status_code == 404


def test_the_switcher_only_switches_to_a_tenant_of_ones_own():
    acme, other, foreign = (Tenant.objects.create(name=n) for n in ("acme", "beta", "zeta"))
    client = member("a@example.com", acme)
    user = get_user_model().objects.get(username="a@example.com")
    Membership.objects.create(tenant=other, user=user)
    assert b"acme" in client.get("/portal/").content.split(b"<main")[1]
    resp = client.post("/portal/switch/", {"tenant": other.pk, "next": "/portal/"})
    assert resp.status_code == 302
    assert b"beta" in client.get("/portal/").content.split(b"<main")[1]
    assert client.post("/portal/switch/", {"tenant": foreign.pk}).status_code == 404
    assert client.post("/portal/switch/", {"tenant": other.pk, "next": "https://evil.example/"}
                       )["Location"] == reverse("portal:dashboard")


def test_roles_decide_what_a_membership_may_do():
    acme = Tenant.objects.create(name="acme")
    user = get_user_model().objects.create_user(username="u", password="pw")
    roles = {r: Membership(tenant=acme, user=user, role=r) for r in ("owner", "admin", "member")}
    assert [can(roles[r], "manage_keys") for r in roles] == [True, True, False]
    assert [can(roles[r], "own_keys") for r in roles] == [True, True, False]
    acme.members_can_create_keys = True
    assert can(roles["member"], "own_keys") and not can(roles["member"], "manage_keys")
    assert [can(roles[r], "manage_tenant") for r in roles] == [True, False, False]


def test_every_portal_page_carries_a_content_security_policy():
    acme = Tenant.objects.create(name="acme")
    for client, path in ((member("a@example.com", acme), "/portal/"),
                         (Client(), "/accounts/login/")):
        policy = client.get(path)["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy


def test_an_invitation_link_lets_an_existing_user_join_with_its_role():
    acme, beta = Tenant.objects.create(name="acme"), Tenant.objects.create(name="beta")
    client = member("a@example.com", beta)
    invite = Invitation.objects.create(tenant=acme, email="a@example.com", role="admin")
    resp = client.get(reverse("portal:invitation", args=[invitations.token_for(invite)]))
    assert resp.status_code == 302
    assert Membership.objects.get(tenant=acme, user__email="a@example.com").role == "admin"
    invite.refresh_from_db()
    assert invite.accepted_at is not None
    # Used once: the same link no longer works.
    assert client.get(reverse("portal:invitation", args=[invitations.token_for(invite)])
                      ).status_code == 404


def test_a_forged_or_expired_invitation_is_refused():
    acme = Tenant.objects.create(name="acme")
    invite = Invitation.objects.create(tenant=acme, email="b@example.com")
    assert invitations.invitation_from_token(f"{invite.pk}:forged") is None
    old = signing.TimestampSigner(salt=invitations.SALT)
    token = old.sign(str(invite.pk))
    with override_settings(PORTAL_INVITATION_DAYS=-1):
        assert invitations.invitation_from_token(token) is None


@override_settings(PORTAL_SIGNUP="invite")
def test_invite_only_sign_up_opens_only_with_an_invitation():
    acme = Tenant.objects.create(name="acme")
    client = Client()
    assert b'name="password1"' not in client.get("/accounts/signup/").content  # closed
    invite = Invitation.objects.create(tenant=acme, email="new@example.com", role="member")
    resp = client.get(reverse("portal:invitation", args=[invitations.token_for(invite)]))
    assert resp["Location"].startswith(reverse("account_signup"))
    page = client.get("/accounts/signup/")
    assert b'name="password1"' in page.content
    resp = client.post("/accounts/signup/", {"email": "new@example.com",
                                             "password1": "a-Long-pass-9", "password2":
                                             "a-Long-pass-9"})
    assert resp.status_code == 302, resp.content[:2000]
    assert Membership.objects.filter(tenant=acme, user__email="new@example.com").exists()


def test_the_language_follows_the_browser_and_can_be_switched():
    acme = Tenant.objects.create(name="acme")
    client = member("a@example.com", acme)
    page = client.get("/portal/", HTTP_ACCEPT_LANGUAGE="zh-CN,zh;q=0.9")
    assert b'lang="zh-hans"' in page.content
    client.post("/i18n/setlang/", {"language": "en", "next": "/portal/"})
    page = client.get("/portal/", HTTP_ACCEPT_LANGUAGE="zh-CN,zh;q=0.9")
    assert b'lang="en"' in page.content
