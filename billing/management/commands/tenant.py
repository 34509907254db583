"""``manage.py tenant show|topup``: a tenant's money, from the database and the limiter."""

from __future__ import annotations

import json
from argparse import ArgumentParser
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Sum

from billing.models import LedgerEntry
from billing.services import tenant_topup
from keys import limits
from keys.models import Tenant
from keys.money import from_micro


class Command(BaseCommand):
    help = "Show a tenant's balance or top it up."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        show = sub.add_parser("show", help="Balance, reservations in flight, ledger total.")
        show.add_argument("name")
        show.add_argument("--json", action="store_true")
        topup = sub.add_parser("topup", help="Add AMOUNT to the balance (negative deducts).")
        topup.add_argument("name")
        topup.add_argument("amount")
        topup.add_argument("--note", default="")

    def handle(self, *args: Any, **opts: Any) -> None:
        tenant = Tenant.objects.filter(name=opts["name"]).first()
        if tenant is None:
            raise CommandError(f"No tenant named {opts['name']!r}.")
        if opts["action"] == "topup":
            try:
                amount = Decimal(opts["amount"])
            except InvalidOperation as exc:
                raise CommandError(f"{opts['amount']!r} is not a decimal amount") from exc
            if not amount.is_finite() or amount == 0:
                raise CommandError("The amount must be a non-zero number.")
            tenant_topup(tenant=tenant, amount=amount, note=opts["note"])
            self.stdout.write(f"{tenant.name}: balance {tenant.balance}")
            return
        info = tenant_money(tenant)
        if opts["json"]:
            self.stdout.write(json.dumps(info))
            return
        for name, value in info.items():
            self.stdout.write(f"{name:14} {value}")


def tenant_money(tenant: Tenant) -> dict[str, Any]:
    """balance (database), available (what the limiter lets requests reserve against),
    reserved (held by requests in flight, plus charges settled but not yet written),
    ledger_total (must equal the balance)."""
    ledger = LedgerEntry.objects.filter(tenant=tenant).aggregate(total=Sum("amount"))["total"]
    try:
        units = limits.limiter().available("tenant", tenant.pk)
    except Exception:  # Redis down: the database figures still stand
        units = None
    available = from_micro(units) if units is not None else None
    return {
        "name": tenant.name,
        "status": tenant.status,
        "balance": str(tenant.balance),
        "available": str(available) if available is not None else None,
        "reserved": str(tenant.balance - available) if available is not None else "0",
        "ledger_total": str(ledger or Decimal(0)),
    }
