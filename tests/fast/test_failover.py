"""Failover decisions as pure functions: how an upstream's failure maps to the client-facing
error (providers.base), and what it means for routing (providers.failures.classify): try the
next credential or skip the whole upstream, cool the credential, disable it, or hand the
client its own fault. (Acting on it, and never retrying once the client has the status line,
is exchange.run's, covered by tests/faults and tests/gateway.)"""

from __future__ import annotations

import orjson
import pytest

from gateway.providers.base import (
    DEFAULT_RETRY_AFTER,
    error_answer,
    retry_after_seconds,
    upstream_error,
)
from gateway.providers.failures import (
    CLIENT_FAULT,
    CREDENTIAL_REFUSED,
    NEXT_UPSTREAM,
    classify,
    rate_limited,
)

SECRET = "sk-upstream-credential-0123456789"


def openai_error(message: str, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": "x", "code": code}})


def failure_of(status: int, headers: dict[str, str] | None = None):
    return classify(status, retry_after_seconds(headers or {}))


# --- an upstream status: which failures move on, and what happens to the credential --------

@pytest.mark.parametrize("status", [500, 502, 503, 504, 520, 529])
def test_a_server_error_tries_another_upstream_and_leaves_the_credential(status):
    error = upstream_error(status, b"", {}, SECRET)
    assert error.status in (500, 502, 503, 504) and error.type == "server_error"
    failure = failure_of(status)
    assert failure == NEXT_UPSTREAM  # the upstream is failing, not this key
    assert failure.retry == "upstream" and not failure.cool and not failure.disable


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_tries_another_upstream(status):
    assert failure_of(status) == NEXT_UPSTREAM


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_credential_is_disabled_and_the_next_credential_tried(status):
    error = upstream_error(status, openai_error(f"bad key {SECRET}"), {}, SECRET)
    assert (error.status, error.code) == (502, "upstream_auth_failed")  # not the client's 401
    assert SECRET not in error.message
    failure = failure_of(status)
    assert failure == CREDENTIAL_REFUSED
    assert failure.retry == "credential" and failure.disable  # other credentials may work


def test_a_429_cools_the_credential_for_as_long_as_the_upstream_asked():
    asked = upstream_error(429, openai_error("slow down"), {"retry-after-ms": "1500"}, None)
    assert asked.status == 429 and asked.retry_after == 1.5
    failure = failure_of(429, {"retry-after-ms": "1500"})
    assert failure == rate_limited(1.5)
    assert failure.retry == "credential" and failure.cool and not failure.disable
    assert failure_of(429, {"retry-after": "12"}).cool_for == 12


def test_a_429_without_retry_after_cools_for_the_default_and_tells_the_client_to_wait():
    error = upstream_error(429, b"busy", {}, None)
    assert error.retry_after == DEFAULT_RETRY_AFTER  # clients need one to retry at all
    failure = failure_of(429)
    assert failure.cool and failure.cool_for is None  # routing applies the default


@pytest.mark.parametrize(("status", "code"), [(400, "bad_param"), (404, "model_not_found"),
                                              (413, "too_big"), (422, "bad_schema")])
def test_the_clients_own_fault_is_passed_on_without_failover(status, code):
    error = upstream_error(status, openai_error(f"no good {SECRET}", code), {}, SECRET)
    assert (error.status, error.code) == (status, code)
    assert SECRET not in error.message and "[credential]" in error.message
    assert failure_of(status) == CLIENT_FAULT  # no other upstream would answer it better
    assert CLIENT_FAULT.retry is None


# --- errors reported inside a 2xx answer (classified by the status they stand for) ---------

@pytest.mark.parametrize(("body", "status", "retry"), [
    (b'{"error":{"message":"slow","code":"rate_limit_exceeded"}}', 429, "credential"),
    (b'{"type":"error","error":{"type":"rate_limit_error","message":"slow"}}', 429,
     "credential"),
    (b'{"error":{"message":"too long","code":"context_length_exceeded"}}', 400, None),
    (b'{"type":"error","error":{"type":"not_found_error","message":"no"}}', 404, None),
    (b'{"error":{"message":"boom","code":"server_is_on_fire"}}', 502, "upstream"),
    (b'{"error":"model not loaded"}', 502, "upstream"),
])
def test_an_error_inside_a_2xx_answer_maps_by_its_code(body, status, retry):
    error = error_answer(body, {}, SECRET)
    assert error.status == status
    assert classify(error.status).retry == retry


def test_a_credential_refusal_inside_a_2xx_never_disables_the_credential():
    error = error_answer(b'{"error":{"message":"invalid api key","code":"invalid_api_key"}}',
                         {}, SECRET)
    failure = classify(error.status)
    assert failure.retry is not None and not failure.disable  # a 2xx is no proof to disable on
