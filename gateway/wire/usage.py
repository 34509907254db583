"""Token usage, normalised from whichever protocol reported it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
