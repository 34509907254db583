"""The portal's Keys pages: list, create (secret once), detail, edit, disable/enable, rotate,
delete; group limits in the form; roles; other tenants' keys are 404; changes reach /v1."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from billing.models import UsageLog, UsageRollup
from billing.rollups import local_today
from gateway.services import upstream_create
from keys.models import ApiKey, Group, Membership, Status, Tenant
from keys.secrets import hash_secret
from keys.services import key_create

pytestmark = pytest.mark.django_db

SECRET_RE = re.compile(rb'id="new-secret" class="secret">(sk-tp-[A-Za-z0-9]+)<')


def member(email: str, tenant: Tenant, role: str = "member") -> Client:
    user = get_user_model().objects.create_user(username=email, email=email, password="pw-12345!")
    Membership.objects.create(tenant=tenant, user=user, role=role)
    client = Client()
    client.force_login(user)
    return client


def user(email: str):  # noqa: ANN201
    return get_user_model().objects.get(email=email)


@pytest.fixture
def standard() -> Group:
    return Group.objects.create(name="standard", rpm=60, rpd=1000, concurrency=4,
                                max_tokens=4096, allowed_models=["gpt-5*", "gpt-4o-mini"])


@pytest.fixture
def premium() -> Group:
    return Group.objects.create(name="premium", dedicated_upstreams=True)


@pytest.fixture
def acme(standard: Group) -> Tenant:
    return Tenant.objects.create(name="acme", group=standard)


@pytest.fixture
def routes(premium: Group) -> None:
    """Two upstreams: one open to every group, one dedicated to premium."""
    upstream_create(name="shared", kind="openai", base_url="http://127.0.0.1:9/v1",
                    models=["gpt-5", "gpt-5-codex", "gpt-4o-mini", "o3"], api_keys=["sk-x1"])
    upstream_create(name="vip", kind="openai", base_url="http://127.0.0.1:9/v1",
                    models=["gpt-5-pro"], api_keys=["sk-x2"], groups=["premium"])


@pytest.fixture
def owner(acme: Tenant) -> Client:
    return member("owner@example.com", acme, "owner")


def key_of(tenant: Tenant, **kwargs) -> ApiKey:  # noqa: ANN003
    kwargs.setdefault("name", "k")
    return key_create(tenant=tenant, **kwargs).key


FORM = {"name": "laptop", "group": "", "expiry": "never", "rpm": "", "rpd": "", "tpm": "",
        "concurrency": "", "max_tokens": "", "quota": "", "allowed_ips": "", "expires_at": ""}


# --- list ------------------------------------------------------------------------------

def test_the_list_shows_each_keys_status_prefix_figures_and_quota(owner, acme):
    live = key_of(acme, name="live", quota=Decimal("10"))
    ApiKey.objects.filter(pk=live.pk).update(quota_used=Decimal("2.5"))
    off = key_of(acme, name="off")
    off.status = Status.DISABLED
    off.save()
    now = timezone.now()
    for i in range(3):
        UsageLog.objects.create(created_at=now, request_id=f"r{i}", key=live, tenant=acme,
                                endpoint="responses", model="gpt-5", status_code=200,
                                cost=Decimal("0.5"))
    today = local_today()
    if today.day > 1:  # an earlier day of this month, rolled up
        UsageRollup.objects.create(date=today.replace(day=1), tenant=acme, key=live,
                                   model="gpt-5", requests=7, cost=Decimal("3"))
    page = owner.get("/portal/keys/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'href="/portal/keys/"' in html and "Keys</a>" in html  # the nav link
    assert live.masked in html and off.masked in html
    assert "badge ok" in html and "badge bad" in html
    assert "1.5000" in html and "3 requests" in html  # today
    month = ("4.5000", "10 requests") if today.day > 1 else ("1.5000", "3 requests")
    assert month[0] in html and month[1] in html
    assert '<meter class="quota"' in html and 'value="0.25"' in html
    assert "style=" not in html.split("<main")[1]


def test_the_list_is_paginated_and_its_queries_do_not_grow_with_the_keys(
        owner, acme, django_assert_max_num_queries):
    for i in range(60):
        key_of(acme, name=f"key {i:02}")
    # Today's figures: the partial hour's extent before and after, the hourly watermark,
    # the raw tail (and the hourly rollups when there are any): a fixed number, not per key.
    with django_assert_max_num_queries(12):
        first = owner.get("/portal/keys/")
    assert first.content.count(b'<th scope="row">') == 50
    second = owner.get("/portal/keys/?page=2")
    assert second.content.count(b'<th scope="row">') == 10
    assert b"Page 2 of 2" in second.content
    found = owner.get("/portal/keys/?q=key+07")
    assert found.content.count(b'<th scope="row">') == 1
    one = ApiKey.objects.get(name="key 33")
    pasted = owner.get("/portal/keys/", {"q": one.masked})
    assert one.masked.encode() in pasted.content


def test_an_empty_tenant_gets_a_helpful_empty_state(owner):
    page = owner.get("/portal/keys/")
    assert b"no keys yet" in page.content and b"Create your first key" in page.content


# --- create, secret once ---------------------------------------------------------------

def test_creating_a_key_shows_its_secret_once_with_snippets(owner, acme, routes):
    resp = owner.post("/portal/keys/new/", {**FORM, "allowed_models": ["gpt-5", "gpt-5-codex"],
                                            "rpm": "30", "expiry": "30",
                                            "allowed_ips": "10.0.0.0/8\n203.0.113.7"})
    assert resp.status_code == 200, resp.content[:3000]
    assert "no-store" in resp["Cache-Control"]
    secret = SECRET_RE.search(resp.content).group(1).decode()
    key = ApiKey.objects.get(secret_hash=hash_secret(secret))
    assert key.tenant == acme and key.created_by == user("owner@example.com")
    assert key.allowed_models == ["gpt-5", "gpt-5-codex"] and key.rpm == 30
    assert key.allowed_ips == ["10.0.0.0/8", "203.0.113.7"]
    assert abs(key.expires_at - (timezone.now() + timedelta(days=30))) < timedelta(minutes=1)
    html = resp.content.decode()
    assert 'data-copy="#new-secret"' in html
    assert "http://testserver/v1/responses" in html and "/chat/completions" in html
    assert 'wire_api = "responses"' in html and 'env_key = "TURNPIKE_KEY"' in html
    assert 'model = "gpt-5-codex"' in html and "OpenAI(base_url=" in html
    assert f"/portal/quickstart/?key={key.pk}" in html
    assert secret not in resp.get("Location", "") and secret not in str(resp.cookies)
    # Never again: not on the detail page, the list, or in the session.
    for path in (f"/portal/keys/{key.pk}/", "/portal/keys/"):
        again = owner.get(path)
        assert again.status_code == 200 and secret.encode() not in again.content
    assert secret not in str(dict(owner.session))


def test_the_form_limits_each_setting_to_what_the_group_allows(owner, acme, routes):
    bad = owner.post("/portal/keys/new/", {
        **FORM, "rpm": "61", "rpd": "0", "concurrency": "4", "max_tokens": "5000",
        "allowed_models": ["o3"], "allowed_ips": "10.0.0.0/33\nnot-an-ip",
        "expiry": "custom", "expires_at": "2001-01-01T00:00"})
    assert bad.status_code == 200 and not ApiKey.objects.exists()
    errors = bad.context["form"].errors
    assert "cannot be more than 60" in errors["rpm"][0]
    assert "cannot be unlimited" in errors["rpd"][0]
    assert "concurrency" not in errors  # equal to the group's cap is fine
    assert "4096" in errors["max_tokens"][0]
    assert "o3" in errors["allowed_models"][0]  # outside standard's allow-list: no choice
    assert "10.0.0.0/33" in errors["allowed_ips"][0] and "not-an-ip" in errors["allowed_ips"][0]
    assert "future" in errors["expires_at"][0]
    assert b"cannot be more than 60" in bad.content
    # Only what the tenant's groups can call is offered: not o3 (outside standard's
    # allow-list), not gpt-5-pro (served only to the premium group's dedicated upstream).
    assert set(dict(bad.context["form"].fields["allowed_models"].choices)) == {
        "gpt-5", "gpt-5-codex", "gpt-4o-mini"}


def test_the_group_choice_is_the_tenants_own_and_those_its_keys_use(owner, acme, premium,
                                                                    routes):
    other = Group.objects.create(name="other")
    form = owner.get("/portal/keys/new/").context["form"]
    # The tenant's own group is the default (empty) choice; nothing else yet.
    assert [c[0] for c in form.fields["group"].choices] == [""]
    assert "standard" in str(form.fields["group"].choices[0][1])
    resp = owner.post("/portal/keys/new/", {**FORM, "group": str(other.pk)})
    assert resp.status_code == 200 and "group" in resp.context["form"].errors
    key_of(acme, name="vip", group=premium)  # an operator gave a key the premium group
    form = owner.get("/portal/keys/new/").context["form"]
    assert str(premium.pk) in [c[0] for c in form.fields["group"].choices]
    # gpt-5-pro is offered now (premium's), but only a premium key may pick it.
    wrong = owner.post("/portal/keys/new/", {**FORM, "allowed_models": ["gpt-5-pro"]})
    assert "cannot call gpt-5-pro" in wrong.context["form"].errors["allowed_models"][0]
    # Premium has no limits and its dedicated upstream: rpm 0 and gpt-5-pro are fine there.
    made = owner.post("/portal/keys/new/", {**FORM, "group": str(premium.pk), "rpm": "0",
                                            "allowed_models": ["gpt-5-pro"]})
    assert made.status_code == 200 and SECRET_RE.search(made.content)
    assert ApiKey.objects.get(name="laptop").allowed_models == ["gpt-5-pro"]


# --- edit, status, rotate, delete -------------------------------------------------------

def test_edit_changes_settings_through_the_service(owner, acme, routes, monkeypatch,
                                                   django_capture_on_commit_callbacks):
    key = key_of(acme, name="ci", rpm=10)
    page = owner.get(f"/portal/keys/{key.pk}/edit/")
    assert page.status_code == 200 and b'value="ci"' in page.content
    over = owner.post(f"/portal/keys/{key.pk}/edit/", {**FORM, "name": "ci", "rpm": "100"})
    assert over.status_code == 200 and "rpm" in over.context["form"].errors
    evicted = []
    monkeypatch.setattr("keys.snapshots.key_snapshots.invalidate", evicted.extend)
    with django_capture_on_commit_callbacks(execute=True):
        resp = owner.post(f"/portal/keys/{key.pk}/edit/", {
            **FORM, "name": "ci runner", "rpm": "20", "denied_models": ["gpt-4o-mini"],
            "quota": "5"})
    assert resp.status_code == 302 and resp["Location"] == f"/portal/keys/{key.pk}/"
    key.refresh_from_db()
    assert (key.name, key.rpm, key.denied_models, key.quota) == (
        "ci runner", 20, ["gpt-4o-mini"], Decimal("5"))
    assert key.secret_hash in evicted
    assert key.expires_at is None


def test_edit_keeps_an_existing_expiry_unless_changed(owner, acme, routes):
    when = timezone.now() + timedelta(days=3)
    key = key_of(acme, expires_at=when)
    resp = owner.post(f"/portal/keys/{key.pk}/edit/", {**FORM, "name": "k", "expiry": "keep"})
    assert resp.status_code == 302
    key.refresh_from_db()
    assert key.expires_at == when


def test_disable_and_enable(owner, acme):
    key = key_of(acme)
    assert owner.post(f"/portal/keys/{key.pk}/disable/").status_code == 302
    key.refresh_from_db()
    assert key.status == Status.DISABLED
    assert b"badge bad" in owner.get(f"/portal/keys/{key.pk}/").content
    owner.post(f"/portal/keys/{key.pk}/enable/", {"next": "list"})
    key.refresh_from_db()
    assert key.status == Status.ACTIVE
    assert owner.get(f"/portal/keys/{key.pk}/disable/").status_code == 405


def test_rotation_with_a_grace_period_keeps_the_old_key_until_then(owner, acme, routes):
    old = key_of(acme, name="prod", rpm=30, models=["gpt-5"], quota=Decimal("9"),
                 allowed_ips=["10.0.0.0/8"])
    assert b"After 24 hours" in owner.get(f"/portal/keys/{old.pk}/rotate/").content
    resp = owner.post(f"/portal/keys/{old.pk}/rotate/", {"grace": "86400"})
    assert resp.status_code == 200 and "no-store" in resp["Cache-Control"]
    secret = SECRET_RE.search(resp.content).group(1).decode()
    new = ApiKey.objects.get(secret_hash=hash_secret(secret))
    old.refresh_from_db()
    assert new.rotated_from == old and new.pk != old.pk
    assert (new.name, new.rpm, new.quota, new.allowed_ips, new.allowed_models) == (
        "prod", 30, Decimal("9"), ["10.0.0.0/8"], ["gpt-5"])
    assert abs(old.expires_at - (timezone.now() + timedelta(hours=24))) < timedelta(minutes=1)
    assert not old.is_expired and old.status == Status.ACTIVE  # still valid during grace
    assert b"keeps working until" in resp.content
    detail = owner.get(f"/portal/keys/{new.pk}/")
    assert old.masked.encode() in detail.content and secret.encode() not in detail.content
    before = owner.get(f"/portal/keys/{old.pk}/").content.decode()
    assert new.masked in before and "this key works until" in before


def test_rotation_at_once_expires_the_old_key_now(owner, acme, routes):
    old = key_of(acme)
    resp = owner.post(f"/portal/keys/{old.pk}/rotate/", {"grace": "0"})
    assert resp.status_code == 200 and b"no longer works" in resp.content
    old.refresh_from_db()
    assert old.is_expired
    assert owner.post(f"/portal/keys/{old.pk}/rotate/", {"grace": "42"}).status_code == 200
    assert ApiKey.objects.count() == 2  # an unknown grace period is refused, not guessed


def test_delete_asks_first(owner, acme):
    key = key_of(acme, name="gone")
    page = owner.get(f"/portal/keys/{key.pk}/delete/")
    assert page.status_code == 200 and b"cannot be undone" in page.content
    assert ApiKey.objects.filter(pk=key.pk).exists()
    resp = owner.post(f"/portal/keys/{key.pk}/delete/")
    assert resp.status_code == 302 and not ApiKey.objects.filter(pk=key.pk).exists()


def test_the_detail_page_shows_settings_and_the_usage_section(owner, acme):
    key = key_of(acme, name="detail", rpm=None)
    html = owner.get(f"/portal/keys/{key.pk}/").content.decode()
    assert key.masked in html and "60" in html and "the group" in html  # inherited rpm
    # The key's usage panel (the dashboard's per-key charts), empty for an unused key.
    assert 'id="key-usage-title"' in html and "has made no requests in the last 30 days" in html
    assert "Edit" in html and "Rotate" in html


# --- roles ----------------------------------------------------------------------------

def test_members_see_keys_read_only_unless_the_tenant_allows_them(acme, routes):
    key = key_of(acme, name="shared")
    viewer = member("m@example.com", acme)
    listing = viewer.get("/portal/keys/")
    assert listing.status_code == 200 and key.masked.encode() in listing.content
    assert b"/portal/keys/new/" not in listing.content
    detail = viewer.get(f"/portal/keys/{key.pk}/")
    assert detail.status_code == 200 and b"/edit/" not in detail.content
    assert b"/rotate/" not in detail.content
    assert viewer.get("/portal/keys/new/").status_code == 403
    assert viewer.post("/portal/keys/new/", FORM).status_code == 403
    for action in ("edit", "disable", "enable", "rotate", "delete"):
        assert viewer.post(f"/portal/keys/{key.pk}/{action}/", {**FORM, "grace": "0"}
                           ).status_code == 403, action
    for action in ("edit", "rotate", "delete"):
        assert viewer.get(f"/portal/keys/{key.pk}/{action}/").status_code == 403, action
    key.refresh_from_db()
    assert key.status == Status.ACTIVE and ApiKey.objects.count() == 1


def test_members_allowed_to_create_keys_change_only_their_own(acme, routes):
    acme.members_can_create_keys = True
    acme.save()
    others = key_of(acme, name="admin's")
    viewer = member("m@example.com", acme)
    resp = viewer.post("/portal/keys/new/", {**FORM, "name": "mine"})
    assert resp.status_code == 200 and SECRET_RE.search(resp.content)
    mine = ApiKey.objects.get(name="mine")
    assert mine.created_by == user("m@example.com")
    assert viewer.post(f"/portal/keys/{mine.pk}/disable/").status_code == 302
    assert viewer.post(f"/portal/keys/{others.pk}/disable/").status_code == 403
    assert viewer.get(f"/portal/keys/{others.pk}/edit/").status_code == 403
    rotated = viewer.post(f"/portal/keys/{mine.pk}/rotate/", {"grace": "3600"})
    new = ApiKey.objects.get(secret_hash=hash_secret(
        SECRET_RE.search(rotated.content).group(1).decode()))
    assert new.created_by == user("m@example.com")  # still theirs to change
    admin = member("a@example.com", acme, "admin")
    assert admin.post(f"/portal/keys/{mine.pk}/disable/").status_code == 302


# --- other tenants ----------------------------------------------------------------------

def test_another_tenants_keys_are_404_everywhere(acme, routes):
    key = key_of(acme, name="acme secret key")
    beta = Tenant.objects.create(name="beta")
    intruder = member("b@example.com", beta, "owner")
    listing = intruder.get("/portal/keys/")
    assert key.masked.encode() not in listing.content and b"acme secret key" not in listing.content
    assert intruder.get(f"/portal/keys/?q={key.prefix}").content.count(b'<th scope="row">') == 0
    for path in ("", "edit/", "rotate/", "delete/"):
        assert intruder.get(f"/portal/keys/{key.pk}/{path}").status_code == 404, path
    for path in ("edit/", "disable/", "enable/", "rotate/", "delete/"):
        assert intruder.post(f"/portal/keys/{key.pk}/{path}", {**FORM, "grace": "0"}
                             ).status_code == 404, path
    key.refresh_from_db()
    assert key.status == Status.ACTIVE and key.expires_at is None and key.name == "acme secret key"
    assert ApiKey.objects.count() == 1
    # A key can't be moved onto another tenant's group either.
    Group.objects.create(name="beta-only")
    beta.group = Group.objects.get(name="beta-only")
    beta.save()
    form = member("o@example.com", acme, "owner").get("/portal/keys/new/").context["form"]
    assert str(beta.group_id) not in [c[0] for c in form.fields["group"].choices]


def test_the_urls_have_names():
    assert reverse("portal:key_detail", args=[1]) == "/portal/keys/1/"
    assert reverse("portal:key_rotate", args=[1]) == "/portal/keys/1/rotate/"


# --- end to end: the change reaches /v1 ---------------------------------------------------

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _status_within(url: str, secret: str, want: int, seconds: float = 2.0) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while True:
        resp = httpx.post(url, json=CHAT, headers={"Authorization": f"Bearer {secret}"})
        if resp.status_code == want or time.monotonic() > deadline:
            return resp
        time.sleep(0.05)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_portal_changes_reach_v1_within_the_snapshot_ttl(gateway, upstream, tenant):
    browser = member("owner@example.com", tenant, "owner")
    made = key_create(tenant=tenant, name="e2e", created_by=user("owner@example.com"))
    url = gateway.base_url + "/chat/completions"
    assert _status_within(url, made.secret, 200).status_code == 200

    assert browser.post(f"/portal/keys/{made.key.pk}/disable/").status_code == 302
    resp = _status_within(url, made.secret, 403)
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "api_key_disabled"
    assert browser.post(f"/portal/keys/{made.key.pk}/enable/").status_code == 302
    assert _status_within(url, made.secret, 200).status_code == 200

    rotated = browser.post(f"/portal/keys/{made.key.pk}/rotate/", {"grace": "0"})
    new_secret = SECRET_RE.search(rotated.content).group(1).decode()
    old = _status_within(url, made.secret, 401)
    assert old.status_code == 401 and old.json()["error"]["code"] == "api_key_expired"
    assert _status_within(url, new_secret, 200).status_code == 200
