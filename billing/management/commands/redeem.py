"""``manage.py redeem create|list``: redemption codes for operators.

``create`` prints the new codes, one per line and nothing else on stdout (the summary goes
to stderr), so ``manage.py redeem create --amount 10 --count 50 > codes.txt`` is the whole
batch; they are never shown again. ``list`` shows prefixes and state, never codes.
"""

from __future__ import annotations

from argparse import ArgumentParser
from datetime import datetime
from typing import Any

from django.utils import timezone

from billing.models import RedemptionCode
from billing.redemption import code_state, redeem_create
from keys import cli

STATES = ("active", "redeemed", "expired")


def _as_dict(row: RedemptionCode, now: datetime) -> dict[str, Any]:
    return {
        "id": row.pk, "prefix": row.prefix, "amount": str(row.amount), "batch": row.batch,
        "state": code_state(row, now),
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        "created_at": row.created_at.isoformat(),
        "redeemed_at": row.redeemed_at.isoformat() if row.redeemed_at else None,
        "redeemed_by": row.redeemed_by.name if row.redeemed_by else None,
    }


class Command(cli.OperatorCommand):
    help = "Generate and list redemption codes."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="Generate codes; prints them once.")
        create.add_argument("--amount", required=True, help="Credit per code (decimal).")
        create.add_argument("--count", required=True, type=int, help="How many codes.")
        create.add_argument("--expires", help="ISO date/datetime after which codes are void.")
        create.add_argument("--batch", default="", help="A name to find the batch by later.")
        lst = sub.add_parser("list", help="List codes by prefix (never the codes).")
        lst.add_argument("--batch")
        lst.add_argument("--state", choices=STATES)

    def do_create(self, opts: dict[str, Any]) -> None:
        amount = cli.parse_decimal(opts["amount"], "--amount")
        assert amount is not None  # --amount is required
        expires_at = cli.parse_when(opts["expires"]) if opts["expires"] else None
        codes = redeem_create(amount=amount, count=opts["count"], expires_at=expires_at,
                              batch=opts["batch"])
        batch = opts["batch"].strip()
        if self.json:
            self.emit({"batch": batch, "amount": str(amount), "count": len(codes),
                       "expires_at": expires_at, "codes": codes})
            return
        where = f" in batch {batch!r}" if batch else ""
        until = f", valid until {expires_at.isoformat()}" if expires_at else ""
        self.stderr.write(f"Created {len(codes)} code(s) worth {amount}{where}{until}. "
                          "Copy them now; they are not shown again.")
        for code in codes:
            self.stdout.write(code)

    def do_list(self, opts: dict[str, Any]) -> None:
        qs = RedemptionCode.objects.select_related("redeemed_by").order_by("created_at", "id")
        if opts["batch"] is not None:
            qs = qs.filter(batch=opts["batch"])
        now = timezone.now()
        rows = [_as_dict(r, now) for r in qs]
        if opts["state"]:
            rows = [r for r in rows if r["state"] == opts["state"]]
        if self.json:
            self.emit(rows)
            return
        for r in rows:
            used = ""
            if r["state"] == "redeemed":
                used = f"  by {r['redeemed_by'] or '?'} at {r['redeemed_at']}"
            expires = r["expires_at"] or "never"
            self.stdout.write(f"{r['prefix']:14} {r['amount']:>16} {r['state']:8} "
                              f"{r['batch'] or '-':20} expires {expires}{used}")
