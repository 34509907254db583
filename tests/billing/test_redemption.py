"""Redemption codes: generation, redeeming, the ``redeem`` command and the admin pages.

Everything runs in-process against the real PostgreSQL and Redis of the test run; the
concurrency test uses real transactions (``transaction=True``) and threads, each with
its own database connection.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import timedelta
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from billing.models import LedgerEntry, RedemptionCode
from billing.redemption import (
    ALPHABET,
    CODE_PREFIX,
    RedemptionError,
    code_prefix,
    normalize_code,
    redeem,
    redeem_create,
)
from billing.services import ledger_mismatches
from keys.models import Tenant
from keys.secrets import hash_secret
from keys.services import ApplicationError, tenant_get_or_create
from portal.infra import rediskeys
from portal.infra.redis import sync_redis

CODE_RE = re.compile(r"tp-rc-(?:[%s]{4}-){5}[%s]{4}" % (ALPHABET, ALPHABET))  # noqa: UP031

GENERATE_URL = "admin:billing_redemptioncode_generate"
CHANGELIST_URL = "admin:billing_redemptioncode_changelist"


def body(code: str) -> str:
    """The secret part of a code, without the scheme or dashes."""
    return code[len(CODE_PREFIX):].replace("-", "")


def make_code(amount: str = "10", **kwargs: Any) -> str:
    return redeem_create(amount=Decimal(amount), count=1, **kwargs)[0]


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def all_text_columns() -> str:
    """Every column of every redemption code row, as PostgreSQL returns it."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {RedemptionCode._meta.db_table}")
        return "\n".join(" ".join(str(v) for v in row) for row in cursor.fetchall())


# --- generation ----------------------------------------------------------------------------

@pytest.mark.django_db
def test_generated_codes_are_distinct_grouped_and_use_only_the_unambiguous_alphabet() -> None:
    codes = redeem_create(amount=Decimal("5"), count=50)

    assert len(codes) == 50 == len(set(codes))
    for code in codes:
        assert CODE_RE.fullmatch(code), code
        assert len(body(code)) == 24
        assert not set(body(code)) & set("01OIL")
    assert RedemptionCode.objects.count() == 50


@pytest.mark.django_db
def test_generation_stores_a_hash_and_a_prefix_but_never_the_code(admin_user: Any) -> None:
    codes = redeem_create(amount=Decimal("12.5"), count=3, batch="launch",
                          user=admin_user)

    stored = all_text_columns()
    for code in codes:
        assert code not in stored
        assert body(code) not in stored
        assert body(code)[6:] not in stored  # only the displayed first 6 characters
        row = RedemptionCode.objects.get(code_hash=hash_secret(normalize_code(code) or ""))
        assert row.prefix == code[:13] == code_prefix(code)
        assert row.amount == Decimal("12.5")
        assert row.batch == "launch"
        assert row.created_by == admin_user
        assert row.redeemed_at is None and row.redeemed_by is None


@pytest.mark.django_db
@pytest.mark.parametrize(("amount", "count", "message"), [
    ("0", 1, "more than zero"),
    ("-5", 1, "more than zero"),
    ("NaN", 1, "more than zero"),
    ("0.0000001", 1, "6 decimal places"),
    ("5", 0, "between 1 and 10000"),
    ("5", 10_001, "between 1 and 10000"),
])
def test_generation_rejects_a_bad_amount_or_count_and_creates_nothing(
        amount: str, count: int, message: str) -> None:
    with pytest.raises(ApplicationError, match=message):
        redeem_create(amount=Decimal(amount), count=count)
    assert not RedemptionCode.objects.exists()


@pytest.mark.django_db
def test_generation_rejects_an_expiry_in_the_past() -> None:
    with pytest.raises(ApplicationError, match="past"):
        redeem_create(amount=Decimal("1"), count=2,
                      expires_at=timezone.now() - timedelta(minutes=1))
    assert not RedemptionCode.objects.exists()


# --- redeeming -----------------------------------------------------------------------------

@pytest.mark.django_db
def test_redeeming_credits_the_balance_records_the_ledger_entry_and_uses_the_code(
        tenant: Tenant, admin_user: Any) -> None:
    code = make_code("7.25", batch="promo")

    entry = redeem(code=code, tenant=tenant, user=admin_user)

    tenant.refresh_from_db()
    assert tenant.balance == Decimal("7.25")
    assert entry.kind == LedgerEntry.Kind.REDEMPTION
    assert entry.amount == Decimal("7.25")
    assert entry.reference == code[:13]
    assert entry.created_by == admin_user
    assert list(LedgerEntry.objects.filter(tenant=tenant)) == [entry]
    row = RedemptionCode.objects.get()
    assert row.redeemed_by == tenant
    assert row.redeemed_at is not None
    assert ledger_mismatches() == []


@pytest.mark.django_db
def test_a_code_typed_in_lower_case_with_spaces_instead_of_dashes_is_accepted(
        tenant: Tenant) -> None:
    code = make_code("3")
    typed = "  " + code.lower().replace("-", " ") + "\n"

    redeem(code=typed, tenant=tenant)

    tenant.refresh_from_db()
    assert tenant.balance == Decimal("3")


@pytest.mark.django_db
def test_redeeming_moves_the_limiters_copy_of_the_balance_once_committed(
        tenant: Tenant, django_capture_on_commit_callbacks: Any) -> None:
    client = sync_redis()
    assert client is not None, "the tests run with REDIS_URL set"
    account = rediskeys.account("tenant", tenant.pk)
    client.hset(account, "avail", 1_000_000)  # the gateway has loaded 1.00
    code = make_code("2.5")

    with django_capture_on_commit_callbacks(execute=True):
        redeem(code=code, tenant=tenant)
        assert int(client.hget(account, "avail")) == 1_000_000  # not before the commit

    assert int(client.hget(account, "avail")) == 3_500_000


@pytest.mark.django_db
@pytest.mark.parametrize("text", [
    "",
    "hello",
    "sk-tp-" + "A" * 43,
    CODE_PREFIX + "2345-6789-ABCD-EFGH-JKMN",  # 20 characters: too short
    CODE_PREFIX + "0000-0000-0000-0000-0000-0000",  # not in the alphabet
])
def test_redeeming_text_that_is_not_a_code_fails_as_invalid(tenant: Tenant, text: str) -> None:
    with pytest.raises(RedemptionError, match="not a redemption code") as err:
        redeem(code=text, tenant=tenant)
    assert err.value.reason == "invalid"
    assert not LedgerEntry.objects.exists()


@pytest.mark.django_db
def test_redeeming_an_unknown_code_fails_as_invalid_and_moves_no_money(tenant: Tenant) -> None:
    make_code("10")
    unknown = CODE_PREFIX + "2345-6789-ABCD-EFGH-JKMN-PQRS"

    with pytest.raises(RedemptionError, match="No such redemption code") as err:
        redeem(code=unknown, tenant=tenant)

    assert err.value.reason == "invalid"
    assert isinstance(err.value, ApplicationError)
    tenant.refresh_from_db()
    assert tenant.balance == 0
    assert not LedgerEntry.objects.exists()
    assert RedemptionCode.objects.get().redeemed_at is None


@pytest.mark.django_db
def test_a_code_redeems_only_once_even_for_another_tenant(tenant: Tenant) -> None:
    other, _ = tenant_get_or_create(name="globex")
    code = make_code("10")
    redeem(code=code, tenant=tenant)

    for who in (tenant, other):
        with pytest.raises(RedemptionError, match="already been used") as err:
            redeem(code=code, tenant=who)
        assert err.value.reason == "redeemed"

    tenant.refresh_from_db()
    other.refresh_from_db()
    assert (tenant.balance, other.balance) == (Decimal("10"), Decimal("0"))
    assert LedgerEntry.objects.count() == 1
    assert RedemptionCode.objects.get().redeemed_by == tenant


@pytest.mark.django_db
def test_an_expired_code_cannot_be_redeemed(tenant: Tenant) -> None:
    code = make_code("10", expires_at=timezone.now() + timedelta(hours=1))
    RedemptionCode.objects.update(expires_at=timezone.now() - timedelta(seconds=1))

    with pytest.raises(RedemptionError, match="expired") as err:
        redeem(code=code, tenant=tenant)

    assert err.value.reason == "expired"
    tenant.refresh_from_db()
    assert tenant.balance == 0
    row = RedemptionCode.objects.get()
    assert row.redeemed_at is None and row.redeemed_by is None


@pytest.mark.django_db
def test_a_code_with_an_expiry_still_ahead_can_be_redeemed(tenant: Tenant) -> None:
    code = make_code("4", expires_at=timezone.now() + timedelta(minutes=5))
    redeem(code=code, tenant=tenant)
    tenant.refresh_from_db()
    assert tenant.balance == Decimal("4")


@pytest.mark.django_db(transaction=True)
def test_concurrent_redemptions_of_one_code_by_many_tenants_credit_exactly_one() -> None:
    """Eight tenants redeem the same code at the same moment, for several codes: each
    code credits one tenant once, the others are told it was used."""
    tenants = [tenant_get_or_create(name=f"racer-{i}")[0] for i in range(8)]
    codes = redeem_create(amount=Decimal("10"), count=4)

    for code in codes:
        barrier = threading.Barrier(len(tenants))
        outcomes: list[str] = []
        lock = threading.Lock()

        def attempt(who: Tenant, code: str = code, barrier: threading.Barrier = barrier,
                    outcomes: list[str] = outcomes, lock: threading.Lock = lock) -> None:
            try:
                barrier.wait(timeout=10)
                try:
                    redeem(code=code, tenant=who)
                    result = "ok"
                except RedemptionError as exc:
                    result = exc.reason
            except Exception as exc:  # surfaces in the assertion below
                result = repr(exc)
            finally:
                connections.close_all()
            with lock:
                outcomes.append(result)

        threads = [threading.Thread(target=attempt, args=(t,)) for t in tenants]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

        assert sorted(outcomes) == ["ok"] + ["redeemed"] * (len(tenants) - 1)

    assert LedgerEntry.objects.count() == len(codes)
    total = sum((t.balance for t in Tenant.objects.filter(name__startswith="racer-")),
                Decimal(0))
    assert total == Decimal("10") * len(codes)
    assert ledger_mismatches() == []
    assert not RedemptionCode.objects.filter(redeemed_at__isnull=True).exists()


# --- the redeem command --------------------------------------------------------------------

@pytest.mark.django_db
def test_redeem_create_prints_only_the_codes_one_per_line() -> None:
    out, err = run("redeem", "create", "--amount", "2.50", "--count", "5", "--batch", "cli")

    codes = out.splitlines()
    assert len(codes) == 5
    for code in codes:
        assert CODE_RE.fullmatch(code), code
        row = RedemptionCode.objects.get(code_hash=hash_secret(normalize_code(code) or ""))
        assert (row.amount, row.batch, row.expires_at) == (Decimal("2.5"), "cli", None)
    assert "Created 5 code(s) worth 2.50 in batch 'cli'" in err
    assert not any(body(code) in err for code in codes)


@pytest.mark.django_db
def test_redeem_create_with_json_prints_the_batch_and_its_codes() -> None:
    out, _ = run("redeem", "create", "--amount", "1", "--count", "2", "--batch", "b1",
                 "--expires", "2999-01-31", "--json")

    data = json.loads(out)
    assert data["batch"] == "b1"
    assert data["amount"] == "1"
    assert data["count"] == 2
    assert data["expires_at"].startswith("2999-01-31T00:00:00")
    assert len(data["codes"]) == 2
    assert all(CODE_RE.fullmatch(c) for c in data["codes"])
    assert RedemptionCode.objects.filter(batch="b1", expires_at__year=2999).count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize(("args", "message"), [
    (["--amount", "0", "--count", "1"], "more than zero"),
    (["--amount", "ten", "--count", "1"], "not a decimal number"),
    (["--amount", "1", "--count", "0"], "between 1 and 10000"),
    (["--amount", "1", "--count", "1", "--expires", "soon"], "not an ISO date"),
    (["--amount", "1", "--count", "1", "--expires", "2001-01-01"], "past"),
])
def test_redeem_create_rejects_bad_input_and_creates_nothing(args: list[str],
                                                             message: str) -> None:
    with pytest.raises(CommandError, match=message):
        run("redeem", "create", *args)
    assert not RedemptionCode.objects.exists()


@pytest.mark.django_db
def test_redeem_list_shows_prefixes_amounts_and_state_but_never_the_codes(
        tenant: Tenant) -> None:
    used = make_code("1", batch="alpha")
    active = make_code("2", batch="alpha")
    other = make_code("3", batch="beta", expires_at=timezone.now() + timedelta(hours=1))
    expired = make_code("4", batch="beta", expires_at=timezone.now() + timedelta(hours=1))
    RedemptionCode.objects.filter(prefix=expired[:13]).update(
        expires_at=timezone.now() - timedelta(hours=1))
    redeem(code=used, tenant=tenant)

    out, _ = run("redeem", "list")

    assert len(out.splitlines()) == 4
    for code in (used, active, other, expired):
        assert code[:13] in out
        assert body(code) not in out
    line = {code: next(x for x in out.splitlines() if code[:13] in x)
            for code in (used, active, expired)}
    assert "redeemed" in line[used] and "acme" in line[used]
    assert "active" in line[active]
    assert "expired" in line[expired]

    out, _ = run("redeem", "list", "--batch", "beta", "--json")
    rows = json.loads(out)
    assert {r["prefix"] for r in rows} == {other[:13], expired[:13]}
    assert {r["state"] for r in rows} == {"active", "expired"}
    assert all(set(r) >= {"prefix", "amount", "batch", "state", "expires_at",
                          "redeemed_at", "redeemed_by"} for r in rows)
    assert not any(body(c) in out for c in (other, expired))

    out, _ = run("redeem", "list", "--state", "redeemed", "--json")
    assert [(r["prefix"], r["redeemed_by"], r["amount"]) for r in json.loads(out)] == [
        (used[:13], "acme", "1.000000")]


# --- admin ---------------------------------------------------------------------------------

@pytest.mark.django_db
def test_admin_generate_page_shows_the_new_codes_once_and_stores_them_nowhere(
        admin_client: Client, admin_user: Any) -> None:
    page = admin_client.get(reverse(GENERATE_URL))
    assert page.status_code == 200
    assert 'name="amount"' in page.content.decode()

    expires = (timezone.localtime() + timedelta(days=30)).replace(second=0, microsecond=0)
    response = admin_client.post(reverse(GENERATE_URL), {
        "amount": "15", "count": "3", "expires_at": expires.strftime("%Y-%m-%dT%H:%M"),
        "batch": "spring"})

    assert response.status_code == 200
    html = response.content.decode()
    codes = CODE_RE.findall(html)
    assert len(codes) == 3 == len(set(codes))
    assert all(html.count(code) == 1 for code in codes)
    assert "not be shown again" in html or "cannot be shown again" in html
    assert "no-store" in response["Cache-Control"]
    rows = RedemptionCode.objects.filter(batch="spring")
    assert {r.code_hash for r in rows} == {hash_secret(normalize_code(c) or "") for c in codes}
    assert all(r.created_by == admin_user and r.amount == 15 for r in rows)
    assert all(r.expires_at == expires for r in rows)
    # Nowhere else: not in a cookie, not in the session's messages, not on the next pages.
    session = admin_client.session
    stored = json.dumps({k: str(v) for k, v in session.items()})
    cookies = str(response.cookies) + str(admin_client.cookies)
    for later in (admin_client.get(reverse(GENERATE_URL)),
                  admin_client.get(reverse(CHANGELIST_URL))):
        assert later.status_code == 200
        assert not any(body(c) in later.content.decode() for c in codes)
    assert not any(body(c) in stored or body(c) in cookies for c in codes)


@pytest.mark.django_db
def test_admin_generate_form_reports_bad_input_and_creates_nothing(
        admin_client: Client) -> None:
    past = (timezone.localtime() - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    response = admin_client.post(reverse(GENERATE_URL), {
        "amount": "0", "count": "10001", "expires_at": past, "batch": ""})

    assert response.status_code == 200
    errors = response.context["form"].errors
    assert set(errors) == {"amount", "count", "expires_at"}
    assert errors["expires_at"] == ["The expiry is in the past."]
    assert not CODE_RE.search(response.content.decode())
    assert not RedemptionCode.objects.exists()


@pytest.mark.django_db
def test_admin_add_page_is_the_generate_form(admin_client: Client) -> None:
    add = admin_client.get(reverse("admin:billing_redemptioncode_add"))
    assert add.status_code == 200
    assert add.templates[0].name == "admin/billing/redemptioncode/generate.html"


@pytest.mark.django_db
def test_a_staff_user_without_the_add_permission_cannot_generate_codes() -> None:
    user = get_user_model().objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_redemptioncode"))
    staff = Client()
    staff.force_login(user)

    assert staff.get(reverse(CHANGELIST_URL)).status_code == 200
    assert staff.get(reverse(GENERATE_URL)).status_code == 403
    posted = staff.post(reverse(GENERATE_URL), {"amount": "5", "count": "1"})
    assert posted.status_code == 403
    assert not RedemptionCode.objects.exists()


@pytest.mark.django_db
def test_admin_list_renders_read_only_with_state_and_filters(
        admin_client: Client, tenant: Tenant) -> None:
    used = make_code("1", batch="alpha")
    active = make_code("2", batch="alpha")
    expired = make_code("3", batch="beta", expires_at=timezone.now() + timedelta(hours=1))
    RedemptionCode.objects.filter(batch="beta").update(
        expires_at=timezone.now() - timedelta(hours=1))
    redeem(code=used, tenant=tenant)
    prefix = {c: c[:13] for c in (used, active, expired)}

    page = admin_client.get(reverse(CHANGELIST_URL))
    assert page.status_code == 200
    html = page.content.decode()
    for code in (used, active, expired):
        assert prefix[code] in html
        assert body(code)[6:] not in html
    for state, count in (("redeemed", 1), ("active", 1), ("expired", 1)):
        assert html.count(f'<td class="field-state">{state}</td>') == count

    def listed(**params: str) -> set[str]:
        response = admin_client.get(reverse(CHANGELIST_URL), params)
        assert response.status_code == 200
        return {r.prefix for r in response.context["cl"].result_list}

    assert listed(redeemed="yes") == {prefix[used]}
    assert listed(redeemed="no") == {prefix[active], prefix[expired]}
    assert listed(expired="yes") == {prefix[expired]}
    assert listed(expired="no") == {prefix[used], prefix[active]}
    assert listed(batch__exact="alpha") == {prefix[used], prefix[active]}
    assert listed(q="acme") == {prefix[used]}

    row = RedemptionCode.objects.get(prefix=prefix[used])
    change_url = reverse("admin:billing_redemptioncode_change", args=[row.pk])
    view = admin_client.get(change_url)
    assert view.status_code == 200
    assert 'name="_save"' not in view.content.decode()
    assert str(row) in view.content.decode()
    assert row.code_hash not in view.content.decode()
    assert admin_client.post(change_url, {"amount": "999"}).status_code == 403
    delete_url = reverse("admin:billing_redemptioncode_delete", args=[row.pk])
    assert admin_client.get(delete_url).status_code == 403
    row.refresh_from_db()
    assert row.amount == 1
