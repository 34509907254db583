"""Model names and wildcards: the one rule for matching a model against a pattern.

Every place that matches a model name against an operator's list uses these functions:
key and group allow/deny lists (``keys.snapshots.KeySnapshot.allows``, the portal's model
pages and key snippets), the models an upstream serves (``gateway.routing``), model rules
(``gateway.rules``) and prices (``billing.pricing``).

The rule: a name holding ``*``, ``?`` or ``[`` is a shell-style wildcard (``fnmatch``:
``gpt-5*``, ``o?``, ``gpt-[45]o``); any other name matches only itself. Matching is
case-sensitive everywhere (``fnmatch.fnmatchcase``, the same on every OS): model names are
identifiers, and ``GPT-5`` is not ``gpt-5`` to an upstream either.

``keys`` is the lowest app, so the gateway, billing and the portal may all import this.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Iterable

WILDCARD_CHARS = "*?["


def is_pattern(name: str) -> bool:
    """Whether ``name`` is a wildcard rather than a concrete model name."""
    return "*" in name or "?" in name or "[" in name


def matches(pattern: str, model: str) -> bool:
    """``model`` is ``pattern``, or matches it as a wildcard (case-sensitively)."""
    if "*" in pattern or "?" in pattern or "[" in pattern:
        return fnmatch.fnmatchcase(model, pattern)
    return pattern == model


def matches_any(patterns: Iterable[str], model: str) -> bool:
    return any(matches(p, model) for p in patterns)


def permits(allowed: Collection[str], denied: Iterable[str], model: str) -> bool:
    """An allow-list and a deny-list of names or wildcards: a denied model never passes;
    an empty allow-list allows every other model."""
    if any(matches(p, model) for p in denied):
        return False
    return not allowed or any(matches(p, model) for p in allowed)


def concrete(names: Iterable[str]) -> list[str]:
    """The names that are not wildcards (what can be listed, or sent as a model)."""
    return [n for n in names if not is_pattern(n)]


def wildcards(names: Iterable[str]) -> list[str]:
    return [n for n in names if is_pattern(n)]
