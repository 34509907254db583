"""``manage.py billing check|rollup``."""

from __future__ import annotations

from argparse import ArgumentParser
from datetime import date, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from billing.services import ledger_mismatches


class Command(BaseCommand):
    help = "Check balances against the ledger; roll usage up by day."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("check", help="Exit non-zero, naming the tenant, if any balance differs "
                                     "from the sum of its ledger, or the limiter's accounts "
                                     "(Redis) drift from the database.")
        sub.add_parser("reconcile", help="Give back reservations of stopped processes and put "
                                         "drifting limiter accounts back in line.")
        rollup = sub.add_parser("rollup", help="Rebuild the daily rollups of a day.")
        rollup.add_argument("--date", help="YYYY-MM-DD (default: today and yesterday).")

    def handle(self, *args: Any, **opts: Any) -> None:
        from billing.reconcile import account_drifts, reconcile

        if opts["action"] == "check":
            bad = ledger_mismatches()
            for tenant, balance, total in bad:
                self.stderr.write(f"{tenant.name}: balance {balance} != ledger total {total}")
            drifts = account_drifts()
            for drift in drifts:
                self.stderr.write(drift.describe())
            problems = []
            if bad:
                problems.append(f"{len(bad)} tenant(s) out of balance: "
                                f"{', '.join(t.name for t, _, _ in bad)}")
            if drifts:
                problems.append(f"{len(drifts)} limiter account(s) drifting: "
                                f"{', '.join(d.name for d in drifts)}")
            if problems:
                raise CommandError("; ".join(problems))
            self.stdout.write("Every balance equals its ledger; the limiter agrees.")
            return
        if opts["action"] == "reconcile":
            fixed = reconcile()
            for drift in fixed:
                self.stdout.write(f"corrected: {drift.describe()}")
            self.stdout.write(f"{len(fixed)} account(s) corrected.")
            return
        from billing.rollups import rollup_day

        if opts["date"]:
            try:
                days = [date.fromisoformat(opts["date"])]
            except ValueError as exc:
                raise CommandError(f"--date {opts['date']!r} is not YYYY-MM-DD") from exc
        else:
            today = timezone.localdate()
            days = [today - timedelta(days=1), today]
        for day in days:
            rows = rollup_day(day)
            self.stdout.write(f"{day}: {rows} rollup row(s)")
