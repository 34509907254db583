"""The key policy, request validation and model rules as in-process code: the output cap,
the order admission reports refusals in (gateway.policy, on the memory limiter and a fake
clock), field/depth/header validation (gateway.validate) and the model rules' merge
(gateway.rules). The key checks and the IP allow-list are in tests/fast/test_key_auth.py."""

from __future__ import annotations

import math
from decimal import Decimal

import orjson
import pytest
from django.conf import settings
from django.test import override_settings

from billing import pricing
from gateway import policy
from gateway.errors import InvalidRequest, RateLimited
from gateway.rules import Rule, apply_rules
from gateway.validate import (
    MAX_DEPTH,
    MAX_TOKENS_CAP,
    Invalid,
    check_depth,
    check_fields,
    check_headers,
    printable,
)
from gateway.wire.usage import Usage
from keys import limits
from keys.limits import MemoryLimiter
from keys.snapshots import KeySnapshot
from tests.clock import FakeClock


def snapshot(**kw) -> KeySnapshot:
    base = dict(key_id=1, tenant_id=1, prefix="sk-tp-abcd", key_active=True, tenant_active=True,
                expires_at=None, allowed_models=(), denied_models=(), allowed_ips=(), rpm=0,
                rpd=0, tpm=0, concurrency=0, max_tokens=0, group_id=None,
                price_multiplier="1", has_quota=False)
    return KeySnapshot(**{**base, **kw})


@pytest.mark.parametrize(("payload", "cap"), [
    ({}, None),
    ({"max_tokens": 10}, 10),
    ({"max_tokens": 10, "max_output_tokens": 30, "max_completion_tokens": 20}, 30),
    ({"max_tokens": True}, None),  # a boolean is not a number of tokens
    ({"max_output_tokens": 5.0}, None),
])
def test_the_output_cap_is_the_largest_the_request_names(payload, cap):
    assert policy.requested_max_tokens(payload) == cap


@pytest.mark.parametrize(("ms", "shown"), [(0, "0ms"), (-5, "0ms"), (999, "999ms"),
                                           (1000, "1s"), (1500, "1.5s"), (59_999, "59.999s"),
                                           (60_000, "1m0s"), (90_500, "1m31s")])
def test_reset_times_read_like_openais_headers(ms, shown):
    assert policy._format_reset(ms) == shown


# --- checks 5-9: admission ------------------------------------------------------------------

PRICE = pricing.Price(input=Decimal("1"), output=Decimal("2"))  # per million tokens


@pytest.fixture
def memory_limiter(monkeypatch) -> MemoryLimiter:
    """Admission on this process's limiter, on a fake clock, with prices from a fixed
    table: no Redis and no database behind the policy."""
    lim = MemoryLimiter(clock=FakeClock())
    monkeypatch.setattr(limits, "limiter", lambda: lim)

    async def prices() -> pricing.PriceTable:
        return pricing.PriceTable(exact={"paid": PRICE}, patterns=())

    monkeypatch.setattr(pricing, "aget_price_table", prices)
    with override_settings(REDIS_URL=""):
        yield lim


async def admit(key: KeySnapshot, payload: dict, model: str = "free") -> policy.Ticket:
    return await policy.admit(key, f"req-{id(payload)}", model, payload, body_size=400)


async def test_an_admitted_request_gets_openais_rate_limit_headers(memory_limiter):
    await memory_limiter.init_account("tenant", 1, 10**9)
    key = snapshot(rpm=3)
    ticket = await admit(key, {})
    assert dict(ticket.headers) == {b"x-ratelimit-limit-requests": b"3",
                                    b"x-ratelimit-remaining-requests": b"2",
                                    b"x-ratelimit-reset-requests": b"1m0s"}
    assert ticket.admission.reserve == 0  # a free model reserves nothing


async def test_a_paid_model_reserves_its_worst_case_from_the_balance(memory_limiter):
    await memory_limiter.init_account("tenant", 1, 10**9)
    ticket = await admit(snapshot(price_multiplier="2"), {"max_tokens": 1000}, model="paid")
    # 400 bytes -> their estimated input tokens at 1/M, 1,000 output tokens at 2/M, times 2.
    input_tokens = math.ceil(400 / settings.BILLING_BYTES_PER_TOKEN)
    worst = (input_tokens * 1 + 1000 * 2) * 2
    assert ticket.admission.reserve == worst  # micro-units: one per token per unit of price
    assert memory_limiter.available("tenant", 1) == 10**9 - ticket.admission.reserve


async def test_an_empty_balance_is_quota_exceeded(memory_limiter):
    await memory_limiter.init_account("tenant", 1, 10)
    with pytest.raises(policy.QuotaExceeded) as refused:
        await admit(snapshot(), {"max_tokens": 1000}, model="paid")
    error = refused.value
    assert (error.status, error.code, error.type) == (429, "quota_exceeded", "insufficient_quota")


async def test_a_rate_limit_refusal_names_its_limit_and_when_to_retry(memory_limiter):
    await memory_limiter.init_account("tenant", 1, 10**9)
    key = snapshot(rpm=1)
    await admit(key, {})
    with pytest.raises(RateLimited) as refused:
        await admit(key, {})
    error = refused.value
    assert (error.code, error.type, error.retry_after) == (
        "rate_limit_rpm", "invalid_request_error", 60.0)


async def test_the_max_tokens_cap_is_checked_last_and_takes_nothing(memory_limiter):
    await memory_limiter.init_account("tenant", 1, 10**9)
    key = snapshot(rpm=1, max_tokens=100)
    with pytest.raises(InvalidRequest) as over:
        await admit(key, {"max_tokens": 101})
    assert (over.value.code, over.value.param) == ("max_tokens_exceeded", "max_tokens")
    await admit(key, {"max_tokens": 100})  # the refused request did not use the minute's one
    with pytest.raises(RateLimited):  # and now an earlier check's refusal comes first
        await admit(key, {"max_tokens": 101})


def test_only_a_served_request_costs_anything():
    ticket = policy.Ticket(admission=None, price=PRICE, multiplier=Decimal("1.5"), headers=[],
                           limiter=MemoryLimiter())
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert policy.charge(ticket, usage, served=False) == 0
    assert policy.charge(ticket, usage, served=True) == Decimal("4.5")
    assert policy.charge(ticket, None, served=True) == 0


# --- validation -----------------------------------------------------------------------------

@pytest.mark.parametrize(("operation", "payload", "param"), [
    ("chat", {"max_tokens": -1}, "max_tokens"),
    ("chat", {"max_tokens": MAX_TOKENS_CAP + 1}, "max_tokens"),
    ("chat", {"max_tokens": True}, "max_tokens"),
    ("chat", {"temperature": 2.5}, "temperature"),
    ("chat", {"n": 0}, "n"),
    ("chat", {"stop": ["a", 3]}, "stop"),
    ("chat", {"logit_bias": {"50256": 500}}, "logit_bias.50256"),
    ("chat", {"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ("responses", {"include": 5}, "include"),
    ("responses", {"reasoning": {"effort": 3}}, "reasoning.effort"),
    ("responses", {"metadata": {"k": 1}}, "metadata.k"),
    ("compact", {"max_output_tokens": 0}, "max_output_tokens"),
])
def test_a_field_outside_its_rule_is_a_400_naming_it(operation, payload, param):
    with pytest.raises(Invalid) as bad:
        check_fields(operation, payload)
    assert bad.value.status == 400 and bad.value.param == param


def test_nulls_and_unknown_fields_pass_and_good_values_pass():
    check_fields("chat", {"max_tokens": None, "temperature": 0.7, "stop": "x", "n": 2,
                          "logit_bias": {"1": -100}, "future_field": {"anything": 1}})
    check_fields("responses", {"include": ["reasoning.encrypted_content"],
                               "reasoning": {"effort": "high"}, "max_output_tokens": 5})


def nested(depth: int) -> bytes:
    return b'{"input":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def test_bodies_nested_past_the_limit_are_refused_naming_the_field():
    ok = nested(MAX_DEPTH)  # the body object itself is level 1
    check_depth(ok, orjson.loads(ok))
    deep = nested(MAX_DEPTH + 1)
    with pytest.raises(Invalid) as bad:
        check_depth(deep, orjson.loads(deep))
    assert bad.value.param == "input"


def test_forwarded_headers_may_not_carry_control_bytes():
    check_headers({b"user-agent": b"codex\tcli/1.0"}, (b"user-agent",))
    check_headers({b"x-other": b"a\nb"}, (b"user-agent",))  # not forwarded: not checked
    with pytest.raises(Invalid) as bad:
        check_headers({b"user-agent": b"evil\r\nx-injected: 1"}, (b"user-agent",))
    assert bad.value.param == "header:user-agent"
    assert printable("a\x00b") == "a\N{REPLACEMENT CHARACTER}b" and printable("ok") == "ok"


# --- model rules ----------------------------------------------------------------------------

def rule(pattern: str = "gpt-5*", protocol: str = "any", **kw) -> Rule:
    return Rule(pattern=pattern, protocol=protocol, force=kw.get("force", {}),
                defaults=kw.get("defaults", {}), drop=tuple(kw.get("drop", ())))


def test_defaults_fill_gaps_force_overwrites_and_drop_removes():
    body = {"model": "gpt-5", "temperature": 1, "reasoning": {"summary": "auto"},
            "user": "u", "store": None}
    rules = (rule(defaults={"temperature": 0.2, "store": False,
                            "reasoning": {"effort": "high", "summary": "none"}},
                  force={"reasoning": {"effort": "low"}}, drop=("user",)),)
    out, matched = apply_rules(rules, "gpt-5", "responses", body)
    assert matched
    assert out == {"model": "gpt-5", "temperature": 1, "store": False,
                   "reasoning": {"summary": "auto", "effort": "low"}}
    assert body["user"] == "u" and body["reasoning"] == {"summary": "auto"}  # not mutated


def test_rules_match_by_model_pattern_and_protocol_in_order():
    rules = (rule("o*", force={"a": 1}), rule("gpt-5*", "chat", force={"b": 1}),
             rule("gpt-5-codex", force={"b": 2}))
    assert apply_rules(rules, "gpt-5-codex", "chat", {}) == ({"b": 2}, True)
    assert apply_rules(rules, "gpt-5-codex", "responses", {}) == ({"b": 2}, True)
    assert apply_rules(rules, "gpt-5", "responses", {}) == ({}, False)
