"""``manage.py user create``, ``manage.py member add|remove|list`` and the demo's portal
login, run in-process with ``call_command``."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from allauth.account.models import EmailAddress
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client, override_settings
from django.urls import reverse

from keys.models import Membership, Tenant

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _private_cache() -> Iterator[None]:
    with override_settings(CACHES={"default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": f"accounts-cli-{uuid.uuid4()}"}}):
        yield


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def run_json(*args: str) -> Any:
    return json.loads(run(*args, "--json"))


def can_log_in(email: str, password: str) -> bool:
    client = Client()
    client.post(reverse("account_login"), {"login": email, "password": password})
    return "_auth_user_id" in client.session


# --- user create -----------------------------------------------------------------------------

def test_user_create_makes_a_user_who_logs_in_at_once():
    data = run_json("user", "create", "--email", "Ann@Example.com", "--password", "pw-1")
    assert data["email"] == "ann@example.com" and data["tenant"] is None
    assert data["staff"] is False
    assert EmailAddress.objects.get(email="ann@example.com").verified
    with override_settings(ACCOUNT_EMAIL_VERIFICATION="mandatory"):
        assert can_log_in("ANN@example.com", "pw-1")


def test_user_create_with_a_new_tenant_and_a_role_and_staff():
    data = run_json("user", "create", "--email", "o@example.com", "--password", "pw",
                    "--tenant", "acme", "--role", "owner", "--staff")
    assert data["tenant"] == "acme" and data["role"] == "owner" and data["staff"] is True
    assert Membership.objects.get(tenant__name="acme", user__email="o@example.com"
                                  ).role == "owner"
    out = run("user", "create", "--email", "m@example.com", "--password", "pw",
              "--tenant", "acme")
    assert "member of acme" in out
    assert Tenant.objects.filter(name="acme").count() == 1


@pytest.mark.parametrize("args, message", [
    (["--email", "not-an-email", "--password", "pw"], "not a valid email"),
    (["--email", "a@example.com", "--password", ""], "password"),
    (["--email", "a@example.com", "--password", "pw", "--role", "owner"], "--role needs"),
])
def test_user_create_refuses_bad_input(args: list[str], message: str):
    with pytest.raises(CommandError, match=message):
        run("user", "create", *args)
    assert not get_user_model().objects.exists()


def test_user_create_refuses_an_existing_email_and_a_bad_role():
    run("user", "create", "--email", "a@example.com", "--password", "pw")
    with pytest.raises(CommandError, match="already exists"):
        run("user", "create", "--email", "A@example.com", "--password", "pw")
    with pytest.raises(CommandError):  # argparse: invalid choice
        run("user", "create", "--email", "b@example.com", "--password", "pw",
            "--tenant", "t", "--role", "boss")


# --- member add / remove / list --------------------------------------------------------------

def test_member_add_list_and_remove():
    run("user", "create", "--email", "o@example.com", "--password", "pw", "--tenant", "acme",
        "--role", "owner")
    run("user", "create", "--email", "a@example.com", "--password", "pw")
    added = run_json("member", "add", "--tenant", "acme", "--email", "a@example.com",
                     "--role", "admin")
    assert added["created"] is True and added["role"] == "admin"
    changed = run_json("member", "add", "--tenant", "acme", "--email", "a@example.com",
                       "--role", "member")
    assert changed["created"] is False and changed["role"] == "member"
    rows = run_json("member", "list", "--tenant", "acme")
    assert [(r["email"], r["role"]) for r in rows] == [("a@example.com", "member"),
                                                         ("o@example.com", "owner")]
    assert "a@example.com" in run("member", "list")
    removed = run_json("member", "remove", "--tenant", "acme", "--email", "a@example.com")
    assert removed["removed"] is True
    assert [r["email"] for r in run_json("member", "list")] == ["o@example.com"]


def test_member_commands_enforce_the_last_owner_rule():
    run("user", "create", "--email", "o@example.com", "--password", "pw", "--tenant", "acme",
        "--role", "owner")
    with pytest.raises(CommandError, match="last owner"):
        run("member", "remove", "--tenant", "acme", "--email", "o@example.com")
    with pytest.raises(CommandError, match="last owner"):
        run("member", "add", "--tenant", "acme", "--email", "o@example.com", "--role", "admin")
    assert Membership.objects.get(user__email="o@example.com").role == "owner"
    # With a second owner the first can go.
    run("user", "create", "--email", "p@example.com", "--password", "pw")
    run("member", "add", "--tenant", "acme", "--email", "p@example.com", "--role", "owner")
    run("member", "remove", "--tenant", "acme", "--email", "o@example.com")
    assert list(Membership.objects.values_list("user__email", "role")) == [
        ("p@example.com", "owner")]


@pytest.mark.parametrize("args, message", [
    (["add", "--tenant", "nope", "--email", "a@example.com"], "No tenant named 'nope'"),
    (["add", "--tenant", "acme", "--email", "ghost@example.com"], "No user with the email"),
    (["remove", "--tenant", "acme", "--email", "a@example.com"], "not a member"),
    (["list", "--tenant", "nope"], "No tenant named"),
])
def test_member_commands_refuse_bad_input(args: list[str], message: str):
    Tenant.objects.create(name="acme")
    run("user", "create", "--email", "a@example.com", "--password", "pw")
    with pytest.raises(CommandError, match=message):
        run("member", *args)


def test_bad_input_exits_non_zero_from_the_command_line():
    from django.core.management import ManagementUtility

    utility = ManagementUtility(["manage.py", "member", "add", "--tenant", "nope",
                                 "--email", "x@example.com"])
    with pytest.raises(SystemExit) as exited:
        utility.execute()
    assert exited.value.code == 1


# --- the demo --------------------------------------------------------------------------------

def test_the_demo_user_logs_in_to_the_portal_and_the_admin():
    out = run("demo")
    assert "log in as demo@example.com" in out and "http://127.0.0.1:8000/" in out
    with override_settings(ACCOUNT_EMAIL_VERIFICATION="mandatory"):
        client = Client()
        resp = client.post(reverse("account_login"), {"login": "demo@example.com",
                                                      "password": "demo"})
        assert resp.status_code == 302 and resp["Location"] == "/portal/"
        page = client.get("/portal/")
        assert page.status_code == 200 and b"demo" in page.content
    admin = Client()
    admin.post("/admin/login/", {"username": "demo", "password": "demo",
                                 "next": "/admin/"})
    assert admin.get("/admin/").status_code == 200
    run("demo")  # again: still one verified address, still owner
    assert EmailAddress.objects.filter(email="demo@example.com", verified=True).count() == 1
    assert Membership.objects.get(tenant__name="demo", user__username="demo").role == "owner"
