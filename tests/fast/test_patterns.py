"""Model-name wildcards (keys.patterns), the one matcher: one table of cases, checked against
the matcher and then through every place that matches a model against an operator's list
(key allow/deny lists, the models an upstream serves, model rules, prices), so they cannot
drift apart."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from billing.pricing import FREE, decode_price_table
from gateway.routing import RouteTable, UpstreamRef
from gateway.rules import Rule, apply_rules
from keys import patterns
from keys.snapshots import KeySnapshot

CASES = [
    # (pattern, model, matches)
    ("gpt-5", "gpt-5", True),
    ("gpt-5", "gpt-5-mini", False),  # an exact name is not a prefix
    ("gpt-5", "gpt-", False),
    ("gpt-5*", "gpt-5", True),  # * matches nothing too
    ("gpt-5*", "gpt-5-mini", True),
    ("gpt-5*", "gpt-4o", False),
    ("*", "anything-at-all", True),
    ("*-mini", "gpt-5-mini", True),
    ("*-mini", "gpt-5-mini-2", False),
    ("o?", "o3", True),
    ("o?", "o3-mini", False),
    ("claude-[sh]*", "claude-sonnet-4", True),
    ("claude-[sh]*", "claude-opus-4", False),
    ("gpt-[!5]*", "gpt-4o", True),
    ("gpt-[!5]*", "gpt-5", False),
    ("GPT-5", "gpt-5", False),  # case-sensitive, exact names ...
    ("GPT-5*", "gpt-5-mini", False),  # ... and wildcards alike, on every OS
    ("gpt-5*", "GPT-5-MINI", False),
    ("gpt-5.1", "gpt-5x1", False),  # a dot is a dot
    ("a/b*", "a/b/c", True),  # no path semantics: * crosses slashes
]


@pytest.mark.parametrize(("pattern", "model", "expected"), CASES)
def test_the_matcher(pattern, model, expected):
    assert patterns.matches(pattern, model) is expected
    assert patterns.matches_any(["nope", pattern], model) is expected


@pytest.mark.parametrize(("name", "wildcard"), [
    ("gpt-5", False), ("gpt-5*", True), ("o?", True), ("claude-[sh]", True),
    ("gpt-5.1-codex", False), ("", False),
])
def test_what_counts_as_a_wildcard(name, wildcard):
    assert patterns.is_pattern(name) is wildcard
    assert (name in patterns.concrete([name])) is not wildcard
    assert (name in patterns.wildcards([name])) is wildcard


# --- every call site agrees with the matcher --------------------------------------------------

def snapshot(**kw: Any) -> KeySnapshot:
    base: dict[str, Any] = dict(
        key_id=1, tenant_id=1, prefix="sk-tp-abcd", key_active=True, tenant_active=True,
        expires_at=None, allowed_models=(), denied_models=(), allowed_ips=(), rpm=0, rpd=0,
        tpm=0, concurrency=0, max_tokens=0, group_id=None, price_multiplier="1",
        has_quota=False)
    return KeySnapshot(**{**base, **kw})


def serving_upstream(models: tuple[str, ...]) -> UpstreamRef:
    return UpstreamRef(id=1, name="up", kind="openai", base_url="http://u.test/v1",
                       models=models, model_map=(), priority=0, weight=1, created=0,
                       credentials=())


def priced(pattern: str) -> Any:
    return decode_price_table({"prices": [
        {"model": pattern, "input": "1", "cached_input": None, "output": "1",
         "reasoning": None, "per_request": "0"}]})


@pytest.mark.parametrize(("pattern", "model", "expected"), CASES)
def test_every_call_site_matches_as_the_matcher_does(pattern, model, expected):
    # a key's (or its group's) allow-list, and its deny-list
    assert snapshot(allowed_models=(pattern,)).allows(model) is expected
    assert snapshot(denied_models=(pattern,)).allows(model) is not expected
    assert patterns.permits([pattern], [], model) is expected
    # the models an upstream serves (exact names and wildcards are kept apart there)
    assert serving_upstream((pattern,)).serves(model) is expected
    served = RouteTable(upstreams=(serving_upstream((pattern,)),)).serving(model)
    assert bool(served) is expected
    # model rules
    rule = Rule(pattern=pattern, protocol="any", force={"x": 1}, defaults={}, drop=())
    assert apply_rules((rule,), model, "chat", {})[1] is expected
    # prices (an exact name is looked up by name, a wildcard matched)
    found = priced(pattern).lookup(model)
    assert (found is not FREE and found.input == Decimal(1)) is expected


@pytest.mark.parametrize(("allowed", "denied", "model", "ok"), [
    ((), (), "anything", True),
    (("gpt-5*",), (), "gpt-5-codex", True),
    (("gpt-5*",), (), "gpt-4o", False),
    (("gpt-5*",), ("gpt-5-codex",), "gpt-5-codex", False),
    ((), ("o*",), "o3", False),
    (("gpt-5",), (), "gpt-5-mini", False),
])
def test_model_allow_and_deny_lists_with_wildcards(allowed, denied, model, ok):
    assert snapshot(allowed_models=allowed, denied_models=denied).allows(model) is ok
    assert patterns.permits(allowed, denied, model) is ok


def test_listed_models_leave_every_kind_of_wildcard_out():
    up = serving_upstream(("gpt-5", "gpt-5*", "o?", "claude-[sh]*"))
    assert list(RouteTable(upstreams=(up,)).listed_models()) == ["gpt-5"]
