"""Prices and cost maths. Pure functions over frozen values; no I/O.

Money is ``Decimal`` with 6 places in the database and integer micro-units (1e-6 of the
currency) in the limiter, so reservations are exact integers in Redis.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from keys.money import MICRO, from_micro, to_micro
from keys.patterns import is_pattern, matches
from portal.infra.snapshots import LayeredCache

__all__ = ["MICRO", "from_micro", "to_micro"]  # re-exported for callers of pricing

MILLION = Decimal(1_000_000)
ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Price:
    """Per-million-token prices (and a fixed per-request price) of one model."""

    input: Decimal = ZERO
    cached_input: Decimal | None = None  # None: same as input
    output: Decimal = ZERO
    reasoning: Decimal | None = None  # None: same as output
    per_request: Decimal = ZERO

    @property
    def is_free(self) -> bool:
        return not (self.input or self.cached_input or self.output or self.reasoning
                    or self.per_request)


FREE = Price()


def cost(price: Price, *, input_tokens: int, cached_tokens: int, output_tokens: int,
         reasoning_tokens: int, multiplier: Decimal = Decimal(1)) -> Decimal:
    """The real cost of a request. Cached tokens are part of the input and reasoning tokens
    part of the output (as every OpenAI-style usage object reports them)."""
    cached = min(cached_tokens, input_tokens)
    reasoning = min(reasoning_tokens, output_tokens)
    cached_price = price.input if price.cached_input is None else price.cached_input
    reasoning_price = price.output if price.reasoning is None else price.reasoning
    tokens = (
        (input_tokens - cached) * price.input
        + cached * cached_price
        + (output_tokens - reasoning) * price.output
        + reasoning * reasoning_price
    )
    return ((tokens / MILLION + price.per_request) * multiplier).quantize(MICRO)


def estimate(price: Price, *, input_tokens: int, max_output_tokens: int,
             multiplier: Decimal = Decimal(1)) -> Decimal:
    """The most a request can cost: its input at the full (uncached) rate, its output cap at
    the dearer of the output and reasoning rates."""
    out_price = max(price.output, price.reasoning or ZERO)
    tokens = input_tokens * price.input + max_output_tokens * out_price
    return ((tokens / MILLION + price.per_request) * multiplier).quantize(MICRO)


@dataclass(frozen=True, slots=True)
class PriceTable:
    exact: dict[str, Price]
    patterns: tuple[tuple[str, Price], ...]  # most specific (longest) first

    def lookup(self, model: str) -> Price:
        price = self.exact.get(model)
        if price is not None:
            return price
        for pattern, candidate in self.patterns:
            if matches(pattern, model):
                return candidate
        return FREE


def _dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(value)


def build_price_table(_ident: str) -> dict[str, Any]:
    from billing.models import ModelPrice

    rows = []
    for p in ModelPrice.objects.all():
        rows.append({
            "model": p.model, "input": str(p.input_per_million),
            "cached_input": None if p.cached_input_per_million is None
            else str(p.cached_input_per_million),
            "output": str(p.output_per_million),
            "reasoning": None if p.reasoning_per_million is None
            else str(p.reasoning_per_million),
            "per_request": str(p.per_request),
        })
    return {"prices": rows}


def decode_price_table(data: dict[str, Any]) -> PriceTable:
    exact: dict[str, Price] = {}
    patterns: list[tuple[str, Price]] = []
    for row in data["prices"]:
        price = Price(input=Decimal(row["input"]), cached_input=_dec(row["cached_input"]),
                      output=Decimal(row["output"]), reasoning=_dec(row["reasoning"]),
                      per_request=Decimal(row["per_request"]))
        if is_pattern(row["model"]):
            patterns.append((row["model"], price))
        else:
            exact[row["model"]] = price
    patterns.sort(key=lambda item: (-len(item[0].replace("*", "")), item[0]))
    return PriceTable(exact=exact, patterns=tuple(patterns))


price_tables: LayeredCache[PriceTable] = LayeredCache(
    "prices", build_price_table, decode_price_table
)


async def aget_price_table() -> PriceTable:
    table = await price_tables.get("all")
    return table if table is not None else PriceTable(exact={}, patterns=())
