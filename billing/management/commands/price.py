"""``manage.py price set|list``: model prices per million tokens (decimal, exact)."""

from __future__ import annotations

import json
from argparse import ArgumentParser
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from billing.models import ModelPrice


def _decimal(value: str | None, name: str) -> Decimal | None:
    if value is None:
        return None
    try:
        amount = Decimal(value)
    except InvalidOperation as exc:
        raise CommandError(f"--{name} {value!r} is not a decimal number") from exc
    if amount < 0:
        raise CommandError(f"--{name} cannot be negative")
    return amount


class Command(BaseCommand):
    help = "Set and list model prices (per million tokens, or per request)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        put = sub.add_parser("set", help="Create or update the price of a model or wildcard.")
        put.add_argument("model", help="Model name or wildcard (gpt-5*).")
        put.add_argument("--input", help="Input tokens, per million.")
        put.add_argument("--cached", help="Cached input tokens, per million (default: input).")
        put.add_argument("--output", help="Output tokens, per million.")
        put.add_argument("--reasoning", help="Reasoning tokens, per million (default: output).")
        put.add_argument("--per-request", help="Fixed price per request.")
        lst = sub.add_parser("list", help="List prices.")
        lst.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["action"] == "list":
            rows = [_as_dict(p) for p in ModelPrice.objects.all()]
            if opts["json"]:
                self.stdout.write(json.dumps(rows))
                return
            self.stdout.write(f"{'MODEL':30} {'INPUT':>12} {'CACHED':>12} {'OUTPUT':>12} "
                              f"{'REASONING':>12} {'PER REQ':>12}")
            for r in rows:
                self.stdout.write(
                    f"{r['model']:30} {r['input']:>12} {r['cached'] or '(input)':>12} "
                    f"{r['output']:>12} {r['reasoning'] or '(output)':>12} "
                    f"{r['per_request']:>12}")
            return
        price, created = ModelPrice.objects.get_or_create(model=opts["model"])
        for option, field in (("input", "input_per_million"), ("output", "output_per_million"),
                              ("per_request", "per_request")):
            value = _decimal(opts[option], option.replace("_", "-"))
            if value is not None:
                setattr(price, field, value)
        for option, field in (("cached", "cached_input_per_million"),
                              ("reasoning", "reasoning_per_million")):
            value = _decimal(opts[option], option)
            if value is not None:
                setattr(price, field, value)
        price.full_clean()
        price.save()  # new requests see it within GATEWAY_SNAPSHOT_TTL
        self.stdout.write(f"{'Created' if created else 'Updated'} price of {price.model}: "
                          f"{json.dumps(_as_dict(price))}")


def _as_dict(p: ModelPrice) -> dict[str, Any]:
    def text(value: Decimal | None) -> str | None:
        return None if value is None else str(value)

    return {"model": p.model, "input": text(p.input_per_million),
            "cached": text(p.cached_input_per_million), "output": text(p.output_per_million),
            "reasoning": text(p.reasoning_per_million), "per_request": text(p.per_request)}
