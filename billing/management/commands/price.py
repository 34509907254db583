"""``manage.py price set|list``: model prices per million tokens (decimal, exact)."""

from __future__ import annotations

from argparse import ArgumentParser
from decimal import Decimal
from typing import Any

from django.core.management.base import CommandError
from django.db import transaction

from billing.models import ModelPrice
from keys import cli


def _decimal(value: str | None, name: str) -> Decimal | None:
    amount = cli.parse_decimal(value, f"--{name}")
    if amount is None:
        return None
    if amount < 0:
        raise CommandError(f"--{name} cannot be negative")
    return amount


class Command(cli.OperatorCommand):
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
        sub.add_parser("list", help="List prices.")

    def do_list(self, opts: dict[str, Any]) -> None:
        rows = [_as_dict(p) for p in ModelPrice.objects.all()]
        shown = [{**r, "cached": r["cached"] or "(input)",
                  "reasoning": r["reasoning"] or "(output)"} for r in rows]
        self.emit(rows, cli.table(shown, [
            ("MODEL", "model"), ("INPUT", "input"), ("CACHED", "cached"), ("OUTPUT", "output"),
            ("REASONING", "reasoning"), ("PER REQ", "per_request")]) if rows else "No prices.")

    def do_set(self, opts: dict[str, Any]) -> None:
        model = (opts["model"] or "").strip()
        if not model:
            raise CommandError("Name the model (or a wildcard like gpt-5*).")
        values = {field: _decimal(opts[option], option.replace("_", "-"))
                  for option, field in (("input", "input_per_million"),
                                        ("output", "output_per_million"),
                                        ("per_request", "per_request"),
                                        ("cached", "cached_input_per_million"),
                                        ("reasoning", "reasoning_per_million"))}
        with transaction.atomic():  # a refused price leaves no new row behind
            price, created = ModelPrice.objects.get_or_create(model=model)
            for field, value in values.items():
                if value is not None:
                    setattr(price, field, value)
            price.full_clean()
            price.save()  # new requests see it within GATEWAY_SNAPSHOT_TTL
        price.refresh_from_db()  # the prices as stored (six places), not as typed
        data = {**_as_dict(price), "created": created}
        self.emit(data, f"{'Created' if created else 'Updated'} price of {price.model}: "
                        + ", ".join(f"{k} {cli.text(v)}" for k, v in _as_dict(price).items()
                                    if k != "model"))


def _as_dict(p: ModelPrice) -> dict[str, Any]:
    def text(value: Decimal | None) -> str | None:
        return None if value is None else str(value)

    return {"model": p.model, "input": text(p.input_per_million),
            "cached": text(p.cached_input_per_million), "output": text(p.output_per_million),
            "reasoning": text(p.reasoning_per_million), "per_request": text(p.per_request)}
