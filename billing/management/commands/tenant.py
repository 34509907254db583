"""``manage.py tenant create|list|show|update|topup|disable|enable``: tenants, their status,
their settings and their money, from the database and the limiter. Money only ever moves
through the ledger, so an opening balance given to ``create`` is a top-up entry like any other
and ``billing check`` stays clean. ``disable`` and ``update`` save through the model, as the
admin does, so every gateway process applies them within GATEWAY_SNAPSHOT_TTL."""

from __future__ import annotations

from argparse import ArgumentParser, ArgumentTypeError
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.management.base import CommandError
from django.db import transaction
from django.db.models import Count, Sum

from billing.models import LedgerEntry
from billing.services import tenant_topup
from keys import cli, limits
from keys.models import (
    MAX_CAPTURE_DAYS,
    MAX_RETENTION_DAYS,
    MONEY,
    Group,
    ResponseStorage,
    Status,
    Tenant,
)
from keys.money import from_micro
from keys.services import tenant_create, tenant_set_status, tenant_update

NAME_HELP = "The tenant's name (or its start, if only one tenant's name starts so)."


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


def retention_days(value: str) -> int:
    """``--response-retention-days``: a whole number of days, 1 to MAX_RETENTION_DAYS."""
    try:
        days = int(value)
    except ValueError:
        raise ArgumentTypeError(f"{value!r} is not a whole number of days") from None
    if not 1 <= days <= MAX_RETENTION_DAYS:
        raise ArgumentTypeError(f"{days} is not between 1 and {MAX_RETENTION_DAYS} days")
    return days


def storage_options(parser: ArgumentParser) -> None:
    parser.add_argument("--response-storage", choices=ResponseStorage.values,
                        help="Store /v1/responses answers (previous_response_id, GET "
                             "/v1/responses/{id}); off: zero data retention.")
    parser.add_argument("--response-retention-days", type=retention_days, metavar="N",
                        help=f"Days a stored response is kept (1 to {MAX_RETENTION_DAYS}; "
                             "default 30).")
    parser.add_argument("--capture-bodies", metavar="WHEN",
                        help="Capture the request and response bodies of the tenant's keys "
                             "(those that inherit) for debugging: for a duration (30m, 24h, "
                             f"3d; at most {MAX_CAPTURE_DAYS} days), until an ISO datetime, "
                             "or 'off'.")


def settings_given(opts: dict[str, Any]) -> dict[str, Any]:
    """The tenant settings among the options (those given)."""
    changes = {name: opts[name] for name in ("response_storage", "response_retention_days")
               if opts[name] is not None}
    if opts["capture_bodies"] is not None:
        changes["capture_bodies_until"] = cli.parse_capture(opts["capture_bodies"])[1]
    return changes


class Command(cli.OperatorCommand):
    help = "Create, list, show, change, disable and enable tenants; top up their balance."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="A new tenant, optionally with an opening "
                                               "balance (a ledger top-up) and a group.")
        create.add_argument("--name", required=True)
        create.add_argument("--balance", help="Opening balance (decimal, zero or more).")
        create.add_argument("--group", help="Name of an existing group (the keys' default).")
        storage_options(create)
        lst = sub.add_parser("list", help="Tenants with status, group, balance, keys, members.")
        lst.add_argument("--status", choices=Status.values)
        lst.add_argument("--group", help="Only the tenants of this group.")
        for action, text in (
                ("show", "Balance, reservations in flight, ledger total."),
                ("disable", "Refuse every key of the tenant on /v1 (403 tenant_disabled)."),
                ("enable", "Accept the tenant's keys again.")):
            sub.add_parser(action, help=text).add_argument("name", help=NAME_HELP)
        update = sub.add_parser("update", help="Change a tenant's settings (only the options "
                                               "given).")
        update.add_argument("name", help=NAME_HELP)
        storage_options(update)
        topup = sub.add_parser("topup", help="Add AMOUNT to the balance (negative deducts).")
        topup.add_argument("name", help=NAME_HELP)
        topup.add_argument("amount")
        topup.add_argument("--note", default="")

    def do_create(self, opts: dict[str, Any]) -> None:
        balance = Decimal(0)
        if opts["balance"] is not None:
            balance = parse_amount(opts["balance"], "--balance")
            if balance < 0:
                raise CommandError(f"--balance {opts['balance']!r} is negative; a tenant "
                                   "starts at zero or more (use topup to deduct later).")
        group = find_group(opts["group"]) if opts["group"] else None
        storage = settings_given(opts)
        with transaction.atomic():  # no tenant without its opening balance, or vice versa
            tenant = tenant_create(name=opts["name"], group=group, **storage)
            if balance:
                tenant_topup(tenant=tenant, amount=balance, note="opening balance")
        tenant.refresh_from_db()  # the balance as stored (six places), not as typed
        self.emit({"id": tenant.pk, **tenant_money(tenant),
                   "group": group.name if group else None},
                  f"Created tenant {tenant.name}"
                  + (f" in group {group.name}" if group else "")
                  + f": balance {tenant.balance}")

    def do_list(self, opts: dict[str, Any]) -> None:
        qs = (Tenant.objects.select_related("group")
              .annotate(n_keys=Count("keys", distinct=True),
                        n_members=Count("memberships", distinct=True)).order_by("name"))
        if opts["status"]:
            qs = qs.filter(status=opts["status"])
        if opts["group"]:
            qs = qs.filter(group=find_group(opts["group"]))
        rows = [{**as_dict(t), "keys": t.n_keys, "members": t.n_members}
                for t in qs]
        self.emit(rows, cli.table(rows, [
            ("ID", "id"), ("NAME", "name"), ("STATUS", "status"), ("GROUP", "group"),
            ("BALANCE", "balance"), ("KEYS", "keys"), ("MEMBERS", "members")])
                  if rows else "No tenants.")

    def do_show(self, opts: dict[str, Any]) -> None:
        tenant = find_tenant(opts["name"])
        info = {"id": tenant.pk, **tenant_money(tenant),
                "group": tenant.group.name if tenant.group else None,
                "response_storage": tenant.response_storage,
                "response_retention_days": tenant.response_retention_days,
                "capture_bodies_until": tenant.capture_bodies_until}
        self.emit(info, cli.fields(info))

    def do_update(self, opts: dict[str, Any]) -> None:
        tenant = find_tenant(opts["name"])
        changes = settings_given(opts)
        if not changes:
            raise CommandError("Nothing to change: give at least one option (see --help).")
        changed = tenant_update(tenant=tenant, **changes)
        what = ", ".join(changed) if changed else "nothing (the values were already so)"
        self.emit({**as_dict(tenant), "changed": changed},
                  f"Tenant {tenant.name}: changed {what}.")

    def do_topup(self, opts: dict[str, Any]) -> None:
        tenant = find_tenant(opts["name"])
        amount = parse_amount(opts["amount"], "The amount")
        if amount == 0:
            raise CommandError("The amount must be a non-zero number.")
        tenant_topup(tenant=tenant, amount=amount, note=opts["note"])
        tenant.refresh_from_db()
        self.emit({**as_dict(tenant), "amount": str(amount)},
                  f"{tenant.name}: balance {tenant.balance}")

    def do_disable(self, opts: dict[str, Any]) -> None:
        self._set_status(opts["name"], active=False)

    def do_enable(self, opts: dict[str, Any]) -> None:
        self._set_status(opts["name"], active=True)

    def _set_status(self, name: str, *, active: bool) -> None:
        tenant = find_tenant(name)
        changed = tenant_set_status(tenant=tenant, active=active)
        keys = tenant.keys.count()
        state = "enabled" if active else "disabled"
        line = f"Tenant {tenant.name} {state if changed else 'was already ' + state}"
        if changed:
            line += (f": its {keys} key(s) are accepted again (each still by its own status)."
                     if active else f": its {keys} key(s) are refused on /v1.")
        else:
            line += "."
        self.emit({**as_dict(tenant), "keys": keys, "changed": changed}, line)


def find_tenant(name: str) -> Tenant:
    return cli.find_named(Tenant.objects.select_related("group"), name, what="tenant")


def find_group(name: str) -> Group:
    return cli.find_named(Group.objects.all(), name, what="group")


def as_dict(tenant: Tenant) -> dict[str, Any]:
    return {"id": tenant.pk, "name": tenant.name, "status": tenant.status,
            "group": tenant.group.name if tenant.group else None,
            "balance": str(tenant.balance), "response_storage": tenant.response_storage,
            "response_retention_days": tenant.response_retention_days,
            "capture_bodies_until": tenant.capture_bodies_until,
            "created_at": tenant.created_at}


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
