"""``manage.py tenant create|show|topup``: a tenant's money, from the database and the
limiter. Money only ever moves through the ledger, so an opening balance given to ``create``
is a top-up entry like any other and ``billing check`` stays clean."""

from __future__ import annotations

import json
from argparse import ArgumentParser
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.db.models import Sum

from billing.models import LedgerEntry
from billing.services import tenant_topup
from keys import limits
from keys.models import MONEY, Group, Tenant
from keys.money import from_micro
from keys.services import ApplicationError, tenant_create


def parse_amount(text: str, what: str) -> Decimal:
    """A finite decimal the balance column can hold exactly: more decimal places than it
    keeps would be rounded differently in the ledger and in the sum it must equal."""
    try:
        amount = Decimal(text.strip())
    except InvalidOperation as exc:
        raise CommandError(f"{what} {text!r} is not a decimal amount") from exc
    if not amount.is_finite():
        raise CommandError(f"{what} {text!r} is not a finite amount")
    places = MONEY["decimal_places"]
    if -amount.as_tuple().exponent > places:  # type: ignore[operator]
        raise CommandError(f"{what} {text!r} has more than {places} decimal places")
    if abs(amount) >= Decimal(10) ** (MONEY["max_digits"] - places):
        raise CommandError(f"{what} {text!r} is too large")
    return amount


class Command(BaseCommand):
    help = "Create a tenant, show its balance or top it up."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="A new tenant, optionally with an opening "
                                               "balance (a ledger top-up) and a group.")
        create.add_argument("--name", required=True)
        create.add_argument("--balance", help="Opening balance (decimal, zero or more).")
        create.add_argument("--group", help="Name of an existing group (the keys' default).")
        create.add_argument("--json", action="store_true")
        show = sub.add_parser("show", help="Balance, reservations in flight, ledger total.")
        show.add_argument("name")
        show.add_argument("--json", action="store_true")
        topup = sub.add_parser("topup", help="Add AMOUNT to the balance (negative deducts).")
        topup.add_argument("name")
        topup.add_argument("amount")
        topup.add_argument("--note", default="")

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["action"] == "create":
            self._create(opts)
            return
        tenant = Tenant.objects.filter(name=opts["name"]).first()
        if tenant is None:
            raise CommandError(f"No tenant named {opts['name']!r}.")
        if opts["action"] == "topup":
            amount = parse_amount(opts["amount"], "The amount")
            if amount == 0:
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

    def _create(self, opts: dict[str, Any]) -> None:
        balance = Decimal(0)
        if opts["balance"] is not None:
            balance = parse_amount(opts["balance"], "--balance")
            if balance < 0:
                raise CommandError(f"--balance {opts['balance']!r} is negative; a tenant "
                                   "starts at zero or more (use topup to deduct later).")
        group = None
        if opts["group"]:
            group = Group.objects.filter(name=opts["group"]).first()
            if group is None:
                raise CommandError(f"No group named {opts['group']!r}.")
        try:
            with transaction.atomic():  # no tenant without its opening balance, or vice versa
                tenant = tenant_create(name=opts["name"], group=group)
                if balance:
                    tenant_topup(tenant=tenant, amount=balance, note="opening balance")
        except (ApplicationError, ValidationError) as exc:
            raise CommandError(" ".join(getattr(exc, "messages", [str(exc)]))) from exc
        tenant.refresh_from_db()  # the balance as stored (six places), not as typed
        if opts["json"]:
            self.stdout.write(json.dumps({"id": tenant.pk, **tenant_money(tenant),
                                          "group": group.name if group else None}))
            return
        self.stdout.write(f"Created tenant {tenant.name}"
                          + (f" in group {group.name}" if group else "")
                          + f": balance {tenant.balance}")


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
