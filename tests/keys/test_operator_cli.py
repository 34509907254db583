"""The operator's daily work from the shell: ``key rotate|update|delete``, ``tenant
list|disable|enable``, ``group create|list|show|update``, ``member role``, ``token
create|list|revoke``, and what every command shares (``keys.cli``): ``--json``, clear errors
with a non-zero exit and no traceback, prefixes matched unambiguously. In-process with
``call_command``; the end-to-end ones commit and run ``manage.py`` as a subprocess."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from io import StringIO
from typing import Any

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command, get_commands, load_command_class
from django.core.management.base import CommandError
from django.utils import timezone

from gateway.models import Upstream
from keys.models import AccessToken, ApiKey, Group, Membership, Status, Tenant
from keys.secrets import KEY_PREFIX, hash_secret
from keys.services import CreatedKey, key_create, tenant_get_or_create
from keys.tokens import TOKEN_PREFIX, authenticate
from tests.keys.test_cli import (
    CHAT,
    answer_within,
    lines,
    manage,
    manage_all,
    run,
    secret_starting,
)

# Every command of Turnpike's own apps; each action of each must take --json.
TURNPIKE_COMMANDS = ["key", "tenant", "group", "member", "token", "user", "demo", "price",
                     "redeem", "billing", "usagewriter", "upstream", "fakeupstream", "opsalert",
                     "usagepartitions"]


def run_json(*args: str) -> Any:
    return json.loads(run(*args, "--json"))


def error_of(*args: str) -> str:
    with pytest.raises(CommandError) as raised:
        run(*args)
    return str(raised.value)


# --- shared: --json everywhere --------------------------------------------------------------

def _leaves(parser: Any) -> dict[str, Any]:
    subs = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    if not subs:
        return {"": parser}
    return {name: sub for action in subs for name, sub in action.choices.items()}


def test_every_turnpike_command_and_action_takes_json() -> None:
    commands = get_commands()
    assert set(TURNPIKE_COMMANDS) <= set(commands)
    ours = {name for name, app in commands.items()
            if app in ("keys", "billing", "gateway")}
    assert ours == set(TURNPIKE_COMMANDS)  # a new command must be added above (and get --json)
    for name in TURNPIKE_COMMANDS:
        parser = load_command_class(commands[name], name).create_parser("manage.py", name)
        for action, leaf in _leaves(parser).items():
            assert "--json" in leaf._option_string_actions, f"{name} {action} lacks --json"


# --- key rotate -----------------------------------------------------------------------------

@pytest.fixture
def gold() -> Group:
    return Group.objects.create(name="gold", rpm=100)


@pytest.fixture
def leaky(make_key: Any, gold: Group) -> CreatedKey:
    return make_key(name="ci", secret=secret_starting("ab12"), group=gold, models="gpt-5*",
                    denied_models="o3", allowed_ips="10.0.0.0/8", rpm=60, rpd=1000,
                    concurrency=4, max_tokens=4096, quota=Decimal("10"))


@pytest.mark.django_db
def test_key_rotate_prints_the_new_secret_alone_and_revokes_the_old_key_at_once(
        leaky: CreatedKey) -> None:
    output = run("key", "rotate", "sk-tp-ab12")
    secret = lines(output)[-1]
    new = ApiKey.objects.get(secret_hash=hash_secret(secret))
    old = ApiKey.objects.get(pk=leaky.key.pk)

    assert secret.startswith(KEY_PREFIX) and secret != leaky.secret
    assert output.count(secret) == 1 and leaky.secret not in output
    assert new.rotated_from_id == old.pk
    assert (new.name, new.tenant_id, new.group_id) == ("ci", old.tenant_id, old.group_id)
    for field in ("allowed_models", "denied_models", "allowed_ips", "rpm", "rpd", "tpm",
                  "concurrency", "max_tokens", "quota"):
        assert getattr(new, field) == getattr(old, field), field
    assert new.quota_used == 0 and new.status == Status.ACTIVE
    # As the portal's "At once": the old key stops now (401 api_key_expired on /v1).
    assert old.is_expired and old.expires_at is not None
    assert old.expires_at <= timezone.now()
    assert "stops working now" in output and old.masked in output and new.masked in output


@pytest.mark.django_db
@pytest.mark.parametrize(("grace", "seconds"), [("3600", 3600), ("1h", 3600), ("30m", 1800),
                                                ("7d", 7 * 86400)])
def test_key_rotate_with_a_grace_period_keeps_the_old_key_until_it_ends(
        leaky: CreatedKey, grace: str, seconds: int) -> None:
    before = timezone.now()
    data = run_json("key", "rotate", "sk-tp-ab12…xxxx", "--grace", grace)
    old = ApiKey.objects.get(pk=leaky.key.pk)

    assert not old.is_expired
    assert old.expires_at is not None
    assert before + timedelta(seconds=seconds) <= old.expires_at
    assert old.expires_at <= timezone.now() + timedelta(seconds=seconds)
    assert hash_secret(data["secret"]) == ApiKey.objects.get(pk=data["id"]).secret_hash
    assert data["rotated_from"] == {"id": old.pk, "key": old.masked,
                                    "expires_at": old.expires_at.isoformat()}
    assert data["key"] != old.masked and data["name"] == "ci" and data["rpm"] == 60
    assert set(data) >= {"secret", "id", "key", "tenant", "status", "models", "quota"}


@pytest.mark.django_db
def test_key_rotate_keeps_a_disabled_key_disabled_and_an_earlier_expiry(
        make_key: Any) -> None:
    soon = timezone.now() + timedelta(minutes=5)
    made = make_key(name="off", secret=secret_starting("qq11"), expires_at=soon)
    run("key", "disable", "sk-tp-qq11")
    data = run_json("key", "rotate", "sk-tp-qq11", "--grace", "1d")
    assert data["status"] == "disabled"
    assert ApiKey.objects.get(pk=made.key.pk).expires_at == soon  # never later than it was


@pytest.mark.django_db
@pytest.mark.parametrize(("grace", "message"), [
    ("-5", "--grace '-5' is not a duration"),
    ("soon", "--grace 'soon' is not a duration"),
    ("1w", "--grace '1w' is not a duration"),
    ("99999d", "longer than ten years"),
])
def test_key_rotate_refuses_a_bad_grace_and_creates_nothing(
        leaky: CreatedKey, grace: str, message: str) -> None:
    assert message in error_of("key", "rotate", "sk-tp-ab12", "--grace", grace)
    assert ApiKey.objects.count() == 1
    assert ApiKey.objects.get().expires_at is None


# --- key delete / update ----------------------------------------------------------------------

@pytest.mark.django_db
def test_key_delete_refuses_without_yes_and_deletes_with_it(leaky: CreatedKey) -> None:
    message = error_of("key", "delete", "sk-tp-ab12")
    assert "Not deleted" in message and "--yes" in message and "sk-tp-ab12…xxxx" in message
    assert ApiKey.objects.filter(pk=leaky.key.pk).exists()
    with pytest.raises(CommandError, match="--yes"):
        run("key", "delete", "sk-tp-ab12", "--json")
    assert ApiKey.objects.filter(pk=leaky.key.pk).exists()

    data = run_json("key", "delete", leaky.secret, "--yes")
    assert (data["id"], data["key"], data["deleted"]) == (leaky.key.pk, leaky.key.masked, True)
    assert "secret" not in data
    assert not ApiKey.objects.exists()
    assert "No key matches 'sk-tp-ab12'" in error_of("key", "delete", "sk-tp-ab12", "--yes")


@pytest.mark.django_db
def test_key_delete_prints_what_it_deleted(leaky: CreatedKey) -> None:
    assert run("key", "delete", "sk-tp-ab12", "--yes").strip() == (
        "Deleted key sk-tp-ab12…xxxx (acme/ci).")


@pytest.mark.django_db
def test_key_update_changes_only_what_is_given(leaky: CreatedKey) -> None:
    data = run_json("key", "update", "sk-tp-ab12", "--rpm", "5", "--models", "a,b",
                    "--concurrency", "none", "--quota", "none", "--name", "renamed")
    key = ApiKey.objects.get(pk=leaky.key.pk)
    assert (key.rpm, key.allowed_models, key.concurrency, key.quota, key.name) == (
        5, ["a", "b"], None, None, "renamed")
    assert (key.rpd, key.max_tokens, key.denied_models) == (1000, 4096, ["o3"])
    assert sorted(data["changed"]) == ["allowed_models", "concurrency", "name", "quota", "rpm"]
    assert run_json("key", "update", "sk-tp-ab12", "--rpm", "5")["changed"] == []
    run("key", "update", "sk-tp-ab12", "--group", "none", "--ip-allow", "")
    key.refresh_from_db()
    assert key.group is None and key.allowed_ips == []


@pytest.mark.django_db
@pytest.mark.parametrize(("args", "message"), [
    ([], "Nothing to change"),
    (["--rpm", "lots"], "'lots' is not a whole number"),
    (["--rpm", "-1"], "rpm: Ensure this value is greater than or equal to 0"),
    (["--quota", "x"], "--quota 'x' is not a decimal number"),
    (["--ip-allow", "nowhere"], "allowed_ips: Not an IP address or CIDR: nowhere"),
    (["--expires", "someday"], "--expires 'someday' is not an ISO date"),
    (["--group", "nope"], "No group named 'nope'"),
    (["--name", " "], "A key needs a name"),
])
def test_key_update_refuses_bad_input_and_changes_nothing(
        leaky: CreatedKey, args: list[str], message: str) -> None:
    assert message in error_of("key", "update", "sk-tp-ab12", *args)
    key = ApiKey.objects.get()
    assert (key.name, key.rpm, key.quota, key.allowed_ips, key.group_id) == (
        "ci", 60, Decimal("10"), ["10.0.0.0/8"], leaky.key.group_id)


@pytest.mark.django_db
@pytest.mark.parametrize("action", [["rotate"], ["delete", "--yes"], ["update", "--rpm", "1"]])
def test_an_ambiguous_key_prefix_names_the_candidates_and_touches_nothing(
        make_key: Any, action: list[str]) -> None:
    first = make_key(name="first", secret=secret_starting("ab12"))
    second = make_key(name="second", secret=secret_starting("ab13", "y"))
    message = error_of("key", action[0], "sk-tp-ab1", *action[1:])
    assert "'sk-tp-ab1' matches 2 keys" in message
    assert f"sk-tp-ab12…xxxx (acme/first, id {first.key.pk})" in message
    assert f"sk-tp-ab13…yyyy (acme/second, id {second.key.pk})" in message
    assert ApiKey.objects.count() == 2
    assert set(ApiKey.objects.values_list("rpm", flat=True)) == {None}
    assert set(ApiKey.objects.values_list("expires_at", flat=True)) == {None}


# --- tenant list / disable / enable -----------------------------------------------------------

@pytest.fixture
def tenants(gold: Group) -> list[Tenant]:
    acme, _ = tenant_get_or_create(name="acme", group=gold)
    acorn, _ = tenant_get_or_create(name="acorn")
    zeta, _ = tenant_get_or_create(name="zeta")
    key_create(tenant=acme, name="one")
    key_create(tenant=acme, name="two")
    return [acme, acorn, zeta]


@pytest.mark.django_db
def test_tenant_list_shows_every_tenant_and_json_has_one_object_each(
        tenants: list[Tenant]) -> None:
    rows = run_json("tenant", "list")
    assert [r["name"] for r in rows] == ["acme", "acorn", "zeta"]
    acme = rows[0]
    assert (acme["id"], acme["status"], acme["group"], acme["balance"], acme["keys"],
            acme["members"]) == (tenants[0].pk, "active", "gold", "0.000000", 2, 0)
    assert set(acme) >= {"id", "name", "status", "group", "balance", "keys", "members",
                         "created_at"}
    text = run("tenant", "list")
    assert lines(text)[0].split() == ["ID", "NAME", "STATUS", "GROUP", "BALANCE", "KEYS",
                                      "MEMBERS"]
    assert "acorn" in text and "gold" in text
    assert [r["name"] for r in run_json("tenant", "list", "--group", "gold")] == ["acme"]


@pytest.mark.django_db
def test_tenant_list_filters_by_status_and_says_when_there_are_none() -> None:
    assert run("tenant", "list").strip() == "No tenants."
    assert run_json("tenant", "list") == []
    tenant_get_or_create(name="a")
    run("tenant", "disable", "a")
    assert [r["name"] for r in run_json("tenant", "list", "--status", "disabled")] == ["a"]
    assert run_json("tenant", "list", "--status", "active") == []


@pytest.mark.django_db
def test_tenant_disable_and_enable_by_name_or_unique_prefix(tenants: list[Tenant]) -> None:
    out = run("tenant", "disable", "z")  # only zeta starts with z
    assert out.strip() == "Tenant zeta disabled: its 0 key(s) are refused on /v1."
    assert Tenant.objects.get(name="zeta").status == Status.DISABLED
    assert "was already disabled" in run("tenant", "disable", "zeta")
    data = run_json("tenant", "disable", "acme")  # exact name wins over acme… prefixes
    assert (data["name"], data["status"], data["keys"], data["changed"]) == (
        "acme", "disabled", 2, True)
    assert run_json("tenant", "enable", "acme")["changed"] is True
    assert Tenant.objects.get(name="acme").status == Status.ACTIVE
    assert Tenant.objects.get(name="acorn").status == Status.ACTIVE


@pytest.mark.django_db
@pytest.mark.parametrize("args", [
    ["tenant", "disable", "acme"], ["tenant", "enable", "acme"],
    ["group", "update", "gold", "--rpm", "1"], ["key", "delete", "KEY", "--yes"],
    ["key", "rotate", "KEY"], ["key", "update", "KEY", "--rpm", "1"]],
    ids=lambda a: "-".join(a[:2]))
def test_each_change_evicts_the_gateways_snapshots_of_the_keys_it_touches_on_commit(
        tenants: list[Tenant], monkeypatch: Any, django_capture_on_commit_callbacks: Any,
        args: list[str]) -> None:
    """What makes a change reach every gateway process at once, as the admin's does."""
    if args[:2] == ["tenant", "enable"]:
        Tenant.objects.filter(name="acme").update(status=Status.DISABLED)
    hashes = set(ApiKey.objects.filter(tenant__name="acme").values_list("secret_hash",
                                                                         flat=True))
    first = ApiKey.objects.filter(tenant__name="acme").order_by("id").first()
    assert first is not None
    args = [first.masked if a == "KEY" else a for a in args]
    evicted: list[str] = []
    monkeypatch.setattr("keys.snapshots.key_snapshots.invalidate", evicted.extend)
    with django_capture_on_commit_callbacks(execute=True):
        run(*args)
    wanted = {first.secret_hash} if args[0] == "key" else hashes
    assert wanted <= set(evicted)


@pytest.mark.django_db
@pytest.mark.parametrize("args", [["disable", "ac"], ["enable", "ac"], ["show", "ac"],
                                  ["topup", "ac", "5"], ["list", "--group", "g"]])
def test_an_ambiguous_tenant_or_group_prefix_names_the_candidates(
        tenants: list[Tenant], args: list[str]) -> None:
    Group.objects.create(name="green")
    message = error_of("tenant", *args)
    if args[0] == "list":
        assert message == "'g' matches 2 groups: 'gold', 'green'. Give more of the name."
    else:
        assert message == "'ac' matches 2 tenants: 'acme', 'acorn'. Give more of the name."
    assert set(Tenant.objects.values_list("status", flat=True)) == {Status.ACTIVE}
    assert set(Tenant.objects.values_list("balance", flat=True)) == {Decimal(0)}


@pytest.mark.django_db
def test_unknown_tenant_is_a_clear_error() -> None:
    for action in ("disable", "enable", "show"):
        assert error_of("tenant", action, "nobody") == "No tenant named 'nobody'."
    assert error_of("tenant", "disable", " ") == "Name the tenant."


@pytest.mark.django_db
def test_tenant_topup_json(tenants: list[Tenant]) -> None:
    data = run_json("tenant", "topup", "zeta", "2.5")
    assert (data["name"], data["balance"], data["amount"]) == ("zeta", "2.500000", "2.5")


# --- group ------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_group_create_sets_every_field_and_json_shows_them() -> None:
    Upstream.objects.create(name="premium-a", kind="openai", base_url="http://a/v1",
                            served_models=["gpt-5"])
    data = run_json("group", "create", "--name", "premium", "--description", "paying",
                    "--models", "gpt-5*, o3", "--rpm", "600", "--rpd", "10000",
                    "--concurrency", "8", "--max-tokens", "8192", "--price-multiplier",
                    "1.25", "--dedicated-upstreams", "--upstreams", "premium-a")
    group = Group.objects.get(name="premium")
    assert (group.description, group.allowed_models, group.rpm, group.rpd, group.concurrency,
            group.max_tokens, group.price_multiplier, group.dedicated_upstreams) == (
        "paying", ["gpt-5*", "o3"], 600, 10000, 8, 8192, Decimal("1.25"), True)
    assert [u.name for u in group.upstreams.all()] == ["premium-a"]
    assert data == {
        "id": group.pk, "name": "premium", "description": "paying",
        "models": ["gpt-5*", "o3"], "rpm": 600, "rpd": 10000, "concurrency": 8,
        "max_tokens": 8192, "price_multiplier": "1.2500", "dedicated_upstreams": True,
        "upstreams": ["premium-a"], "tenants": 0, "keys": 0,
        "created_at": group.created_at.isoformat()}


@pytest.mark.django_db
def test_group_create_defaults_and_list(tenants: list[Tenant]) -> None:
    assert run("group", "create", "--name", "basic").strip() == "Created group basic."
    basic = Group.objects.get(name="basic")
    assert (basic.rpm, basic.price_multiplier, basic.allowed_models,
            basic.dedicated_upstreams) == (0, Decimal(1), [], False)
    rows = run_json("group", "list")
    assert [(r["name"], r["tenants"], r["keys"]) for r in rows] == [("basic", 0, 0),
                                                                   ("gold", 1, 0)]
    text = run("group", "list")
    assert "basic" in text and "gold" in text and lines(text)[0].startswith("ID")
    shown = run_json("group", "show", "gol")
    assert (shown["name"], shown["rpm"], shown["tenants"]) == ("gold", 100, 1)


@pytest.mark.django_db
def test_group_update_changes_what_is_given_and_evicts_nothing_else(gold: Group) -> None:
    Upstream.objects.create(name="u1", kind="openai", base_url="http://a/v1",
                            served_models=["m"])
    data = run_json("group", "update", "gold", "--rpm", "7", "--price-multiplier", "0.5",
                    "--dedicated-upstreams", "--upstreams", "u1", "--rename", "platinum")
    group = Group.objects.get(pk=gold.pk)
    assert (group.name, group.rpm, group.price_multiplier, group.dedicated_upstreams) == (
        "platinum", 7, Decimal("0.5"), True)
    assert sorted(data["changed"]) == ["dedicated_upstreams", "name", "price_multiplier",
                                       "rpm", "upstreams"]
    again = run_json("group", "update", "plat", "--rpm", "7")
    assert again["changed"] == []
    run("group", "update", "platinum", "--no-dedicated-upstreams", "--upstreams", "",
        "--models", "")
    group.refresh_from_db()
    assert not group.dedicated_upstreams and not group.upstreams.exists()
    assert group.allowed_models == []


@pytest.mark.django_db
def test_a_group_change_reaches_its_keys_snapshots(gold: Group, make_key: Any) -> None:
    from keys.snapshots import build_key_snapshot

    made = make_key(name="g", group=gold)
    assert build_key_snapshot(made.key.secret_hash)["rpm"] == 100
    run("group", "update", "gold", "--rpm", "3")
    assert build_key_snapshot(made.key.secret_hash)["rpm"] == 3


@pytest.mark.django_db
@pytest.mark.parametrize(("args", "message"), [
    (["create", "--name", "gold"], "A group named 'gold' already exists."),
    (["create", "--name", " "], "A group needs a name."),
    (["create", "--name", "x", "--rpm", "-1"], "--rpm cannot be negative."),
    (["create", "--name", "x", "--rpm", "many"], "invalid int value: 'many'"),
    (["create", "--name", "x", "--price-multiplier", "cheap"],
     "--price-multiplier 'cheap' is not a decimal number"),
    (["create", "--name", "x", "--price-multiplier", "-1"], "--price-multiplier cannot be "
                                                            "negative."),
    (["create", "--name", "x", "--price-multiplier", "1.00001"],
     "price_multiplier: Ensure that there are no more than 4 decimal places."),
    (["create", "--name", "x", "--rpm", "99999999999"],
     "rpm: Ensure this value is less than or equal to"),
    (["create", "--name", "x", "--upstreams", "ghost"], "No upstream named 'ghost'."),
    (["update", "nope", "--rpm", "1"], "No group named 'nope'."),
    (["update", "gold"], "Nothing to change"),
    (["update", "gold", "--rename", "green"], "A group named 'green' already exists."),
    (["update", "g", "--rpm", "1"], "'g' matches 2 groups: 'gold', 'green'."),
    (["show", "g"], "'g' matches 2 groups: 'gold', 'green'."),
])
def test_group_commands_refuse_bad_input_and_change_nothing(
        gold: Group, args: list[str], message: str) -> None:
    Group.objects.create(name="green")
    assert message in error_of("group", *args)
    assert sorted(Group.objects.values_list("name", "rpm")) == [("gold", 100), ("green", 0)]


# --- member role / list ----------------------------------------------------------------------

@pytest.fixture
def owner() -> Any:
    run("user", "create", "--email", "o@example.com", "--password", "pw", "--tenant", "acme",
        "--role", "owner")
    run("user", "create", "--email", "m@example.com", "--password", "pw", "--tenant", "acme")
    return get_user_model().objects.get(email="o@example.com")


@pytest.mark.django_db
def test_member_role_changes_a_role_and_keeps_the_last_owner(owner: Any) -> None:
    data = run_json("member", "role", "--tenant", "acme", "--email", "m@example.com",
                    "--role", "admin")
    assert (data["email"], data["role"], data["previous_role"], data["changed"]) == (
        "m@example.com", "admin", "member", True)
    assert "was already admin" in run("member", "role", "--tenant", "ac", "--email",
                                      "M@example.com", "--role", "admin")
    message = error_of("member", "role", "--tenant", "acme", "--email", "o@example.com",
                       "--role", "member")
    assert "o@example.com is the last owner of acme and cannot be demoted" in message
    assert Membership.objects.get(user=owner).role == "owner"
    run("member", "role", "--tenant", "acme", "--email", "m@example.com", "--role", "owner")
    assert "now member" in run("member", "role", "--tenant", "acme", "--email",
                               "o@example.com", "--role", "member")


@pytest.mark.django_db
@pytest.mark.parametrize(("args", "message"), [
    (["role", "--tenant", "acme", "--email", "x@example.com", "--role", "admin"],
     "No user with the email 'x@example.com'"),
    (["role", "--tenant", "other", "--email", "m@example.com", "--role", "admin"],
     "m@example.com is not a member of other."),
    (["role", "--tenant", "a", "--email", "m@example.com", "--role", "admin"],
     "'a' matches 2 tenants: 'acme', 'another'."),
    (["remove", "--tenant", "a", "--email", "m@example.com"],
     "'a' matches 2 tenants: 'acme', 'another'."),
    (["role", "--tenant", "acme", "--email", "m@example.com", "--role", "boss"],
     "invalid choice: 'boss'"),
    (["remove", "--tenant", "acme", "--email", "o@example.com"], "last owner"),
])
def test_member_commands_refuse_bad_input_and_change_nothing(
        owner: Any, args: list[str], message: str) -> None:
    tenant_get_or_create(name="other")
    tenant_get_or_create(name="another")
    assert message in error_of("member", *args)
    assert sorted(Membership.objects.values_list("user__email", "role")) == [
        ("m@example.com", "member"), ("o@example.com", "owner")]


@pytest.mark.django_db
def test_member_list_filters_by_email_and_json_has_one_object_each(owner: Any) -> None:
    other, _ = tenant_get_or_create(name="other")
    run("member", "add", "--tenant", "other", "--email", "m@example.com")
    rows = run_json("member", "list", "--email", "m@example.com")
    assert [(r["tenant"], r["role"]) for r in rows] == [("acme", "member"), ("other", "member")]
    assert set(rows[0]) == {"tenant", "email", "user_id", "role", "joined"}
    text = run("member", "list", "--tenant", "acme")
    assert lines(text)[0].split() == ["TENANT", "EMAIL", "ROLE", "JOINED"]
    assert "o@example.com" in text and "owner" in text
    assert run("member", "list", "--tenant", "other", "--email", "o@example.com").strip() == (
        "No members.")


# --- token ------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_token_create_prints_the_token_alone_on_its_last_line_and_it_authenticates(
        owner: Any) -> None:
    output = run("token", "create", "--user", "o@example.com", "--tenant", "acme",
                 "--scope", "write")
    secret = lines(output)[-1]
    token = authenticate(secret)
    assert token is not None and secret.startswith(TOKEN_PREFIX)
    assert (token.user, token.tenant.name, token.scope, token.staff, token.name) == (
        owner, "acme", "write", False, "cli")
    assert output.count(secret) == 1 and token.masked in output
    assert AccessToken.objects.get().secret_hash == hash_secret(secret)


@pytest.mark.django_db
def test_token_create_json_holds_the_secret_and_the_tokens_fields(owner: Any) -> None:
    owner.is_staff = True
    owner.save()
    data = run_json("token", "create", "--user", "o@example.com", "--staff", "--name",
                    "ops", "--expires", "2999-01-01")
    token = authenticate(data["secret"])
    assert token is not None and token.pk == data["id"]
    assert (data["user"], data["tenant"], data["scope"], data["staff"], data["state"],
            data["name"]) == ("o@example.com", None, "read", True, "active", "ops")
    assert data["expires_at"].startswith("2999-01-01") and data["token"] == token.masked
    assert set(data) >= {"secret", "id", "token", "prefix", "created_at", "last_used_at"}


@pytest.mark.django_db
@pytest.mark.parametrize(("args", "message"), [
    (["--user", "ghost@example.com"], "No user with the email 'ghost@example.com'"),
    (["--user", "m@example.com", "--staff"], "m@example.com is not staff: no staff token."),
    (["--user", "m@example.com", "--tenant", "other"], "m@example.com is not a member of "
                                                       "other."),
    (["--user", "m@example.com", "--tenant", "nope"], "No tenant named 'nope'."),
    (["--user", "m@example.com", "--scope", "admin"], "invalid choice: 'admin'"),
    (["--user", "m@example.com", "--expires", "2001-01-01"], "The expiry date is in the past."),
    (["--user", "m@example.com", "--expires", "later"], "--expires 'later' is not an ISO date"),
    (["--user", "m@example.com", "--name", " "], "A token needs a name."),
    (["--tenant", "acme"], "the following arguments are required: --user"),
])
def test_token_create_refuses_bad_input_and_creates_nothing(
        owner: Any, args: list[str], message: str) -> None:
    tenant_get_or_create(name="other")
    assert message in error_of("token", "create", *args)
    assert not AccessToken.objects.exists()


def make_token(user: Any, body: str, fill: str = "x", **fields: Any) -> str:
    """A token row whose secret (and so display prefix) we choose, to collide on purpose."""
    secret = TOKEN_PREFIX + body + fill * (43 - len(body))
    AccessToken.objects.create(user=user, name=fields.pop("name", body), prefix=secret[:11],
                               last4=secret[-4:], secret_hash=hash_secret(secret), **fields)
    return secret


@pytest.mark.django_db
def test_token_list_shows_state_and_never_a_secret(owner: Any) -> None:
    active = make_token(owner, "aaaa", name="live")
    make_token(owner, "bbbb", name="gone", revoked_at=timezone.now())
    make_token(owner, "cccc", name="old", expires_at=timezone.now() - timedelta(days=1))
    rows = run_json("token", "list")
    assert sorted((r["name"], r["state"]) for r in rows) == [
        ("gone", "revoked"), ("live", "active"), ("old", "expired")]
    text = run("token", "list")
    for output in (text, json.dumps(rows)):
        assert active not in output and active[len(TOKEN_PREFIX):] not in output
    assert "tp_pat_aaaa…xxxx" in text and lines(text)[0].split()[:3] == ["ID", "TOKEN", "USER"]
    for state in ("active", "revoked", "expired"):
        assert [r["state"] for r in run_json("token", "list", "--state", state)] == [state]
    assert run_json("token", "list", "--user", "m@example.com") == []
    assert run("token", "list", "--tenant", "acme").strip() == "No tokens."


@pytest.mark.django_db
@pytest.mark.parametrize("reference", ["tp_pat_aaaa", "tp_pat_aaaa…xxxx", "tp_pat_aaaa...xxxx",
                                       "SECRET"])
def test_token_revoke_by_any_unambiguous_form(owner: Any, reference: str) -> None:
    secret = make_token(owner, "aaaa")
    other = make_token(owner, "bbbb")
    reference = secret if reference == "SECRET" else reference
    assert authenticate(secret) is not None
    output = run("token", "revoke", reference)
    assert output.strip() == "Token tp_pat_aaaa…xxxx (o@example.com/aaaa) revoked."
    assert authenticate(secret) is None and authenticate(other) is not None
    again = run_json("token", "revoke", reference)
    assert (again["state"], again["changed"]) == ("revoked", False)
    assert "secret" not in again


@pytest.mark.django_db
def test_an_ambiguous_token_prefix_names_the_candidates_and_revokes_nothing(
        owner: Any) -> None:
    member = get_user_model().objects.get(email="m@example.com")
    one = make_token(owner, "ab12")
    two = make_token(member, "ab13", "y")
    message = error_of("token", "revoke", "tp_pat_ab1")
    first, second = AccessToken.objects.order_by("id")
    assert "'tp_pat_ab1' matches 2 tokens" in message
    assert f"tp_pat_ab12…xxxx (o@example.com/ab12, id {first.pk})" in message
    assert f"tp_pat_ab13…yyyy (m@example.com/ab13, id {second.pk})" in message
    assert "--user" in message
    assert authenticate(one) is not None and authenticate(two) is not None
    run("token", "revoke", "tp_pat_ab1", "--user", "m@example.com")  # narrowed: one left
    assert authenticate(two) is None and authenticate(one) is not None


@pytest.mark.django_db
@pytest.mark.parametrize(("reference", "message"), [
    ("tp_pat_zzzz", "No token matches 'tp_pat_zzzz'."),
    ("sk-tp-abcd", "'sk-tp-abcd' is not a token prefix"),
    ("tp_pat_", "'tp_pat_' is not a token prefix"),
    ("tp_pat_ab…xxxx", "'tp_pat_ab…xxxx' is not a masked token"),
])
def test_a_token_reference_that_names_none_is_a_clear_error(
        owner: Any, reference: str, message: str) -> None:
    make_token(owner, "ab12")
    assert message in error_of("token", "revoke", reference)
    assert not AccessToken.objects.filter(revoked_at__isnull=False).exists()


# --- the rest of the commands' --json ---------------------------------------------------------

@pytest.mark.django_db
def test_price_set_upstream_and_billing_print_json() -> None:
    price = run_json("price", "set", "gpt-5*", "--input", "1.25")
    assert (price["model"], price["input"], price["created"]) == ("gpt-5*", "1.250000", True)
    assert "price_multiplier" not in price
    with pytest.raises(CommandError, match="input_per_million"):
        run("price", "set", "new-model", "--input", "1.0000001")
    assert not run_json("price", "list")[1:]  # the refused price left no row behind

    run("upstream", "add", "--name", "primary", "--kind", "openai", "--base-url",
        "https://api.example.com/v1", "--api-key", "sk-up-1234567890", "--models", "m")
    run("upstream", "add", "--name", "private", "--kind", "openai", "--base-url",
        "https://api.example.com/v1", "--api-key", "sk-up-0987654321", "--models", "m")
    shown = run_json("upstream", "show", "prim")
    assert shown["name"] == "primary" and "sk-up-1234567890" not in json.dumps(shown)
    off = run_json("upstream", "disable", "primary")
    assert (off["status"], off["changed"]) == ("disabled", True)
    assert "'pri' matches 2 upstreams: 'primary', 'private'" in error_of(
        "upstream", "disable", "pri")
    assert Upstream.objects.get(name="private").status == "active"

    check = run_json("billing", "check")
    assert check == {"ok": True, "mismatches": [], "drifts": []}
    assert run_json("billing", "reconcile") == {"corrected": []}
    rollup = run_json("billing", "rollup", "--date", "2024-05-01")
    assert rollup == {"rollups": {"2024-05-01": 0}}
    assert "--date 'May' is not YYYY-MM-DD" in error_of("billing", "rollup", "--date", "May")


@pytest.mark.django_db
def test_billing_check_json_reports_a_mismatch_and_still_fails(tenant: Tenant) -> None:
    Tenant.objects.filter(pk=tenant.pk).update(balance=Decimal("5"))
    out = StringIO()
    with pytest.raises(CommandError, match="1 tenant\\(s\\) out of balance: acme"):
        call_command("billing", "check", "--json", stdout=out, stderr=StringIO())
    report = json.loads(out.getvalue())
    assert report["ok"] is False
    assert report["mismatches"] == [{"tenant": "acme", "balance": "5.000000",
                                     "ledger_total": "0"}]


@pytest.mark.django_db
def test_demo_json_holds_the_key() -> None:
    data = run_json("demo")
    assert ApiKey.objects.get(name="demo key").secret_hash == hash_secret(data["secret"])
    assert (data["tenant"], data["user"], data["upstream"]) == ("demo", "demo@example.com",
                                                                "fake")


# --- from the shell ---------------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_bad_input_from_the_shell_exits_non_zero_with_a_message_and_no_traceback(
        make_key: Any) -> None:
    make_key(name="one", secret=secret_starting("gh78"))
    make_key(name="two", secret=secret_starting("gh79"))
    tenant_get_or_create(name="acorn")
    refused = [
        (("key", "rotate", "sk-tp-gh7"), "'sk-tp-gh7' matches 2 keys"),
        (("key", "delete", "sk-tp-gh78"), "run again with --yes"),
        (("key", "update", "sk-tp-gh78", "--rpm", "x"), "'x' is not a whole number"),
        (("key", "rotate", "sk-tp-gh78", "--grace", "soon"), "is not a duration"),
        (("tenant", "disable", "ac"), "'ac' matches 2 tenants: 'acme', 'acorn'"),
        (("group", "create", "--name", "g", "--rpm", "-3"), "--rpm cannot be negative"),
        (("group", "create", "--name", "g", "--price-multiplier", "1e99"),
         "price_multiplier: Ensure that there are no more than 8 digits in total."),
        (("token", "create", "--user", "nobody@example.com"), "No user with the email"),
        (("token", "revoke", "tp_pat_none"), "No token matches 'tp_pat_none'."),
        (("member", "role", "--tenant", "acme", "--email", "x@example.com", "--role",
          "owner"), "No user with the email"),
        (("upstream", "test", "nothing"), "No upstream named 'nothing'."),
    ]
    results = manage_all(*((*args, "--json") for args, _ in refused))
    for (args, message), done in zip(refused, results, strict=True):
        assert done.returncode != 0, args
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        assert done.stdout == "", args
    assert ApiKey.objects.count() == 2
    assert set(ApiKey.objects.values_list("expires_at", flat=True)) == {None}
    assert not Group.objects.exists()
    assert set(Tenant.objects.values_list("status", flat=True)) == {Status.ACTIVE}


@pytest.mark.django_db(transaction=True)
def test_a_token_created_from_the_shell_is_the_last_line_and_works() -> None:
    done = manage("user", "create", "--email", "ops@example.com", "--password", "pw",
                  "--tenant", "acme", "--role", "owner")
    assert done.returncode == 0, done.stderr
    done = manage("token", "create", "--user", "ops@example.com", "--tenant", "acme",
                  "--scope", "write")
    assert done.returncode == 0, done.stderr
    secret = done.stdout.splitlines()[-1]
    token = authenticate(secret)
    assert token is not None and token.can_write and token.tenant.name == "acme"


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_tenant_disabled_from_the_shell_is_refused_by_a_running_gateway_and_enable_restores_it(
        gateway_default_ttl: Any, upstream: Upstream, make_key: Any) -> None:
    made = make_key(name="busy")
    url = gateway_default_ttl.base_url + "/chat/completions"
    headers = {"Authorization": f"Bearer {made.secret}"}

    def status_within(seconds: float, wanted: int) -> httpx.Response:
        return answer_within(url, headers, seconds, wanted)

    assert httpx.post(url, json=CHAT, headers=headers).status_code == 200  # snapshot cached
    done = manage("tenant", "disable", "acme")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Tenant acme disabled: its 1 key(s) are refused on /v1."
    refused = status_within(2.0, 403)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "tenant_disabled"

    done = manage("tenant", "enable", "acme", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "active"
    assert status_within(2.0, 200).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_usagewriter_once_json_prints_only_the_count() -> None:
    done = manage("usagewriter", "--once", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"written": 0}
