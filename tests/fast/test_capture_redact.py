"""Body capture's pure parts (issue 15): redaction of credentials with real-looking secrets
in real request and response shapes, the headers kept, the size cap, and a capture sealed
for storage."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from gateway.capture.recorder import Capture
from gateway.capture.records import RawCapture, seal
from gateway.capture.redact import REDACTED, redact_text, safe_headers
from keys.secrets import generate_secret

TURNPIKE_KEY = generate_secret()
OPENAI_KEY = "sk-proj-Q8v3LkT9xZr2Wm5NbY7pHc4DfJs6GaUe1RiOo0Kl"
ANTHROPIC_KEY = "sk-ant-api03-Zx81mQ0pLr7TnV2cWk9yBb4Hs6DgJf3Ua5Ei"
AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
GOOGLE_KEY = "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW"
GITHUB_TOKEN = "ghp_16C7e42F292c6912E7710c838347Ae178B4a"
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
       "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")
PAT = "tp_pat_" + "Ab3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6kM9nP2q"
PASSWORD = "correct-horse-battery-staple-42"


def chat_body(content: str, **extra: object) -> str:
    return orjson.dumps({"model": "gpt-5", "messages": [{"role": "user", "content": content}],
                         **extra}).decode()


@pytest.mark.parametrize("secret", [TURNPIKE_KEY, OPENAI_KEY, ANTHROPIC_KEY, AWS_KEY_ID,
                                    GOOGLE_KEY, GITHUB_TOKEN, JWT, PAT])
def test_a_credential_in_a_message_is_redacted_and_the_rest_kept(secret: str) -> None:
    text = chat_body(f"Why does {secret} fail with 401? It worked yesterday.")
    out = redact_text(text)
    assert secret not in out
    assert f"Why does {REDACTED} fail with 401? It worked yesterday." in out
    assert orjson.loads(out)["model"] == "gpt-5"  # still the same JSON


def test_values_of_fields_named_like_credentials_are_redacted_whatever_they_hold() -> None:
    text = orjson.dumps({
        "model": "gpt-5", "password": PASSWORD, "api_key": "plain-words-not-a-key-shape",
        "apiKey": "x1", "Authorization": "Basic dXNlcjpwYXNz", "client_secret": "cs-1",
        "access_token": "at-1", "db_passwd": "pw-2", "metadata": {"refresh_token": "rt-3"},
        "max_tokens": 100, "author": "Ann", "prompt_cache_key": "session-7",
        "tokenizer_config": {"name": "o200k"},
    }).decode()
    out = orjson.loads(redact_text(text))
    for name in ("password", "api_key", "apiKey", "Authorization", "client_secret",
                 "access_token", "db_passwd"):
        assert out[name] == REDACTED, name
    assert out["metadata"]["refresh_token"] == REDACTED
    # Numbers, objects and fields that only look alike are kept.
    assert out["max_tokens"] == 100 and out["author"] == "Ann"
    assert out["prompt_cache_key"] == "session-7"
    assert out["tokenizer_config"] == {"name": "o200k"}


def test_json_inside_a_json_string_is_redacted_too() -> None:
    """A tool call's arguments are JSON carried as a string."""
    arguments = orjson.dumps({"user": "ann", "password": PASSWORD, "city": "Paris"}).decode()
    text = orjson.dumps({"type": "function_call", "arguments": arguments}).decode()
    out = redact_text(text)
    assert PASSWORD not in out
    inner = orjson.loads(orjson.loads(out)["arguments"])
    assert inner == {"user": "ann", "password": REDACTED, "city": "Paris"}


def test_urls_bearer_tokens_and_the_presented_key_are_redacted() -> None:
    presented = "sk-tp-customsecretthatisnotlongenough"[:20]
    text = (f"GET https://api.example.com/v1?api_key={PASSWORD}&page=2 "
            f"with Authorization: Bearer {JWT} and key {presented}")
    out = redact_text(text, [presented])
    assert PASSWORD not in out and JWT not in out and presented not in out
    assert "api_key=[redacted]&page=2" in out
    assert "Bearer [redacted]" in out
    # Prose that merely mentions the words is kept.
    prose = "Bearer bonds and basic questions: the secret of risk-assessment-framework-docs."
    assert redact_text(prose) == prose


def test_a_value_cut_off_by_the_size_cap_is_redacted_to_the_end() -> None:
    text = chat_body("hello", password=PASSWORD)
    cut = text[: text.index(PASSWORD) + 5]
    assert redact_text(cut).endswith(f'"password":"{REDACTED}')


def test_a_stream_of_events_is_redacted_event_by_event() -> None:
    events = "".join(
        "data: " + orjson.dumps({"choices": [{"delta": {"content": part}}]}).decode() + "\n\n"
        for part in ("Your key ", OPENAI_KEY, " is valid")) + "data: [DONE]\n\n"
    out = redact_text(events)
    assert OPENAI_KEY not in out and out.count("data: ") == 4
    assert f'"content":"{REDACTED}"' in out


def test_credential_headers_are_dropped_and_the_others_redacted() -> None:
    headers = safe_headers([
        ("Authorization", f"Bearer {TURNPIKE_KEY}"), ("api-key", TURNPIKE_KEY),
        ("x-api-key", TURNPIKE_KEY), ("Cookie", "sessionid=abc"),
        ("x-upstream-token", "t"), ("OpenAI-Beta", "responses=v1"),
        ("User-Agent", "codex_cli_rs/0.50"), ("x-debug", f"forwarded {OPENAI_KEY}"),
        ("content-type", "application/json"),
    ])
    assert headers == {"openai-beta": "responses=v1", "user-agent": "codex_cli_rs/0.50",
                       "x-debug": f"forwarded {REDACTED}", "content-type": "application/json"}


def test_a_capture_keeps_the_response_up_to_the_cap_and_counts_all_of_it() -> None:
    capture = Capture(limit=10, path="/v1/chat/completions", headers={}, request=b"",
                      request_bytes=0)
    for chunk in (b"abcd", b"efgh", b"ijkl", b"mnop"):
        capture.response(chunk)
    assert b"".join(capture.chunks) == b"abcdefghij"
    assert (capture.kept, capture.sent) == (10, 16)


def test_seal_redacts_the_presented_key_cuts_and_marks_truncation() -> None:
    body = chat_body(f"my key is {TURNPIKE_KEY}", password=PASSWORD).encode()
    raw = RawCapture(
        request_id="req_1", tenant_id=1, key_id=2, created_at=1.0, method="POST",
        path="/v1/chat/completions", status=200, stream=False,
        headers={b"authorization": f"Bearer {TURNPIKE_KEY}".encode(),
                 b"user-agent": b"ua\x00x", b"content-type": b"application/json"},
        request=body, request_bytes=len(body),
        response=b'{"id":"c","choices":[{"message":{"content":"caf\xc3', response_bytes=500)
    row = seal(raw)
    assert TURNPIKE_KEY not in row["request_body"] and PASSWORD not in row["request_body"]
    assert row["request_body"].count(REDACTED) == 2
    assert row["request_headers"] == {"user-agent": "ua\ufffdx",
                                      "content-type": "application/json"}
    assert row["request_truncated"] is False
    # Cut in the middle of a UTF-8 character: a replacement character, marked truncated.
    assert row["response_body"].endswith("caf\ufffd") and row["response_truncated"] is True


def test_capture_begins_only_in_an_open_window_and_when_the_deployment_allows(
        settings: Any) -> None:
    from gateway.capture.recorder import begin
    from gateway.context import RelayContext
    from keys.snapshots import KeySnapshot

    ctx = RelayContext.start({"type": "http", "path": "/codex/v1/responses", "headers": [],
                              "client": ("127.0.0.1", 1)}, "responses")

    def key(until: float) -> KeySnapshot:
        return KeySnapshot(key_id=1, tenant_id=1, prefix="sk-tp-ab12", key_active=True,
                           tenant_active=True, expires_at=None, allowed_models=(),
                           denied_models=(), allowed_ips=(), rpm=0, rpd=0, tpm=0,
                           concurrency=0, max_tokens=0, group_id=None, price_multiplier="1",
                           has_quota=False, capture_until=until)

    settings.GATEWAY_CAPTURE_MAX_BYTES = 4
    capture = begin(ctx, key(time.time() + 60), b"abcdefgh")
    assert capture is not None
    assert (capture.path, capture.request, capture.request_bytes) == (
        "/codex/v1/responses", b"abcd", 8)
    assert begin(ctx, key(time.time() - 1), b"x") is None  # the window has ended
    assert begin(ctx, key(0), b"x") is None  # off
    settings.GATEWAY_CAPTURE_BODIES = False  # the deployment's switch wins
    assert begin(ctx, key(time.time() + 60), b"x") is None
