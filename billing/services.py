"""Writes that move money. Every balance change goes through ``ledger_post``."""

from __future__ import annotations

from decimal import Decimal

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import DecimalField, F, OuterRef, Subquery, Sum, Value
from django.db.models.functions import Coalesce

from billing.models import LedgerEntry
from keys import limits
from keys.models import MONEY, Tenant
from keys.money import to_micro
from portal.audit.record import log_ledger


@transaction.atomic
def ledger_post(*, tenant: Tenant, kind: str, amount: Decimal, reference: str = "",
                note: str = "", user: User | None = None,
                limiter_knows: bool = False) -> LedgerEntry:
    """Add ``amount`` (negative to deduct) to the balance and record why, in one
    transaction. Once committed, the limiter's copy of the balance (which requests in
    flight reserve against) moves by the same amount, unless it already has
    (``limiter_knows``: charges, which the limiter settled when the request ended)."""
    if kind not in LedgerEntry.Kind.values:
        raise ValueError(f"unknown ledger kind {kind!r}")
    entry = LedgerEntry.objects.create(tenant=tenant, kind=kind, amount=amount,
                                       reference=reference[:100], note=note[:300],
                                       created_by=user)
    Tenant.objects.filter(pk=tenant.pk).update(balance=F("balance") + amount)
    tenant.refresh_from_db(fields=["balance"])
    if kind != LedgerEntry.Kind.CHARGE:  # charges are the usage log's, not the audit log's
        # The row stays locked by the update until commit: before + amount == after.
        log_ledger(entry, balance_before=tenant.balance - amount,
                   balance_after=tenant.balance)
    if not limiter_knows and amount:
        delta, tenant_id = to_micro(amount), tenant.pk
        transaction.on_commit(lambda: limits.limiter().adjust_account("tenant", tenant_id,
                                                                      delta))
    return entry


def tenant_topup(*, tenant: Tenant, amount: Decimal, note: str = "",
                 user: User | None = None) -> LedgerEntry:
    kind = LedgerEntry.Kind.TOPUP if amount >= 0 else LedgerEntry.Kind.ADJUSTMENT
    return ledger_post(tenant=tenant, kind=kind, amount=amount, note=note, user=user)


def ledger_mismatches() -> list[tuple[Tenant, Decimal, Decimal]]:
    """(tenant, balance, ledger total) for every tenant whose balance is not its ledger's
    sum.

    Balances and ledger sums are read by one statement, so both come from one snapshot:
    read in two queries, a charge committed between them (the usage writer posts one per
    batch) showed as a false mismatch. The comparison is made in Python, on the values
    the DecimalField converters give, so SQLite's float arithmetic cannot skew it."""
    ledger_sum = (LedgerEntry.objects.filter(tenant=OuterRef("pk")).order_by()
                  .values("tenant").annotate(total=Sum("amount")).values("total"))
    money = DecimalField(**MONEY)
    tenants = Tenant.objects.annotate(
        ledger_total=Coalesce(Subquery(ledger_sum, output_field=money), Value(Decimal(0)),
                              output_field=money),
    ).order_by("name")
    return [(t, t.balance, t.ledger_total) for t in tenants if t.balance != t.ledger_total]
