"""``manage.py usagepartitions [--create [--ahead N]] [--json]``."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from keys import cli


class Command(cli.OperatorCommand):
    help = ("List the usage log's monthly partitions (PostgreSQL), oldest first, with their "
            "rows (the planner's estimate); --create makes the current month's and those "
            "ahead first, and moves rows out of the default partition.")

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--create", action="store_true",
                            help="Create missing partitions first (what the daily task "
                                 "billing.create_usage_partitions does).")
        parser.add_argument("--ahead", type=int, default=None,
                            help="Months after the current one to create (default: "
                                 "BILLING_USAGE_PARTITION_MONTHS_AHEAD).")

    def run(self, opts: dict[str, Any]) -> None:
        from billing import partitions

        created = partitions.ensure_partitions(ahead=opts["ahead"]) if opts["create"] else []
        found = partitions.partitions()
        rows = [{"name": p.name, "from": p.start, "to": p.end, "default": p.is_default,
                 "rows_estimate": max(p.rows, 0)} for p in found]
        lines = [f"{p.name}: " + ("default (rows of months without a partition)"
                                  if p.is_default else f"{p.start:%Y-%m-%d} .. {p.end:%Y-%m-%d}")
                 + f", ~{max(p.rows, 0)} rows" for p in found]
        if not partitions.is_partitioned():
            lines = ["The usage log is not partitioned (SQLite, or migration 0009 not run)."]
        lines += [f"created: {name}" for name in created]
        self.emit({"partitioned": partitions.is_partitioned(), "partitions": rows,
                   "created": created}, lines)
