"""``billing check`` compares each balance with its ledger's sum from one consistent read:
a charge committed while it runs must never show as a mismatch."""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections

from billing.models import LedgerEntry
from billing.services import ledger_mismatches, tenant_topup
from keys.models import Tenant
from keys.services import tenant_get_or_create

# Committed rows, seen by a second connection in another thread.
pytestmark = pytest.mark.django_db(transaction=True)


def in_another_connection(work: Callable[[], None]) -> None:
    """Run ``work`` to completion (committed) on a different database connection."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    if errors:
        raise errors[0]


def test_a_charge_committed_while_billing_check_reads_is_not_a_mismatch(tenant: Tenant) -> None:
    tenant_topup(tenant=tenant, amount=Decimal("10"))
    landed: list[str] = []

    def charge() -> None:
        tenant_topup(tenant=Tenant.objects.get(pk=tenant.pk), amount=Decimal("-1.5"))

    def commit_after_the_first_ledger_read(execute: Any, sql: str, params: Any, many: bool,
                                           context: Any) -> Any:
        """Right after the first statement that reads the ledger returns, another
        connection commits a charge: a second statement would see the new balance with the
        old ledger total."""
        result = execute(sql, params, many, context)
        if not landed and LedgerEntry._meta.db_table in sql:
            landed.append(sql)
            in_another_connection(charge)
        return result

    with connection.execute_wrapper(commit_after_the_first_ledger_read):
        mismatches = ledger_mismatches()
    assert landed, "the charge was not committed during the check"
    assert mismatches == []
    assert Tenant.objects.get().balance == Decimal("8.5")  # it did land
    assert ledger_mismatches() == []


def test_billing_check_still_names_every_tenant_out_of_balance(tenant: Tenant) -> None:
    other, _ = tenant_get_or_create(name="other")
    empty, _ = tenant_get_or_create(name="empty")  # no entries, balance 0: in balance
    tenant_topup(tenant=tenant, amount=Decimal("3"))
    tenant_topup(tenant=tenant, amount=Decimal("-1.25"))
    tenant_topup(tenant=other, amount=Decimal("2"))
    assert ledger_mismatches() == []
    call_command("billing", "check", stdout=StringIO())

    Tenant.objects.filter(pk=other.pk).update(balance=Decimal("5"))
    Tenant.objects.filter(pk=empty.pk).update(balance=Decimal("0.000001"))
    found = [(t.name, balance, total) for t, balance, total in ledger_mismatches()]
    assert found == [("empty", Decimal("0.000001"), Decimal(0)),
                     ("other", Decimal("5"), Decimal("2"))]
    err = StringIO()
    with pytest.raises(CommandError, match=r"2 tenant\(s\) out of balance: empty, other"):
        call_command("billing", "check", stdout=StringIO(), stderr=err)
    assert "other: balance 5.000000 != ledger total 2.000000" in err.getvalue()
