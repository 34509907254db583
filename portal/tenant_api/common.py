"""Schemas and helpers the tenant API's routers share."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings
from ninja import Schema

from portal.selectors.dashboard import Totals

# For free-text filters: PostgreSQL refuses a NUL in any text it is given, so a query
# string with one is a 422 here rather than a database error.
NO_NUL = r"^[^\x00]*$"


def money(value: Decimal | None) -> str | None:
    """Exact decimal text (6 places as stored), never a float."""
    return None if value is None else format(value, "f")


def currency() -> str:
    return getattr(settings, "BILLING_CURRENCY", "USD") or "USD"


class CountsOut(Schema):
    requests: int
    errors: int
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost: str


class TotalsOut(CountsOut):
    median_latency_ms: int | None = None
    median_ttfb_ms: int | None = None


def totals_out(t: Totals) -> dict[str, Any]:
    return {"requests": t.requests, "errors": t.errors, "input_tokens": t.input_tokens,
            "cached_tokens": t.cached_tokens, "output_tokens": t.output_tokens,
            "reasoning_tokens": t.reasoning_tokens, "cost": money(t.cost),
            "median_latency_ms": t.median_latency_ms, "median_ttfb_ms": t.median_ttfb_ms}
