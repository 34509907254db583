"""The ``key``, ``tenant``, ``upstream`` and ``demo`` management commands, run in-process
with ``call_command`` (a subprocess would not see the uncommitted rows of a test in a
transaction); the end-to-end ones commit, run ``manage.py`` as a real subprocess and check
its effect on a real gateway process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from decimal import Decimal
from io import StringIO
from typing import Any

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from billing.models import LedgerEntry
from billing.services import ledger_mismatches
from gateway.models import Credential, Upstream
from keys.models import ApiKey, Group, Membership, Status, Tenant
from keys.secrets import KEY_PREFIX, hash_secret
from keys.services import CreatedKey, tenant_get_or_create
from tests.conftest import gateway_env
from tests.servers import ROOT


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


@pytest.mark.django_db
def test_key_create_takes_deny_models_and_ip_allow_under_their_new_names() -> None:
    data = json.loads(run("key", "create", "--tenant", "newnames", "--name", "n", "--json",
                          "--deny-models", "o3,gpt-5*", "--ip-allow", "10.0.0.0/8, 192.0.2.7"))
    key = ApiKey.objects.get()
    assert key.denied_models == ["o3", "gpt-5*"] == data["denied_models"]
    assert key.allowed_ips == ["10.0.0.0/8", "192.0.2.7"] == data["allowed_ips"]


@pytest.mark.django_db
@pytest.mark.parametrize("option", ["--ip-allow", "--ips"])
def test_key_create_refuses_an_entry_that_is_not_an_ip_or_cidr(option: str) -> None:
    with pytest.raises(CommandError, match=r"allowed_ips: Not an IP address or CIDR: "
                                           r"10\.0\.0\.300, office\."):
        run("key", "create", "--tenant", "t", "--name", "n",
            option, "10.0.0.0/8,10.0.0.300,office")
    assert not ApiKey.objects.exists()
    assert not Tenant.objects.exists()


# --- key show / disable / enable --------------------------------------------------------

def secret_starting(body: str, fill: str = "x") -> str:
    """A valid secret whose display prefix we choose, to make prefixes collide on purpose."""
    return KEY_PREFIX + body + fill * (43 - len(body))


@pytest.fixture
def two_keys(make_key: Any) -> tuple[CreatedKey, CreatedKey]:
    """sk-tp-ab12…xxxx and sk-tp-ab13…yyyy: 'sk-tp-ab1' is ambiguous, 'sk-tp-ab12' is not."""
    return (make_key(name="first", secret=secret_starting("ab12")),
            make_key(name="second", secret=secret_starting("ab13", "y")))


@pytest.mark.django_db
def test_key_show_prints_the_keys_fields_and_never_its_secret(
        make_key: Any, two_keys: tuple[CreatedKey, CreatedKey]) -> None:
    first = two_keys[0]
    key = first.key
    key.rpm, key.quota, key.allowed_ips = 60, Decimal("2.5"), ["10.0.0.0/8"]
    key.save()
    text = run("key", "show", "sk-tp-ab12")
    data = json.loads(run("key", "show", "sk-tp-ab12", "--json"))

    assert data["id"] == key.pk and data["name"] == "first" and data["tenant"] == "acme"
    assert data["key"] == key.masked == "sk-tp-ab12…xxxx"
    assert (data["status"], data["tenant_status"], data["expired"]) == ("active", "active",
                                                                         False)
    assert (data["rpm"], data["quota"], data["quota_used"]) == (60, "2.500000", "0.000000")
    assert data["allowed_ips"] == ["10.0.0.0/8"]
    assert "secret" not in data and "secret_hash" not in data
    for output in (text, json.dumps(data)):
        assert first.secret not in output
        assert first.secret[len(KEY_PREFIX):] not in output
        assert key.secret_hash not in output
    assert "sk-tp-ab12…xxxx" in text and "first" in text and "10.0.0.0/8" in text
    assert "second" not in text


@pytest.mark.django_db
@pytest.mark.parametrize("reference", [
    "sk-tp-ab12", "sk-tp-ab12…xxxx", "sk-tp-ab12...xxxx", " sk-tp-ab12 ", "FULL-SECRET",
], ids=["display-prefix", "masked", "masked-ascii", "padded", "full-secret"])
def test_key_disable_and_enable_find_the_key_by_any_unambiguous_form(
        two_keys: tuple[CreatedKey, CreatedKey], reference: str) -> None:
    first, second = two_keys
    reference = first.secret if reference == "FULL-SECRET" else reference
    output = run("key", "disable", reference)
    assert output.strip() == "Key sk-tp-ab12…xxxx (acme/first) disabled."
    assert first.secret not in output
    assert ApiKey.objects.get(pk=first.key.pk).status == Status.DISABLED
    assert ApiKey.objects.get(pk=second.key.pk).status == Status.ACTIVE

    assert "was already disabled" in run("key", "disable", reference)
    assert run("key", "enable", reference).strip() == "Key sk-tp-ab12…xxxx (acme/first) enabled."
    assert ApiKey.objects.get(pk=first.key.pk).status == Status.ACTIVE


@pytest.mark.django_db
def test_key_disable_and_enable_json_say_whether_anything_changed(
        two_keys: tuple[CreatedKey, CreatedKey]) -> None:
    first = two_keys[0]
    changed = json.loads(run("key", "disable", "sk-tp-ab12", "--json"))
    again = json.loads(run("key", "disable", "sk-tp-ab12", "--json"))
    assert (changed["id"], changed["status"], changed["changed"]) == (first.key.pk, "disabled",
                                                                      True)
    assert (again["status"], again["changed"]) == ("disabled", False)
    enabled = json.loads(run("key", "enable", "sk-tp-ab12", "--json"))
    assert (enabled["status"], enabled["changed"]) == ("active", True)
    assert "secret" not in enabled


@pytest.mark.django_db
@pytest.mark.parametrize("action", ["show", "disable", "enable"])
def test_an_ambiguous_prefix_is_an_error_naming_every_candidate(
        two_keys: tuple[CreatedKey, CreatedKey], action: str) -> None:
    first, second = two_keys
    first.key.status = Status.DISABLED
    first.key.save()
    with pytest.raises(CommandError) as raised:
        run("key", action, "sk-tp-ab1")
    message = str(raised.value)
    assert "'sk-tp-ab1' matches 2 keys" in message
    assert f"sk-tp-ab12…xxxx (acme/first, id {first.key.pk})" in message
    assert f"sk-tp-ab13…yyyy (acme/second, id {second.key.pk})" in message
    statuses = dict(ApiKey.objects.values_list("name", "status"))
    assert statuses == {"first": Status.DISABLED, "second": Status.ACTIVE}  # nothing touched


@pytest.mark.django_db
def test_an_ambiguous_prefix_lists_ten_candidates_and_counts_the_rest(make_key: Any) -> None:
    for n in range(12):
        make_key(name=f"k{n}", secret=secret_starting(f"zz{n:02d}"))
    with pytest.raises(CommandError, match=r"'sk-tp-zz' matches 12 keys: .* and 2 more\."):
        run("key", "show", "sk-tp-zz")


@pytest.mark.django_db
def test_tenant_narrows_an_ambiguous_prefix(make_key: Any) -> None:
    other, _ = tenant_get_or_create(name="other")
    make_key(name="mine", secret=secret_starting("cd34"))
    theirs = make_key(name="theirs", tenant=other, secret=secret_starting("cd34", "z"))
    with pytest.raises(CommandError, match="matches 2 keys"):
        run("key", "disable", "sk-tp-cd34")
    run("key", "disable", "sk-tp-cd34", "--tenant", "other")
    assert dict(ApiKey.objects.values_list("name", "status")) == {
        "mine": Status.ACTIVE, "theirs": Status.DISABLED}
    assert json.loads(run("key", "show", "sk-tp-cd34…zzzz", "--json"))["id"] == theirs.key.pk
    with pytest.raises(CommandError, match="No tenant named 'nobody'"):
        run("key", "show", "sk-tp-cd34", "--tenant", "nobody")
    tenant_get_or_create(name="empty")
    with pytest.raises(CommandError, match="No key matches 'sk-tp-cd34' in tenant 'empty'"):
        run("key", "show", "sk-tp-cd34", "--tenant", "empty")


@pytest.mark.django_db
@pytest.mark.parametrize(("reference", "message"), [
    ("sk-tp-ef56", "No key matches 'sk-tp-ef56'."),
    ("sk-tp-ab12…wxyz", "No key matches 'sk-tp-ab12…wxyz'."),
    (secret_starting("ab12", "q"), "No key matches 'sk-tp-ab12…qqqq'."),
    ("ab12", "'ab12' is not a key prefix"),
    ("sk-tp-", "'sk-tp-' is not a key prefix"),
    ("", "'' is not a key prefix"),
    ("sk-tp-ab…xxxx", "'sk-tp-ab…xxxx' is not a masked key"),
    ("sk-tp-ab12…xx", "'sk-tp-ab12…xx' is not a masked key"),
], ids=["unknown", "unknown-masked", "unknown-secret", "no-scheme", "scheme-only", "empty",
        "short-masked", "short-last4"])
def test_a_prefix_that_names_no_key_is_a_clear_error(
        two_keys: tuple[CreatedKey, CreatedKey], reference: str, message: str) -> None:
    for action in ("show", "disable", "enable"):
        with pytest.raises(CommandError) as raised:
            run("key", action, reference)
        assert message in str(raised.value)
        if len(reference) > 20:  # a secret is never echoed, only its masked form
            assert reference not in str(raised.value)
    assert set(ApiKey.objects.values_list("status", flat=True)) == {Status.ACTIVE}


@pytest.mark.django_db
def test_enabling_a_key_of_a_disabled_tenant_says_it_is_still_refused(
        two_keys: tuple[CreatedKey, CreatedKey]) -> None:
    Tenant.objects.filter(name="acme").update(status=Status.DISABLED)
    run("key", "disable", "sk-tp-ab12")
    assert "its tenant acme is disabled" in run("key", "enable", "sk-tp-ab12")


def _manage_env() -> dict[str, str]:
    return {**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings", **gateway_env()}


def _run_manage(args: tuple[str, ...], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=env)


def manage(*args: str) -> subprocess.CompletedProcess[str]:
    """``python manage.py ARGS`` as an operator runs it, against the test database."""
    return _run_manage(args, _manage_env())


def manage_all(*commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """Independent ``manage.py`` commands (ones that change nothing, such as refused input),
    run side by side: each process spends a second or more starting Django, so a list of
    them one after another was most of a test's time. Results come back in order."""
    env = _manage_env()
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda args: _run_manage(args, env), commands))


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def answer_within(url: str, headers: dict[str, str], seconds: float,
                  wanted: int) -> httpx.Response:
    """Ask until the gateway answers ``wanted``: a change must arrive within its snapshot
    TTL (1 s for ``gateway_default_ttl``), so ``seconds`` is the bound, not a sleep."""
    deadline = time.monotonic() + seconds
    while True:
        resp = httpx.post(url, json=CHAT, headers=headers)
        if resp.status_code == wanted or time.monotonic() > deadline:
            return resp
        time.sleep(0.05)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_key_disabled_from_the_shell_is_refused_by_a_running_gateway_and_enable_restores_it(
        gateway_default_ttl: Any, upstream: Upstream, make_key: Any) -> None:
    made = make_key(name="leaked")
    url = gateway_default_ttl.base_url + "/chat/completions"
    headers = {"Authorization": f"Bearer {made.secret}"}

    def status_within(seconds: float, wanted: int) -> httpx.Response:
        return answer_within(url, headers, seconds, wanted)

    assert httpx.post(url, json=CHAT, headers=headers).status_code == 200  # snapshot cached

    done = manage("key", "disable", made.secret)  # what an operator holding a leak has
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"Key {made.key.masked} (acme/leaked) disabled."
    refused = status_within(2.0, 403)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "api_key_disabled"
    assert httpx.post(url, json=CHAT, headers=headers).status_code == 403

    done = manage("key", "enable", made.key.prefix, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "active"
    assert status_within(2.0, 200).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_bad_input_from_the_shell_exits_non_zero_with_the_message_on_stderr(
        make_key: Any) -> None:
    make_key(name="one", secret=secret_starting("gh78"))
    make_key(name="two", secret=secret_starting("gh79"))
    refused = [
        (("key", "disable", "sk-tp-gh7"), "'sk-tp-gh7' matches 2 keys"),
        (("key", "show", "sk-tp-none"), "No key matches 'sk-tp-none'."),
        (("tenant", "create", "--name", "x", "--balance", "lots"),
         "--balance 'lots' is not a decimal amount"),
    ]
    results = manage_all(*(args for args, _ in refused))
    for (_args, message), done in zip(refused, results, strict=True):
        assert done.returncode != 0
        assert message in done.stderr
        assert "Traceback" not in done.stderr
    assert set(ApiKey.objects.values_list("status", flat=True)) == {Status.ACTIVE}
    assert not Tenant.objects.filter(name="x").exists()


# --- tenant create ----------------------------------------------------------------------

@pytest.mark.django_db
def test_tenant_create_makes_an_empty_tenant() -> None:
    output = run("tenant", "create", "--name", "newco")
    tenant = Tenant.objects.get(name="newco")
    assert output.strip() == "Created tenant newco: balance 0.000000"
    assert (tenant.balance, tenant.group, tenant.status) == (Decimal(0), None, Status.ACTIVE)
    assert not LedgerEntry.objects.exists()


@pytest.mark.django_db
def test_tenant_create_with_a_balance_posts_it_to_the_ledger() -> None:
    Group.objects.create(name="gold")
    data = json.loads(run("tenant", "create", "--name", "rich", "--balance", "25.125",
                          "--group", "gold", "--json"))
    tenant = Tenant.objects.get(name="rich")
    assert data["id"] == tenant.pk and data["name"] == "rich" and data["group"] == "gold"
    assert data["balance"] == data["ledger_total"] == "25.125000"
    assert tenant.group is not None and tenant.group.name == "gold"

    (entry,) = LedgerEntry.objects.filter(tenant=tenant)
    assert (entry.kind, entry.amount) == (LedgerEntry.Kind.TOPUP, Decimal("25.125"))
    assert tenant.balance == entry.amount
    assert ledger_mismatches() == []
    call_command("billing", "check", stdout=StringIO())  # raises on any mismatch
    run("tenant", "topup", "rich", "0.875")  # and it is a tenant like any other
    assert Tenant.objects.get(name="rich").balance == Decimal("26")
    assert ledger_mismatches() == []


@pytest.mark.django_db
@pytest.mark.parametrize(("args", "message"), [
    (["--balance", "lots"], "--balance 'lots' is not a decimal amount"),
    (["--balance", "NaN"], "--balance 'NaN' is not a finite amount"),
    (["--balance", "-5"], "--balance '-5' is negative"),
    (["--balance", "1.0000001"], "more than 6 decimal places"),
    (["--balance", "1e20"], "--balance '1e20' is too large"),
    (["--group", "nope"], "No group named 'nope'"),
], ids=["not-a-number", "nan", "negative", "too-precise", "too-large", "unknown-group"])
def test_tenant_create_with_bad_input_is_an_error_and_creates_nothing(
        args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message.replace(".", r"\.")):
        run("tenant", "create", "--name", "half", *args)
    assert not Tenant.objects.exists()
    assert not LedgerEntry.objects.exists()


@pytest.mark.django_db
def test_tenant_create_refuses_an_existing_or_blank_name(tenant: Tenant) -> None:
    with pytest.raises(CommandError, match="A tenant named 'acme' already exists"):
        run("tenant", "create", "--name", "acme", "--balance", "5")
    with pytest.raises(CommandError, match="A tenant needs a name"):
        run("tenant", "create", "--name", "  ")
    with pytest.raises(CommandError, match="--name"):
        run("tenant", "create")
    assert Tenant.objects.get().balance == Decimal(0)
    assert not LedgerEntry.objects.exists()


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
