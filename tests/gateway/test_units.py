"""Pure pieces of the gateway: SSE framing, stream taps, error mapping, credential encryption
(key parsing and model allow-lists: tests/fast/test_key_auth.py, tests/fast/test_patterns.py)."""

from __future__ import annotations

import orjson
import pytest

from gateway.crypto import decrypt, encrypt
from gateway.errors import RateLimited
from gateway.providers.base import upstream_error
from gateway.streaming import ChatTap, ResponsesTap
from gateway.wire.sse import SseSplitter, event_data

pytestmark = pytest.mark.fast


def test_splitter_joins_events_split_across_chunks_and_normalises_crlf():
    s = SseSplitter()
    assert s.feed(b"data: {\"a\"") == []
    assert s.feed(b":1}\r") == []
    assert s.feed(b"\n\r\ndata: 2\n\nda") == [b'data: {"a":1}', b"data: 2"]
    assert s.rest() == b"da"


def test_event_data_joins_multi_line_data_and_ignores_other_fields():
    assert event_data(b"event: x\ndata: a\ndata: b\nid: 3") == b"a\nb"
    assert event_data(b": comment") is None
    assert event_data(b"data:tight") == b"tight"


def chat_chunk(**kw) -> bytes:
    body = {"id": "c", "object": "chat.completion.chunk", "choices": [], **kw}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def test_chat_tap_meters_usage_and_drops_the_usage_chunk_nobody_asked_for():
    tap = ChatTap(client_wants_usage=False)
    stream = (
        chat_chunk(choices=[{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
                   usage=None)
        + chat_chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}], usage=None)
        + chat_chunk(usage={"prompt_tokens": 5, "completion_tokens": 2,
                            "prompt_tokens_details": {"cached_tokens": 1}})
        + b"data: [DONE]\n\n"
    )
    out = b"".join(tap.feed(stream[i:i + 7]) for i in range(0, len(stream), 7)) + tap.finish()
    assert out.count(b"data: ") == 3
    assert b'"prompt_tokens"' not in out
    assert tap.complete
    assert (tap.usage.input_tokens, tap.usage.output_tokens, tap.usage.cached_tokens) == (5, 2, 1)


def test_chat_tap_closes_a_finished_stream_that_lacks_done():
    tap = ChatTap(client_wants_usage=True)
    tap.feed(chat_chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    assert tap.finish() == b"data: [DONE]\n\n"
    assert tap.complete


def test_responses_tap_reads_usage_from_the_terminal_event():
    tap = ResponsesTap()
    created = {"type": "response.created", "sequence_number": 0, "response": {"id": "resp_1"}}
    done = {"type": "response.completed", "sequence_number": 1, "response": {
        "id": "resp_1", "usage": {"input_tokens": 9, "output_tokens": 4, "total_tokens": 13,
                                  "output_tokens_details": {"reasoning_tokens": 3}}}}
    raw = b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n"
                   for e in (created, done))
    assert tap.feed(raw) == raw
    assert tap.complete and tap.response_id == "resp_1" and tap.terminal == "response.completed"
    assert (tap.usage.input_tokens, tap.usage.output_tokens, tap.usage.reasoning_tokens) == (
        9, 4, 3)


def test_responses_tap_error_event_is_response_failed_with_the_next_sequence_number():
    tap = ResponsesTap()
    tap.feed(b'data: {"type":"response.created","sequence_number":0,"response":{"id":"r9"}}\n\n')
    event = tap.error_event(RateLimited("slow down", code="x"))
    data = orjson.loads(event_data(event.strip()))
    assert data["type"] == "response.failed" and data["sequence_number"] == 1
    assert data["response"]["id"] == "r9" and data["response"]["error"]["code"] == "x"


def test_upstream_errors_map_to_client_errors_and_hide_the_credential():
    secret = "sk-upstream-supersecret-123456"
    err = upstream_error(400, orjson.dumps({"error": {
        "message": f"bad key {secret} in request", "type": "invalid_request_error",
        "code": "bad_param", "param": "x"}}), {}, secret)
    assert (err.status, err.code, err.param) == (400, "bad_param", "x")
    assert secret not in err.message
    auth = upstream_error(401, b'{"error":{"message":"Incorrect API key"}}', {}, secret)
    assert (auth.status, auth.code) == (502, "upstream_auth_failed")
    limited = upstream_error(429, b"busy", {"retry-after-ms": "1500"}, None)
    assert limited.status == 429 and dict(limited.headers())[b"retry-after"] == b"2"
    anthropic = upstream_error(529, b'{"type":"error","error":{"type":"overloaded_error",'
                                    b'"message":"Overloaded"}}', {}, None)
    assert (anthropic.status, anthropic.code, anthropic.message) == (502, "overloaded_error",
                                                                      "Overloaded")
    ollama = upstream_error(500, b'{"error":"model not loaded"}', {}, None)
    assert (ollama.status, ollama.message) == (500, "model not loaded")


def test_credentials_round_trip_through_encryption():
    token = encrypt("sk-live-abc")
    assert "sk-live-abc" not in token
    assert decrypt(token) == "sk-live-abc"
