"""Accounts (django-allauth) and membership: login by email, throttling, sign-up modes, email
verification, password reset, TOTP with recovery codes, SSO buttons, invitations, members,
roles, the tenant's settings page."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from allauth.account.models import EmailAddress
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import (
    SECRET_SESSION_KEY,
    format_hotp_value,
    hotp_value,
    yield_hotp_counters_from_time,
)
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from keys import membership as rules
from keys.models import Invitation, Membership, Tenant
from portal import invitations

pytestmark = pytest.mark.django_db
PASSWORD = "a-Long-pass-9"


@pytest.fixture(autouse=True)
def _private_cache() -> Iterator[None]:
    """allauth's rate limits and used-TOTP markers live in the cache: give each test its own
    (the shared Redis cache is also used by other test runs at the same time)."""
    with override_settings(CACHES={"default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": f"accounts-{uuid.uuid4()}"}}):
        yield


def make_user(email: str, password: str = PASSWORD, verified: bool = True) -> Any:
    user = get_user_model().objects.create_user(username=email, email=email, password=password)
    EmailAddress.objects.create(user=user, email=email, verified=verified, primary=True)
    return user


def member(email: str, tenant: Tenant, role: str = "member") -> tuple[Client, Membership]:
    user = make_user(email)
    membership = Membership.objects.create(tenant=tenant, user=user, role=role)
    client = Client()
    client.force_login(user)
    return client, membership


def login(client: Client, email: str, password: str = PASSWORD) -> Any:
    return client.post(reverse("account_login"), {"login": email, "password": password})


def logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def link_in(message: mail.EmailMessage) -> str:
    found = re.search(r"https?://testserver(/\S+)", message.body)
    assert found, message.body
    return found.group(1)


def totp_now(secret: str) -> str:
    """The code an authenticator app shows now (allauth.mfa's own HOTP helpers)."""
    counters = list(yield_hotp_counters_from_time())
    return format_hotp_value(hotp_value(secret, counters[len(counters) // 2]))


# --- Logging in ----------------------------------------------------------------------------

def test_login_by_email_and_password_lands_on_the_portal():
    acme = Tenant.objects.create(name="acme")
    user = make_user("ann@example.com")
    Membership.objects.create(tenant=acme, user=user, role="owner")
    client = Client()
    page = client.get(reverse("account_login"))
    assert page.status_code == 200
    assert b'name="login"' in page.content and b'name="password"' in page.content
    assert b'<main id="content" class="narrow account">' in page.content  # our layout
    assert b"<label" in page.content
    resp = login(client, "ANN@example.com")
    assert resp.status_code == 302 and resp["Location"] == "/portal/"
    assert client.get("/portal/").status_code == 200


def test_a_wrong_password_is_refused():
    make_user("ann@example.com")
    client = Client()
    resp = login(client, "ann@example.com", "wrong-password")
    assert resp.status_code == 200 and not logged_in(client)


def test_failed_logins_are_throttled_even_with_the_right_password_afterwards():
    make_user("ann@example.com")
    client = Client()
    for _ in range(5):  # ACCOUNT_RATE_LIMITS login_failed: 5 per 5 minutes per account
        assert login(client, "ann@example.com", "wrong-password").status_code == 200
    resp = login(client, "ann@example.com")
    assert not logged_in(client)
    assert b"Too many failed login attempts" in resp.content
    # Another account from the same address is not locked (10 per minute per IP).
    make_user("bob@example.com")
    assert login(client, "bob@example.com").status_code == 302 and logged_in(client)


def test_a_user_without_a_tenant_lands_on_the_welcome_page():
    make_user("ann@example.com")
    client = Client()
    resp = login(client, "ann@example.com")
    assert resp["Location"] == reverse("portal:welcome")
    page = client.get(resp["Location"])
    assert page.status_code == 200 and b"not a member of any tenant" in page.content


# --- Sign-up modes ---------------------------------------------------------------------------

def signup(client: Client, email: str) -> Any:
    return client.post(reverse("account_signup"), {"email": email, "password1": PASSWORD,
                                                   "password2": PASSWORD})


@override_settings(PORTAL_SIGNUP="open", ACCOUNT_EMAIL_VERIFICATION="optional")
def test_open_sign_up_creates_an_account():
    client = Client()
    assert b'name="password1"' in client.get(reverse("account_signup")).content
    resp = signup(client, "new@example.com")
    assert resp.status_code == 302
    assert get_user_model().objects.filter(email="new@example.com").exists()
    assert logged_in(client)


@override_settings(PORTAL_SIGNUP="invite")
def test_invite_sign_up_is_closed_without_an_invitation():
    client = Client()
    page = client.get(reverse("account_signup"))
    assert b'name="password1"' not in page.content
    assert b"invitation email" in page.content  # says how to get in
    signup(client, "new@example.com")
    assert not get_user_model().objects.filter(email="new@example.com").exists()


@override_settings(PORTAL_SIGNUP="closed")
def test_closed_sign_up_refuses_everyone_even_with_an_invitation():
    acme = Tenant.objects.create(name="acme")
    invite = Invitation.objects.create(tenant=acme, email="new@example.com")
    client = Client()
    client.get(invitations.link_for(None, invite))
    assert b'name="password1"' not in client.get(reverse("account_signup")).content
    signup(client, "new@example.com")
    assert not get_user_model().objects.filter(email="new@example.com").exists()


@override_settings(PORTAL_SIGNUP="open", ACCOUNT_EMAIL_VERIFICATION="mandatory")
def test_mandatory_verification_blocks_login_until_the_emailed_link_is_opened():
    client = Client()
    mail.outbox.clear()
    resp = signup(client, "new@example.com")
    assert resp.status_code == 302 and not logged_in(client)
    assert len(mail.outbox) == 1
    confirm = link_in(mail.outbox[0])
    # Logging in (from another browser) is refused: a new confirmation is sent instead.
    other = Client()
    login(other, "new@example.com")
    assert not logged_in(other)
    # Opening the link confirms the address; then logging in works.
    assert client.get(confirm).status_code == 200
    client.post(confirm)
    assert EmailAddress.objects.get(email="new@example.com").verified
    other = Client()
    assert login(other, "new@example.com").status_code == 302 and logged_in(other)


def test_password_reset_through_the_emailed_link():
    make_user("ann@example.com", password="old-Pass-123")
    client = Client()
    mail.outbox.clear()
    resp = client.post(reverse("account_reset_password"), {"email": "ann@example.com"})
    assert resp.status_code == 302
    assert len(mail.outbox) == 1
    assert mail.outbox[0].subject.startswith("[Turnpike] ")
    assert "example.com!" not in mail.outbox[0].body  # the portal's name, not the Site row's
    link = link_in(mail.outbox[0])
    page = client.get(link, follow=True)  # the key moves to the session, then a form
    assert page.status_code == 200 and b'name="password1"' in page.content
    form_url = page.redirect_chain[-1][0] if page.redirect_chain else link
    resp = client.post(form_url, {"password1": "new-Pass-456", "password2": "new-Pass-456"})
    assert resp.status_code == 302
    fresh = Client()
    assert login(fresh, "ann@example.com", "old-Pass-123").status_code == 200
    assert login(fresh, "ann@example.com", "new-Pass-456").status_code == 302


# --- Two-factor ------------------------------------------------------------------------------

@override_settings(MFA_TOTP_TOLERANCE=1)  # a code computed at a step's very end still works
def test_totp_activation_then_login_needs_the_code_or_a_recovery_code():
    make_user("ann@example.com")
    client = Client()
    login(client, "ann@example.com")
    assert client.get(reverse("mfa_index")).status_code == 200
    # Turning on two-factor asks for the password again (allauth's reauthentication).
    resp = client.get(reverse("mfa_activate_totp"))
    assert resp.status_code == 302 and resp["Location"].startswith(
        reverse("account_reauthenticate"))
    client.post(reverse("account_reauthenticate"), {"password": PASSWORD})
    page = client.get(reverse("mfa_activate_totp"))
    assert page.status_code == 200
    secret = client.session[SECRET_SESSION_KEY]
    assert secret in page.content.decode()  # shown for manual entry too
    resp = client.post(reverse("mfa_activate_totp"), {"code": totp_now(secret)})
    assert resp.status_code == 302, resp.content[:3000]
    user = get_user_model().objects.get(email="ann@example.com")
    assert Authenticator.objects.filter(user=user, type="totp").exists()
    codes_page = client.get(reverse("mfa_view_recovery_codes"))
    assert codes_page.status_code == 200
    recovery = Authenticator.objects.get(user=user, type="recovery_codes").wrap()
    codes = recovery.get_unused_codes()
    assert codes and codes[0] in codes_page.content.decode()
    client.post(reverse("account_logout"))

    # The password alone is not enough: the second step asks for a code.
    fresh = Client()
    resp = login(fresh, "ann@example.com")
    assert resp.status_code == 302 and resp["Location"] == reverse("mfa_authenticate")
    assert not logged_in(fresh)
    assert fresh.post(reverse("mfa_authenticate"), {"code": "000000"}).status_code == 200
    assert not logged_in(fresh)
    code = totp_now(secret)
    resp = fresh.post(reverse("mfa_authenticate"), {"code": code})
    assert resp.status_code == 302 and logged_in(fresh)
    # The same code cannot be replayed.
    replay = Client()
    login(replay, "ann@example.com")
    replay.post(reverse("mfa_authenticate"), {"code": code})
    assert not logged_in(replay)

    # A recovery code works instead of the authenticator, once.
    third = Client()
    login(third, "ann@example.com")
    resp = third.post(reverse("mfa_authenticate"), {"code": codes[0]})
    assert resp.status_code == 302 and logged_in(third)
    fourth = Client()
    login(fourth, "ann@example.com")
    fourth.post(reverse("mfa_authenticate"), {"code": codes[0]})
    assert not logged_in(fourth)


def test_the_passkey_pages_render():
    make_user("ann@example.com")
    client = Client()
    login(client, "ann@example.com")
    anon = Client().get(reverse("account_login"))
    assert b'id="passkey_login"' in anon.content and b'id="mfa_login"' in anon.content
    assert b"mfa/js/webauthn.js" in anon.content  # allauth's scripts reach the page
    client.post(reverse("account_reauthenticate"), {"password": PASSWORD})
    page = client.get(reverse("mfa_add_webauthn"))
    assert page.status_code == 200, page.status_code
    assert b"webauthn.js" in page.content
    assert client.get(reverse("mfa_list_webauthn")).status_code == 200


# --- SSO buttons -----------------------------------------------------------------------------

def test_no_sso_button_without_configuration():
    page = Client().get(reverse("account_login"))
    assert b"/accounts/github/login/" not in page.content
    assert b"/accounts/oidc/" not in page.content


@override_settings(SOCIALACCOUNT_PROVIDERS={
    "github": {"APPS": [{"client_id": "id", "secret": "s"}], "SCOPE": ["user:email"]},
    "openid_connect": {"APPS": [{"provider_id": "oidc", "name": "Company SSO",
                                 "client_id": "id", "secret": "s",
                                 "settings": {"server_url": "https://sso.example.com"}}]},
})
def test_sso_buttons_appear_when_configured():
    page = Client().get(reverse("account_login"))
    assert b"/accounts/github/login/" in page.content
    assert b"/accounts/oidc/oidc/login/" in page.content
    assert b"Company SSO" in page.content


# --- Invitations -----------------------------------------------------------------------------

def test_an_owner_invites_by_email_and_an_existing_user_joins():
    acme = Tenant.objects.create(name="acme")
    owner, _ = member("owner@example.com", acme, "owner")
    bob = make_user("bob@example.com")
    mail.outbox.clear()
    resp = owner.post(reverse("portal:member_invite"), {"email": "bob@example.com",
                                                        "role": "admin"})
    assert resp.status_code == 302
    invite = Invitation.objects.get(tenant=acme, email="bob@example.com")
    assert invite.role == "admin" and invite.invited_by.email == "owner@example.com"
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["bob@example.com"]
    assert "acme" in mail.outbox[0].subject
    link = link_in(mail.outbox[0])
    # The link is the invitation's (its signature carries the second it was made, so it is
    # checked by opening it rather than by comparing it with a link made now).
    token = link.rstrip("/").rsplit("/", 1)[-1]
    assert invitations.invitation_from_token(token) == invite
    page = owner.get(reverse("portal:members"))
    assert b"bob@example.com" in page.content and b"Pending invitations" in page.content
    # Bob, not logged in, opens the link, logs in, and has joined.
    client = Client()
    assert client.get(link)["Location"] == reverse("account_login")
    assert login(client, "bob@example.com").status_code == 302
    assert Membership.objects.get(tenant=acme, user=bob).role == "admin"
    assert client.get("/portal/").status_code == 200


@override_settings(PORTAL_SIGNUP="invite", ACCOUNT_EMAIL_VERIFICATION="mandatory")
def test_a_new_user_signs_up_through_an_invitation_in_invite_mode():
    acme = Tenant.objects.create(name="acme")
    owner, _ = member("owner@example.com", acme, "owner")
    owner.post(reverse("portal:member_invite"), {"email": "new@example.com", "role": "member"})
    link = link_in(mail.outbox[-1])
    client = Client()
    location = client.get(link)["Location"]
    assert location == reverse("account_signup") + "?email=new%40example.com"
    assert b'value="new@example.com"' in client.get(location).content  # filled in
    # Another address cannot use this invitation to sign up.
    signup(client, "other@example.com")
    assert not get_user_model().objects.filter(email="other@example.com").exists()
    resp = signup(client, "new@example.com")
    assert resp.status_code == 302
    # The invitation reached this address, so no separate confirmation is needed.
    assert logged_in(client)
    assert EmailAddress.objects.get(email="new@example.com").verified
    assert Membership.objects.get(tenant=acme, user__email="new@example.com").role == "member"


def test_expired_revoked_and_forged_invitations_are_refused():
    acme = Tenant.objects.create(name="acme")
    owner, _ = member("owner@example.com", acme, "owner")
    make_user("bob@example.com")
    bob = Client()
    login(bob, "bob@example.com")
    revoked = Invitation.objects.create(tenant=acme, email="bob@example.com")
    link = invitations.link_for(None, revoked)
    resp = owner.post(reverse("portal:invitation_revoke", args=[revoked.pk]))
    assert resp.status_code == 302
    assert bob.get(link).status_code == 404
    forged = Invitation.objects.create(tenant=acme, email="bob@example.com")
    token = invitations.token_for(forged)
    assert bob.get(reverse("portal:invitation", args=[token[:-2] + "xx"])).status_code == 404
    assert bob.get(reverse("portal:invitation", args=[f"{forged.pk}"])).status_code == 404
    with override_settings(PORTAL_INVITATION_DAYS=0):
        Invitation.objects.filter(pk=forged.pk).update(
            created_at=timezone.now() - timedelta(days=1))
        assert bob.get(invitations.link_for(None, forged)).status_code == 404
    assert not Membership.objects.filter(tenant=acme, user__email="bob@example.com").exists()


def test_a_member_cannot_invite_and_an_admin_cannot_invite_an_owner():
    acme = Tenant.objects.create(name="acme")
    plain, _ = member("m@example.com", acme, "member")
    admin, _ = member("a@example.com", acme, "admin")
    assert plain.post(reverse("portal:member_invite"),
                      {"email": "x@example.com", "role": "member"}).status_code == 403
    page = plain.get(reverse("portal:members"))
    assert page.status_code == 200 and b"Invite someone" not in page.content
    admin.post(reverse("portal:member_invite"), {"email": "x@example.com", "role": "owner"})
    assert not Invitation.objects.filter(email="x@example.com").exists()
    assert b'value="owner"' not in admin.get(reverse("portal:members")).content


def test_cross_tenant_invitations_and_members_are_404():
    acme, beta = Tenant.objects.create(name="acme"), Tenant.objects.create(name="beta")
    _owner_a, owner_a = member("oa@example.com", acme, "owner")
    _x, acme_member = member("ma@example.com", acme, "member")
    admin_b, _ = member("ab@example.com", beta, "admin")
    invite = Invitation.objects.create(tenant=acme, email="secret@example.com")
    page = admin_b.get(reverse("portal:members"))
    assert b"secret@example.com" not in page.content and b"ma@example.com" not in page.content
    assert admin_b.post(reverse("portal:invitation_revoke", args=[invite.pk])).status_code == 404
    assert admin_b.post(reverse("portal:member_remove", args=[acme_member.pk])).status_code == 404
    assert admin_b.post(reverse("portal:member_role", args=[acme_member.pk]),
                        {"role": "admin"}).status_code == 404
    invite.refresh_from_db()
    assert invite.revoked_at is None
    assert Membership.objects.get(pk=acme_member.pk).role == "member"


# --- Members and roles -----------------------------------------------------------------------

def test_the_members_page_lists_members_with_roles():
    acme = Tenant.objects.create(name="acme")
    owner, _ = member("owner@example.com", acme, "owner")
    member("m@example.com", acme, "member")
    page = owner.get(reverse("portal:members"))
    assert page.status_code == 200
    body = page.content.decode()
    assert "owner@example.com" in body and "m@example.com" in body
    assert 'href="/portal/members/"' in body and 'aria-current="page"' in body
    assert "No pending invitations." in body


def test_roles_change_in_place_with_htmx():
    acme = Tenant.objects.create(name="acme")
    owner, _ = member("owner@example.com", acme, "owner")
    _m, target = member("m@example.com", acme, "member")
    resp = owner.post(reverse("portal:member_role", args=[target.pk]), {"role": "admin"},
                      HTTP_HX_REQUEST="true")
    assert resp.status_code == 200
    assert resp.content.decode().lstrip().startswith(f'<tr id="member-{target.pk}"')
    target.refresh_from_db()
    assert target.role == "admin"


def test_an_admin_cannot_remove_or_demote_an_owner_nor_make_one():
    acme = Tenant.objects.create(name="acme")
    _o, owner = member("owner@example.com", acme, "owner")
    admin, _ = member("a@example.com", acme, "admin")
    _m, plain = member("m@example.com", acme, "member")
    assert admin.post(reverse("portal:member_remove", args=[owner.pk])).status_code == 403
    assert admin.post(reverse("portal:member_role", args=[owner.pk]),
                      {"role": "member"}).status_code == 403
    assert admin.post(reverse("portal:member_role", args=[plain.pk]),
                      {"role": "owner"}).status_code == 403
    owner.refresh_from_db()
    plain.refresh_from_db()
    assert owner.role == "owner" and plain.role == "member"
    # An admin does remove a member.
    assert admin.post(reverse("portal:member_remove", args=[plain.pk])).status_code == 302
    assert not Membership.objects.filter(pk=plain.pk).exists()


def test_a_member_cannot_change_roles_or_remove_anyone():
    acme = Tenant.objects.create(name="acme")
    _o, owner = member("owner@example.com", acme, "owner")
    plain, _ = member("m@example.com", acme, "member")
    assert plain.post(reverse("portal:member_remove", args=[owner.pk])).status_code == 403
    assert plain.post(reverse("portal:member_role", args=[owner.pk]),
                      {"role": "member"}).status_code == 403


def test_the_last_owner_can_neither_leave_nor_be_demoted():
    acme = Tenant.objects.create(name="acme")
    client, owner = member("owner@example.com", acme, "owner")
    resp = client.post(reverse("portal:member_leave"), follow=True)
    assert b"last owner" in resp.content
    assert Membership.objects.filter(pk=owner.pk).exists()
    with pytest.raises(rules.MembershipError, match="last owner"):
        rules.member_set_role(membership=owner, role="admin")
    with pytest.raises(rules.MembershipError, match="last owner"):
        rules.member_remove(membership=owner)
    # With a second owner, the first may leave.
    _c, second = member("two@example.com", acme, "member")
    rules.member_set_role(membership=second, role="owner", actor=owner)
    resp = client.post(reverse("portal:member_leave"))
    assert resp.status_code == 302 and resp["Location"] == reverse("portal:welcome")
    assert not Membership.objects.filter(pk=owner.pk).exists()


def test_any_member_can_leave():
    acme = Tenant.objects.create(name="acme")
    member("owner@example.com", acme, "owner")
    client, plain = member("m@example.com", acme, "member")
    assert client.post(reverse("portal:member_leave")).status_code == 302
    assert not Membership.objects.filter(pk=plain.pk).exists()
    assert client.get(reverse("portal:members")).status_code == 404


# --- Tenant settings -------------------------------------------------------------------------

def test_the_settings_page_is_for_owners_only():
    acme = Tenant.objects.create(name="acme")
    owner, _ = member("owner@example.com", acme, "owner")
    admin, _ = member("a@example.com", acme, "admin")
    plain, _ = member("m@example.com", acme, "member")
    assert admin.get(reverse("portal:settings")).status_code == 403
    assert plain.get(reverse("portal:settings")).status_code == 403
    assert admin.post(reverse("portal:settings"), {"members_can_create_keys": "on"}
                      ).status_code == 403
    assert b'href="/portal/settings/"' not in admin.get(reverse("portal:members")).content
    page = owner.get(reverse("portal:settings"))
    assert page.status_code == 200 and b'for="id_low_balance_threshold"' in page.content
    resp = owner.post(reverse("portal:settings"), {"members_can_create_keys": "on",
                                                   "low_balance_threshold": "12.5"})
    assert resp.status_code == 302
    acme.refresh_from_db()
    assert acme.members_can_create_keys and acme.low_balance_threshold == Decimal("12.5")
    bad = owner.post(reverse("portal:settings"), {"low_balance_threshold": "-1"})
    assert bad.status_code == 200
    acme.refresh_from_db()
    assert acme.low_balance_threshold == Decimal("12.5")


def test_the_settings_page_changes_only_the_current_tenant():
    acme, beta = Tenant.objects.create(name="acme"), Tenant.objects.create(name="beta")
    owner, _ = member("owner@example.com", acme, "owner")
    owner.post(reverse("portal:settings"), {"members_can_create_keys": "on"})
    beta.refresh_from_db()
    assert not beta.members_can_create_keys


# --- Pages render in both languages ----------------------------------------------------------

@pytest.mark.parametrize("lang", ["en", "zh-hans"])
def test_account_and_member_pages_render_in_both_languages(lang: str):
    acme = Tenant.objects.create(name="acme")
    owner, _ = member("owner@example.com", acme, "owner")
    owner.cookies["django_language"] = lang
    for name in ("portal:members", "portal:settings", "account_email",
                 "account_change_password", "mfa_index"):
        page = owner.get(reverse(name))
        assert page.status_code == 200, (name, page.status_code)
        assert f'lang="{lang}"'.encode() in page.content
    anon = Client()
    anon.cookies["django_language"] = lang
    for name in ("account_login", "account_reset_password", "account_signup"):
        assert anon.get(reverse(name)).status_code == 200
    if lang == "zh-hans":  # allauth's own catalogue
        assert "登录".encode() in anon.get(reverse("account_login")).content


def test_an_invitation_does_not_let_another_logged_in_user_join():
    acme = Tenant.objects.create(name="acme")
    invite = Invitation.objects.create(tenant=acme, email="bob@example.com", role="owner")
    make_user("eve@example.com")
    eve = Client()
    login(eve, "eve@example.com")
    page = eve.get(invitations.link_for(None, invite))
    assert page.status_code == 403 and b"bob@example.com" in page.content
    assert not Membership.objects.filter(tenant=acme).exists()
    # Nor by logging in afterwards with the link in the session.
    eve.post(reverse("account_logout"))
    eve.get(invitations.link_for(None, invite))
    login(eve, "eve@example.com")
    assert not Membership.objects.filter(tenant=acme).exists()
    invite.refresh_from_db()
    assert invite.accepted_at is None


def test_an_htmx_role_change_that_breaks_a_rule_answers_with_the_row_and_the_reason():
    acme = Tenant.objects.create(name="acme")
    owner, me = member("owner@example.com", acme, "owner")
    resp = owner.post(reverse("portal:member_role", args=[me.pk]), {"role": "member"},
                      HTTP_HX_REQUEST="true")
    assert resp.status_code == 200
    assert b'role="alert"' in resp.content and b"last owner" in resp.content
    me.refresh_from_db()
    assert me.role == "owner"
    # Without htmx: back to the page with the reason as a message.
    resp = owner.post(reverse("portal:member_role", args=[me.pk]), {"role": "member"},
                      follow=True)
    assert b"last owner" in resp.content


def test_the_invitation_email_names_the_tenant_the_inviter_and_the_role():
    acme = Tenant.objects.create(name="acme")
    owner, _ = member("owner@example.com", acme, "owner")
    mail.outbox.clear()
    owner.post(reverse("portal:member_invite"), {"email": "x@example.com", "role": "member"})
    assert "You are invited to join acme" in mail.outbox[0].subject
    assert "owner@example.com invited you to join acme on Turnpike as Member" in (
        mail.outbox[0].body)
