"""Failover decisions as pure functions: how an upstream's failure maps to the client-facing
error (providers.base), and what that failure means for the request and its credential
(exchange.judge_failure): retry on another route, skip the whole upstream, cool the
credential, disable it, or hand the client its own fault."""

from __future__ import annotations

import orjson
import pytest

from gateway.errors import GatewayError, UpstreamTimeout, UpstreamUnavailable
from gateway.exchange import DISABLE_COOLDOWN, NO_RETRY, _before_first_byte, judge_failure
from gateway.providers.base import (
    DEFAULT_RETRY_AFTER,
    error_answer,
    reported_error,
    upstream_error,
)

SECRET = "sk-upstream-credential-0123456789"
DEFAULT_COOLDOWN = 30.0


def verdict(error: GatewayError, *, answered: bool = False, has_credential: bool = True):
    return judge_failure(error, answered=answered, has_credential=has_credential,
                         default_cooldown=DEFAULT_COOLDOWN)


def openai_error(message: str, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": "x", "code": code}})


# --- an upstream status: which failures move on, and what happens to the credential --------

@pytest.mark.parametrize("status", [500, 502, 503, 504, 520, 529])
def test_a_server_error_tries_another_upstream_and_leaves_the_credential(status):
    error = upstream_error(status, b"", {}, SECRET)
    assert error.status in (500, 502, 503, 504) and error.type == "server_error"
    v = verdict(error)
    assert v.retry and v.skip_upstream  # the upstream is failing, not this key
    assert (v.cool_seconds, v.disable_credential) == (None, False)


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_credential_is_disabled_and_the_next_credential_tried(status):
    error = upstream_error(status, openai_error(f"bad key {SECRET}"), {}, SECRET)
    assert (error.status, error.code) == (502, "upstream_auth_failed")  # not the client's 401
    assert SECRET not in error.message
    v = verdict(error)
    assert v.retry and not v.skip_upstream  # the upstream's other credentials may work
    assert v.disable_credential and v.cool_seconds == DISABLE_COOLDOWN


def test_a_429_cools_the_credential_for_as_long_as_the_upstream_asked():
    asked = upstream_error(429, openai_error("slow down"), {"retry-after-ms": "1500"}, None)
    assert asked.status == 429 and asked.retry_after == 1.5
    v = verdict(asked)
    assert v.retry and not v.skip_upstream and not v.disable_credential
    assert v.cool_seconds == 1.5
    assert verdict(upstream_error(429, b"", {"retry-after": "12"}, None)).cool_seconds == 12


def test_a_429_without_retry_after_cools_for_the_default_and_tells_the_client_to_wait():
    error = upstream_error(429, b"busy", {}, None)
    assert error.retry_after == DEFAULT_RETRY_AFTER  # clients need one to retry at all
    assert verdict(error).cool_seconds == DEFAULT_COOLDOWN


@pytest.mark.parametrize(("status", "code"), [(400, "bad_param"), (404, "model_not_found"),
                                              (413, "too_big"), (422, "bad_schema")])
def test_the_clients_own_fault_is_passed_on_without_failover(status, code):
    error = upstream_error(status, openai_error(f"no good {SECRET}", code), {}, SECRET)
    assert (error.status, error.code) == (status, code)
    assert SECRET not in error.message and "[credential]" in error.message
    assert verdict(error) == NO_RETRY  # no other upstream would answer it better


def test_nothing_is_retried_once_the_client_has_the_status_line():
    for error in (upstream_error(503, b"", {}, None), upstream_error(429, b"", {}, None),
                  upstream_error(401, b"", {}, None)):
        assert verdict(error, answered=True) == NO_RETRY


def test_a_keyless_upstream_has_no_credential_to_cool_or_disable():
    for status in (401, 429):
        v = verdict(upstream_error(status, b"", {}, None), has_credential=False)
        assert v.retry and v.cool_seconds is None and not v.disable_credential


# --- failures without an HTTP status --------------------------------------------------------

def test_connection_failures_and_timeouts_are_marked_by_the_caller_for_another_upstream():
    for error in (UpstreamUnavailable("down"), UpstreamTimeout("slow")):
        assert verdict(error) == NO_RETRY  # unmarked, they are final
        error.failover = "upstream"
        v = verdict(error)
        assert v.retry and v.skip_upstream and v.cool_seconds is None


def test_a_broken_2xx_answer_fails_over_only_when_it_is_a_server_fault():
    broken = _before_first_byte(GatewayError("garbage from the upstream", status=502))
    assert verdict(broken).retry and verdict(broken).skip_upstream
    own_fault = _before_first_byte(reported_error("invalid_request_error", "bad", None))
    assert own_fault.status == 400 and verdict(own_fault) == NO_RETRY
    marked = upstream_error(401, b"", {}, None)
    assert _before_first_byte(marked).failover == "credential"  # a mark is never widened


# --- errors reported inside a 2xx answer ----------------------------------------------------

@pytest.mark.parametrize(("body", "status", "retry"), [
    (b'{"error":{"message":"slow","code":"rate_limit_exceeded"}}', 429, True),
    (b'{"type":"error","error":{"type":"rate_limit_error","message":"slow"}}', 429, True),
    (b'{"error":{"message":"too long","code":"context_length_exceeded"}}', 400, False),
    (b'{"type":"error","error":{"type":"not_found_error","message":"no"}}', 404, False),
    (b'{"error":{"message":"boom","code":"server_is_on_fire"}}', 502, True),
    (b'{"error":"model not loaded"}', 502, True),
])
def test_an_error_inside_a_2xx_answer_maps_by_its_code(body, status, retry):
    error = _before_first_byte(error_answer(body, {}, SECRET))
    assert error.status == status
    assert verdict(error).retry is retry


def test_a_credential_refusal_inside_a_2xx_never_disables_the_credential():
    error = _before_first_byte(error_answer(
        b'{"error":{"message":"invalid api key","code":"invalid_api_key"}}', {}, SECRET))
    v = verdict(error)
    assert v.retry and not v.disable_credential  # a 2xx is not proof enough to disable on
