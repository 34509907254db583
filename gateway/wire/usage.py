"""Token usage, normalised from whichever protocol reported it."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _detail(usage: dict[str, Any], name: str, field: str) -> int:
    details = usage.get(name)
    return _int(details.get(field)) if isinstance(details, dict) else 0


def from_chat(usage: Any) -> Usage | None:
    """Chat Completions ``usage``: prompt/completion tokens with optional details."""
    if not isinstance(usage, dict):
        return None
    return Usage(
        input_tokens=_int(usage.get("prompt_tokens")),
        cached_tokens=_detail(usage, "prompt_tokens_details", "cached_tokens"),
        output_tokens=_int(usage.get("completion_tokens")),
        reasoning_tokens=_detail(usage, "completion_tokens_details", "reasoning_tokens"),
    )


def from_responses(usage: Any) -> Usage | None:
    """Responses ``usage``: input/output tokens with optional details."""
    if not isinstance(usage, dict):
        return None
    return Usage(
        input_tokens=_int(usage.get("input_tokens")),
        cached_tokens=_detail(usage, "input_tokens_details", "cached_tokens"),
        output_tokens=_int(usage.get("output_tokens")),
        reasoning_tokens=_detail(usage, "output_tokens_details", "reasoning_tokens"),
    )


def to_chat(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def to_responses(usage: Usage) -> dict[str, Any]:
    """Complete, as the Codex CLI requires: integer totals and both details objects."""
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def cost_text(cost: Decimal) -> bytes:
    """A cost as a plain decimal with 6 places (micro-units, as stored): ``0.000150``."""
    return f"{cost:.6f}".encode()


def with_cost(usage: dict[str, Any], cost: Decimal) -> dict[str, Any]:
    """A usage object with ``cost`` added: a JSON number written exactly (no float
    rounding), the way OpenRouter reports ``usage.cost``. SDK usage types keep unknown
    fields and the Codex CLI ignores them."""
    usage["cost"] = orjson.Fragment(cost_text(cost))
    return usage
