"""``manage.py redeem create|list``: redemption codes for operators.

``create`` prints the new codes, one per line and nothing else on stdout (the summary goes
to stderr), so ``manage.py redeem create --amount 10 --count 50 > codes.txt`` is the whole
batch; they are never shown again. ``list`` shows prefixes and state, never codes.
"""

from __future__ import annotations

import json
from argparse import ArgumentParser
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from billing.models import RedemptionCode
from billing.redemption import code_state, redeem_create
from keys.services import ApplicationError

STATES = ("active", "redeemed", "expired")


def _expiry(value: str) -> datetime:
    parsed = parse_datetime(value)
    if parsed is None:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise CommandError(f"--expires {value!r} is not an ISO date or datetime") from exc
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed)
    return parsed


def _as_dict(row: RedemptionCode, now: datetime) -> dict[str, Any]:
    return {
        "id": row.pk, "prefix": row.prefix, "amount": str(row.amount), "batch": row.batch,
        "state": code_state(row, now),
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        "created_at": row.created_at.isoformat(),
        "redeemed_at": row.redeemed_at.isoformat() if row.redeemed_at else None,
        "redeemed_by": row.redeemed_by.name if row.redeemed_by else None,
    }


class Command(BaseCommand):
    help = "Generate and list redemption codes."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="Generate codes; prints them once.")
        create.add_argument("--amount", required=True, help="Credit per code (decimal).")
        create.add_argument("--count", required=True, type=int, help="How many codes.")
        create.add_argument("--expires", help="ISO date/datetime after which codes are void.")
        create.add_argument("--batch", default="", help="A name to find the batch by later.")
        create.add_argument("--json", action="store_true",
                            help="Print one JSON object with the batch and its codes.")
        lst = sub.add_parser("list", help="List codes by prefix (never the codes).")
        lst.add_argument("--batch")
        lst.add_argument("--state", choices=STATES)
        lst.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["action"] == "list":
            self._list(opts)
            return
        try:
            amount = Decimal(opts["amount"])
        except InvalidOperation as exc:
            raise CommandError(f"--amount {opts['amount']!r} is not a decimal number") from exc
        expires_at = _expiry(opts["expires"]) if opts["expires"] else None
        try:
            codes = redeem_create(amount=amount, count=opts["count"], expires_at=expires_at,
                                  batch=opts["batch"])
        except ApplicationError as exc:
            raise CommandError(str(exc)) from exc
        batch = opts["batch"].strip()
        if opts["json"]:
            self.stdout.write(json.dumps({
                "batch": batch, "amount": str(amount), "count": len(codes),
                "expires_at": expires_at.isoformat() if expires_at else None, "codes": codes,
            }))
            return
        where = f" in batch {batch!r}" if batch else ""
        until = f", valid until {expires_at.isoformat()}" if expires_at else ""
        self.stderr.write(f"Created {len(codes)} code(s) worth {amount}{where}{until}. "
                          "Copy them now; they are not shown again.")
        for code in codes:
            self.stdout.write(code)

    def _list(self, opts: dict[str, Any]) -> None:
        qs = RedemptionCode.objects.select_related("redeemed_by").order_by("created_at", "id")
        if opts["batch"] is not None:
            qs = qs.filter(batch=opts["batch"])
        now = timezone.now()
        rows = [_as_dict(r, now) for r in qs]
        if opts["state"]:
            rows = [r for r in rows if r["state"] == opts["state"]]
        if opts["json"]:
            self.stdout.write(json.dumps(rows))
            return
        for r in rows:
            used = ""
            if r["state"] == "redeemed":
                used = f"  by {r['redeemed_by'] or '?'} at {r['redeemed_at']}"
            expires = r["expires_at"] or "never"
            self.stdout.write(f"{r['prefix']:14} {r['amount']:>16} {r['state']:8} "
                              f"{r['batch'] or '-':20} expires {expires}{used}")
