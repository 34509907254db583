"""Filters of the balance, models, quickstart and playground pages."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django import template

register = template.Library()


@register.filter
def trimzeros(value: Any) -> str:
    """A price without trailing zeros, never in exponent form: 2.500000 -> 2.5, 20 -> 20."""
    try:
        text = format(Decimal(value), "f")
    except (InvalidOperation, TypeError, ValueError):
        return "" if value is None else str(value)
    return text.rstrip("0").rstrip(".") if "." in text else text
