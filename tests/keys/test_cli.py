"""The ``key``, ``upstream`` and ``demo`` management commands, run in-process with
``call_command`` (a subprocess would not see the test database)."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from gateway.models import Credential, Upstream
from keys.models import ApiKey, Group, Membership, Tenant
from keys.secrets import KEY_PREFIX, hash_secret
from keys.services import tenant_get_or_create


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


# --- key create -------------------------------------------------------------------------

@pytest.mark.django_db
def test_key_create_makes_a_new_tenant_and_prints_the_secret_alone_on_the_last_line() -> None:
    assert not Tenant.objects.filter(name="newco").exists()
    output = run("key", "create", "--tenant", "newco", "--name", "ci")

    secret = lines(output)[-1]
    assert secret == secret.strip()
    assert secret.startswith(KEY_PREFIX)
    assert len(secret) == len(KEY_PREFIX) + 43
    key = ApiKey.objects.get()
    assert key.tenant.name == "newco"
    assert key.name == "ci"
    assert hash_secret(secret) == key.secret_hash
    assert output.count(secret) == 1
    body = secret[len(KEY_PREFIX):]
    assert body not in "\n".join(lines(output)[:-1])
    assert "Created tenant newco" in output
    assert key.masked in output


@pytest.mark.django_db
def test_key_create_reuses_an_existing_tenant(tenant: Tenant) -> None:
    output = run("key", "create", "--tenant", tenant.name, "--name", "second")
    assert Tenant.objects.filter(name=tenant.name).count() == 1
    assert Tenant.objects.count() == 1
    key = ApiKey.objects.get(name="second")
    assert key.tenant_id == tenant.pk
    assert "Created tenant" not in output
    assert hash_secret(lines(output)[-1]) == key.secret_hash


@pytest.mark.django_db
def test_key_create_json_prints_one_object_and_stores_every_option() -> None:
    Group.objects.create(name="gold")
    output = run(
        "key", "create", "--tenant", "jsonco", "--name", "full", "--json",
        "--group", "gold", "--models", "a,b", "--rpm", "10", "--rpd", "100",
        "--concurrency", "2", "--max-tokens", "1000", "--deny", "x",
        "--expires", "2030-01-01", "--quota", "5.5", "--ips", "10.0.0.0/8", "--tpm", "7",
    )
    data = json.loads(output)  # one JSON object and nothing else
    assert isinstance(data, dict)

    key = ApiKey.objects.select_related("tenant", "group").get()
    assert hash_secret(data["secret"]) == key.secret_hash
    assert data["secret"].startswith(KEY_PREFIX)
    assert data["name"] == "full"
    assert data["tenant"] == "jsonco"
    assert data["group"] == "gold"
    assert data["models"] == ["a", "b"]
    assert data["denied_models"] == ["x"]
    assert data["allowed_ips"] == ["10.0.0.0/8"]
    assert (data["rpm"], data["rpd"], data["tpm"]) == (10, 100, 7)
    assert (data["concurrency"], data["max_tokens"]) == (2, 1000)
    assert Decimal(data["quota"]) == Decimal("5.5")
    assert data["key"] == key.masked
    assert data["id"] == key.pk
    assert data["expires_at"].startswith("2030-01-01")

    assert key.tenant.name == "jsonco"
    assert key.group is not None and key.group.name == "gold"
    assert key.allowed_models == ["a", "b"]
    assert key.denied_models == ["x"]
    assert key.allowed_ips == ["10.0.0.0/8"]
    assert (key.rpm, key.rpd, key.tpm, key.concurrency, key.max_tokens) == (10, 100, 7, 2, 1000)
    assert key.quota == Decimal("5.5")
    assert key.expires_at is not None
    assert timezone.localtime(key.expires_at).date() == date(2030, 1, 1)
    assert not key.is_expired


@pytest.mark.django_db
def test_key_create_with_an_unknown_group_is_a_clear_command_error() -> None:
    with pytest.raises(CommandError, match="No group named 'nope'"):
        run("key", "create", "--tenant", "t", "--name", "n", "--group", "nope")
    assert not ApiKey.objects.exists()
    assert not Tenant.objects.exists()


@pytest.mark.django_db
def test_key_create_with_a_bad_quota_or_expiry_is_a_command_error() -> None:
    with pytest.raises(CommandError, match="--quota 'lots' is not a decimal"):
        run("key", "create", "--tenant", "t", "--name", "n", "--quota", "lots")
    with pytest.raises(CommandError, match="--expires 'someday' is not an ISO date"):
        run("key", "create", "--tenant", "t", "--name", "n", "--expires", "someday")
    assert not ApiKey.objects.exists()


@pytest.mark.django_db
def test_key_create_with_a_blank_name_is_a_command_error(tenant: Tenant) -> None:
    with pytest.raises(CommandError, match="A key needs a name"):
        run("key", "create", "--tenant", tenant.name, "--name", "   ")
    assert not ApiKey.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("bad", [
    ["--name", "   "],
    ["--name", "n", "--expires", "someday"],
    ["--name", "n", "--secret", "not-a-turnpike-secret"],
], ids=["blank-name", "bad-expiry", "bad-secret"])
def test_a_failed_key_create_does_not_leave_a_new_tenant_behind(bad: list[str]) -> None:
    with pytest.raises(CommandError):
        run("key", "create", "--tenant", "half-made", *bad)
    assert not Tenant.objects.filter(name="half-made").exists()


@pytest.mark.django_db
def test_key_create_with_a_given_secret_uses_it_and_refuses_a_duplicate(tenant: Tenant) -> None:
    secret = KEY_PREFIX + "A" * 43
    output = run("key", "create", "--tenant", tenant.name, "--name", "imported",
                 "--secret", secret)
    assert lines(output)[-1] == secret
    assert ApiKey.objects.get().secret_hash == hash_secret(secret)
    with pytest.raises(CommandError, match="already exists"):
        run("key", "create", "--tenant", tenant.name, "--name", "again", "--secret", secret)
    assert ApiKey.objects.count() == 1


@pytest.mark.django_db
def test_key_create_without_required_options_is_a_command_error() -> None:
    with pytest.raises(CommandError, match="--tenant"):
        run("key", "create", "--name", "n")


# --- key list ---------------------------------------------------------------------------

@pytest.mark.django_db
def test_key_list_never_prints_secrets(make_key: Any) -> None:
    made = [make_key(name="one"), make_key(name="two")]
    text = run("key", "list")
    as_json = run("key", "list", "--json")
    rows = json.loads(as_json)

    assert {r["name"] for r in rows} == {"one", "two"}
    for created in made:
        for output in (text, as_json):
            assert created.secret not in output
            assert created.secret[len(KEY_PREFIX):] not in output
            assert created.key.secret_hash not in output
        assert created.key.masked in text
    for row in rows:
        assert "secret" not in row
        assert set(row) >= {"id", "name", "tenant", "key", "status"}


@pytest.mark.django_db
def test_key_list_filters_by_tenant(make_key: Any) -> None:
    other, _ = tenant_get_or_create(name="other")
    make_key(name="mine")
    make_key(name="theirs", tenant=other)
    rows = json.loads(run("key", "list", "--tenant", "other", "--json"))
    assert [r["name"] for r in rows] == ["theirs"]
    text = run("key", "list", "--tenant", "other")
    assert "theirs" in text and "mine" not in text


# --- upstream ---------------------------------------------------------------------------

UP1 = "sk-upstream-first-secret-1111"
UP2 = "sk-upstream-second-secret-2222"


def add_upstream(name: str = "primary", *extra: str) -> str:
    return run("upstream", "add", "--name", name, "--kind", "openai",
               "--base-url", "https://api.example.com/v1/", "--api-key", UP1,
               "--api-key", UP2, "--models", "m1,m2", *extra)


@pytest.mark.django_db
def test_upstream_add_creates_the_upstream_with_encrypted_credentials() -> None:
    output = add_upstream()
    assert "2 credential(s)" in output
    assert UP1 not in output and UP2 not in output

    upstream = Upstream.objects.get(name="primary")
    assert upstream.kind == "openai"
    assert upstream.base_url == "https://api.example.com/v1"
    assert upstream.served_models == ["m1", "m2"]
    credentials = list(upstream.credentials.order_by("id"))
    assert len(credentials) == 2
    assert [c.get_secret() for c in credentials] == [UP1, UP2]
    assert [c.last4 for c in credentials] == ["1111", "2222"]
    stored = list(Credential.objects.values_list("secret_encrypted", flat=True))
    assert all(UP1 not in s and UP2 not in s for s in stored)


@pytest.mark.django_db
def test_upstream_list_shows_upstreams_without_their_secrets() -> None:
    add_upstream()
    text = run("upstream", "list")
    as_json = run("upstream", "list", "--json")
    for output in (text, as_json):
        assert "primary" in output
        assert UP1 not in output and UP2 not in output
    assert "https://api.example.com/v1" in text
    assert "m1, m2" in text

    (row,) = json.loads(as_json)
    assert row["name"] == "primary"
    assert row["kind"] == "openai"
    assert row["models"] == ["m1", "m2"]
    assert [c["key"] for c in row["credentials"]] == ["…1111", "…2222"]
    for credential in row["credentials"]:
        assert set(credential) == {"id", "name", "key", "status"}


@pytest.mark.django_db
def test_upstream_list_says_so_when_there_are_none() -> None:
    assert run("upstream", "list").strip() == "No upstreams."
    assert json.loads(run("upstream", "list", "--json")) == []


@pytest.mark.django_db
def test_upstream_add_json_prints_the_upstream_without_secrets() -> None:
    output = add_upstream("jsonup", "--json", "--priority", "3", "--weight", "2")
    data = json.loads(output)
    assert data["name"] == "jsonup"
    assert (data["priority"], data["weight"]) == (3, 2)
    assert len(data["credentials"]) == 2
    assert UP1 not in output and UP2 not in output


@pytest.mark.django_db
def test_upstream_add_rejects_an_unknown_kind() -> None:
    # call_command's parser raises CommandError instead of exiting.
    with pytest.raises(CommandError, match="invalid choice: 'gemini'"):
        run("upstream", "add", "--name", "x", "--kind", "gemini",
            "--base-url", "https://x.example.com", "--models", "m")
    assert not Upstream.objects.exists()


@pytest.mark.django_db
def test_upstream_add_with_a_duplicate_name_is_a_command_error() -> None:
    add_upstream()
    with pytest.raises(CommandError, match="already exists"):
        add_upstream()
    assert Upstream.objects.count() == 1
    assert Credential.objects.count() == 2


@pytest.mark.django_db
def test_upstream_add_with_an_invalid_base_url_is_a_command_error() -> None:
    with pytest.raises(CommandError):
        run("upstream", "add", "--name", "bad", "--kind", "openai", "--base-url", "not a url",
            "--models", "m")
    assert not Upstream.objects.exists()


# --- demo -------------------------------------------------------------------------------

@pytest.mark.django_db
def test_demo_seeds_tenant_user_upstream_and_a_working_key() -> None:
    output = run("demo", "--upstream-url", "http://127.0.0.1:8911/v1/")
    secret = lines(output)[-1]
    assert secret.startswith(KEY_PREFIX)

    tenant = Tenant.objects.get(name="demo")
    user = get_user_model().objects.get(username="demo")
    assert user.is_staff
    assert user.check_password("demo")
    assert Membership.objects.filter(tenant=tenant, user=user,
                                     role=Membership.Role.OWNER).exists()
    upstream = Upstream.objects.get(name="fake")
    assert upstream.base_url == "http://127.0.0.1:8911/v1"
    assert upstream.credentials.count() == 1
    key = ApiKey.objects.get(secret_hash=hash_secret(secret))
    assert key.tenant == tenant
    assert key.status == "active"
    assert key.created_by == user


@pytest.mark.django_db
def test_running_demo_twice_keeps_one_tenant_and_upstream_and_replaces_the_key() -> None:
    first = lines(run("demo"))[-1]
    second = lines(run("demo", "--upstream-url", "http://127.0.0.1:9999/v1"))[-1]
    assert first != second

    assert Tenant.objects.filter(name="demo").count() == 1
    assert Upstream.objects.filter(name="fake").count() == 1
    assert Credential.objects.filter(upstream__name="fake").count() == 1
    assert get_user_model().objects.filter(username="demo").count() == 1
    assert Membership.objects.filter(tenant__name="demo").count() == 1
    assert not ApiKey.objects.filter(secret_hash=hash_secret(first)).exists()
    assert ApiKey.objects.filter(secret_hash=hash_secret(second)).exists()
    assert ApiKey.objects.filter(tenant__name="demo").count() == 1
    assert Upstream.objects.get(name="fake").base_url == "http://127.0.0.1:9999/v1"


@pytest.mark.django_db
def test_demo_leaves_other_keys_of_the_demo_tenant_alone() -> None:
    run("demo")
    extra = lines(run("key", "create", "--tenant", "demo", "--name", "mine"))[-1]
    run("demo")
    assert ApiKey.objects.filter(secret_hash=hash_secret(extra)).exists()
