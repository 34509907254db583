"""Money: Decimal with 6 places in the database, integer micro-units in the limiter."""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

MICRO = Decimal("0.000001")


def to_micro(amount: Decimal, *, round_up: bool = False) -> int:
    rounding = ROUND_CEILING if round_up else ROUND_HALF_UP
    return int((amount / MICRO).to_integral_value(rounding=rounding))


def from_micro(units: int) -> Decimal:
    return (Decimal(units) * MICRO).quantize(MICRO)
