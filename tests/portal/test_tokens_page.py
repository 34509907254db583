"""The portal's access-token page (/portal/tokens/): create (secret shown once, only its
hash kept), list, revoke; bound to one of the user's tenants or not; another user's token
is a 404. A token made here works on the tenant API and stops when revoked."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from keys.models import AccessToken, Membership, Tenant
from keys.secrets import hash_secret
from keys.tokens import token_create

pytestmark = pytest.mark.django_db

SECRET_RE = re.compile(r'id="new-secret" class="secret">(tp_pat_[A-Za-z0-9]+)<')


def login(email: str, tenant: Tenant, *, staff: bool = False) -> tuple[Client, object]:
    user = get_user_model().objects.create_user(username=email, email=email,
                                                password="pw-12345!", is_staff=staff)
    Membership.objects.create(tenant=tenant, user=user, role="owner")
    client = Client()
    client.force_login(user)
    return client, user


@pytest.fixture
def acme() -> Tenant:
    return Tenant.objects.create(name="acme")


def test_create_shows_the_secret_once_and_the_token_works(acme):
    client, user = login("ann@example.com", acme)
    page = client.get(reverse("portal:tokens"))
    assert page.status_code == 200 and b"You have no access tokens yet" in page.content
    assert b'href="/portal/tokens/" aria-current="page"' in page.content  # in the nav
    made = client.post(reverse("portal:tokens"), {"name": "deploy", "scope": "write",
                                                  "expiry": "30", "tenant": str(acme.pk)})
    assert made.status_code == 200
    assert "no-store" in made["Cache-Control"]
    secret = SECRET_RE.search(made.content.decode()).group(1)
    token = AccessToken.objects.get(user=user)
    assert token.secret_hash == hash_secret(secret) and token.scope == "write"
    assert token.tenant == acme and token.expires_at is not None and not token.staff
    again = client.get(reverse("portal:tokens")).content.decode()
    assert secret not in again and token.masked in again
    me = Client().get("/api/v1/me", headers={"Authorization": f"Bearer {secret}"})
    assert me.status_code == 200 and me.json()["tenant"]["name"] == "acme"


def test_revoke_stops_the_token_and_other_users_tokens_are_404(acme):
    client, user = login("ann@example.com", acme)
    _, bob = login("bob@example.com", Tenant.objects.create(name="globex"))
    mine = token_create(user=user, name="mine")
    theirs = token_create(user=bob, name="theirs")
    assert client.post(reverse("portal:token_revoke", args=[theirs.token.pk])).status_code \
        == 404
    assert client.get(reverse("portal:token_revoke", args=[mine.token.pk])).status_code == 405
    response = client.post(reverse("portal:token_revoke", args=[mine.token.pk]), follow=True)
    assert b"revoked" in response.content
    assert AccessToken.objects.get(pk=mine.token.pk).revoked_at is not None
    assert AccessToken.objects.get(pk=theirs.token.pk).revoked_at is None
    refused = Client().get("/api/v1/me", headers={"Authorization": f"Bearer {mine.secret}"})
    assert refused.status_code == 401
    assert b"theirs" not in client.get(reverse("portal:tokens")).content


def test_a_token_binds_only_to_the_users_own_tenants_and_staff_only_for_staff(acme):
    client, user = login("ann@example.com", acme)
    other = Tenant.objects.create(name="globex")
    page = client.post(reverse("portal:tokens"), {"name": "x", "scope": "read",
                                                  "expiry": "never", "tenant": str(other.pk)})
    assert b"Select a valid choice" in page.content
    assert not AccessToken.objects.exists()
    client.post(reverse("portal:tokens"), {"name": "x", "scope": "read", "expiry": "never",
                                           "staff": "on"})
    token = AccessToken.objects.get()
    assert token.staff is False and token.expires_at is None and token.tenant is None
    assert b'name="staff"' not in client.get(reverse("portal:tokens")).content
    staff_client, _ = login("ops@example.com", acme, staff=True)
    assert b'name="staff"' in staff_client.get(reverse("portal:tokens")).content
    staff_client.post(reverse("portal:tokens"), {"name": "ops", "scope": "write",
                                                 "expiry": "7", "staff": "on"})
    assert AccessToken.objects.get(name="ops").staff is True


def test_the_page_needs_a_login(acme):
    response = Client().get(reverse("portal:tokens"))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
