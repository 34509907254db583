"""Apply ModelRules to an upstream body; the rules are cached like routes (no SQL)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from keys.patterns import matches
from portal.infra.snapshots import LayeredCache


@dataclass(frozen=True, slots=True)
class Rule:
    pattern: str
    protocol: str
    force: dict[str, Any]
    defaults: dict[str, Any]
    drop: tuple[str, ...]


def _merge(base: dict[str, Any], over: dict[str, Any], *, overwrite: bool) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        current = out.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            out[key] = _merge(current, value, overwrite=overwrite)
        elif overwrite or key not in out or out[key] is None:
            out[key] = copy.deepcopy(value)
    return out


def apply_rules(rules: tuple[Rule, ...], model: str, protocol: str,
                body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(the body with every matching rule applied, whether anything matched)."""
    matched = False
    for rule in rules:
        if rule.protocol not in ("any", protocol) or not matches(rule.pattern, model):
            continue
        matched = True
        body = _merge(body, rule.defaults, overwrite=False)
        body = _merge(body, rule.force, overwrite=True)
        for name in rule.drop:
            body.pop(name, None)
    return body, matched


def build_rules(_ident: str) -> dict[str, Any]:
    from gateway.models import ModelRule

    return {"rules": [
        {"pattern": r.model_pattern, "protocol": r.protocol, "force": r.force or {},
         "defaults": r.defaults or {}, "drop": list(r.drop or [])}
        for r in ModelRule.objects.filter(enabled=True)
    ]}


def decode_rules(data: dict[str, Any]) -> tuple[Rule, ...]:
    return tuple(Rule(pattern=r["pattern"], protocol=r["protocol"], force=r["force"],
                      defaults=r["defaults"], drop=tuple(r["drop"])) for r in data["rules"])


rule_sets: LayeredCache[tuple[Rule, ...]] = LayeredCache("rules", build_rules, decode_rules)


async def aget_rules() -> tuple[Rule, ...]:
    return await rule_sets.get("all") or ()
