"""``manage.py billing check|reconcile|rollup``."""

from __future__ import annotations

import dataclasses
from argparse import ArgumentParser
from datetime import date, timedelta
from typing import Any

from django.core.management.base import CommandError

from billing.services import ledger_mismatches
from keys import cli


class Command(cli.OperatorCommand):
    help = "Check balances against the ledger; roll usage up by day or hour."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("check", help="Exit non-zero, naming the tenant, if any balance differs "
                                     "from the sum of its ledger, or the limiter's accounts "
                                     "(Redis) drift from the database.")
        sub.add_parser("reconcile", help="Give back reservations of stopped processes and put "
                                         "drifting limiter accounts back in line.")
        rollup = sub.add_parser("rollup", help="Rebuild the daily rollups of a day, or the "
                                               "hourly rollups (--hourly).")
        rollup.add_argument("--date", help="YYYY-MM-DD (default: every day since the last "
                                           "complete one rolled up, at least today and "
                                           "yesterday; with --hourly: every hour of that "
                                           "local day).")
        rollup.add_argument("--hourly", action="store_true",
                            help="The hourly rollups (default: every hour since the last "
                                 "complete one rolled up, at least the current and the "
                                 "previous hour).")

    def do_check(self, opts: dict[str, Any]) -> None:
        from billing.reconcile import account_drifts

        bad = ledger_mismatches()
        drifts = account_drifts()
        problems = []
        if bad:
            problems.append(f"{len(bad)} tenant(s) out of balance: "
                            f"{', '.join(t.name for t, _, _ in bad)}")
        if drifts:
            problems.append(f"{len(drifts)} limiter account(s) drifting: "
                            f"{', '.join(d.name for d in drifts)}")
        if self.json:  # the report on stdout, and still a non-zero exit when not clean
            self.emit({"ok": not problems,
                       "mismatches": [{"tenant": t.name, "balance": balance,
                                       "ledger_total": total} for t, balance, total in bad],
                       "drifts": [dataclasses.asdict(d) for d in drifts]})
        else:
            for tenant, balance, total in bad:
                self.stderr.write(f"{tenant.name}: balance {balance} != ledger total {total}")
            for drift in drifts:
                self.stderr.write(drift.describe())
        if problems:
            raise CommandError("; ".join(problems))
        if not self.json:
            self.stdout.write("Every balance equals its ledger; the limiter agrees.")

    def do_reconcile(self, opts: dict[str, Any]) -> None:
        from billing.reconcile import reconcile

        fixed = reconcile()
        self.emit({"corrected": [dataclasses.asdict(d) for d in fixed]},
                  [f"corrected: {d.describe()}" for d in fixed]
                  + [f"{len(fixed)} account(s) corrected."])

    def do_rollup(self, opts: dict[str, Any]) -> None:
        from billing.rollups import (
            day_bounds,
            hour_start,
            rollup_day,
            rollup_hour,
            rollup_recent_days,
            rollup_recent_hours,
        )

        day = None
        if opts["date"]:
            try:
                day = date.fromisoformat(opts["date"].strip())
            except ValueError:
                raise CommandError(f"--date {opts['date']!r} is not YYYY-MM-DD") from None
        counts: dict[str, int]
        if day is None:
            counts = rollup_recent_hours() if opts["hourly"] else rollup_recent_days()
        elif opts["hourly"]:
            start, end = day_bounds(day)
            hour, counts = hour_start(start), {}
            while hour < end:
                counts[f"{hour:%Y-%m-%d %H}:00 UTC"] = rollup_hour(hour)
                hour += timedelta(hours=1)
        else:
            counts = {str(day): rollup_day(day)}
        self.emit({"rollups": counts},
                  [f"{label}: {rows} rollup row(s)" for label, rows in counts.items()])
