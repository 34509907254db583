"""The decisions behind the fault suite, without processes: which 2xx answers are errors and
what they map to, what the passthrough taps accept as a stream's first event and end, and
which frames a translated stream refuses."""

from __future__ import annotations

import orjson
import pytest

from gateway.errors import InvalidRequest, RateLimited, UpstreamError
from gateway.providers.base import error_answer, is_error_answer
from gateway.providers.decoding import EventDecoder
from gateway.providers.failures import classify
from gateway.streaming import ChatTap, ResponsesTap
from gateway.translate import canonical as c
from gateway.wire.sse import encode

pytestmark = pytest.mark.fast

SECRET = "sk-upstream-secret-0123456789"


@pytest.mark.parametrize(("body", "is_error"), [
    ({"error": {"message": "x", "type": "server_error"}}, True),  # OpenAI
    ({"type": "error", "error": {"type": "overloaded_error", "message": "x"}}, True),
    ({"error": "model not loaded"}, True),  # Ollama
    ({"type": "error", "code": "server_error", "message": "x"}, True),  # Responses event
    ({"type": "response.failed", "response": {"error": {"code": "x"}}}, True),
    ({"object": "response", "status": "failed", "error": {"code": "x"}}, True),
    ({"object": "response", "status": "completed", "error": None}, False),
    ({"object": "chat.completion", "choices": []}, False),
    ([{"error": "x"}], False),
])
def test_which_answers_are_errors(body, is_error):
    assert is_error_answer(body) is is_error


def failover(error):
    """Where routing goes after this error, before the client got a byte (see
    gateway.providers.failures)."""
    return classify(error.status).retry


def test_an_error_in_a_200_is_mapped_like_the_status_it_stands_for():
    server = error_answer(orjson.dumps({"error": {"message": "boom", "type": "server_error"}}),
                          {}, None)
    assert (type(server), server.status, server.code, failover(server)) == (
        UpstreamError, 502, "server_error", "upstream")
    limited = error_answer(orjson.dumps({"type": "error", "error": {
        "type": "rate_limit_error", "message": "slow down"}}), {}, None)
    assert isinstance(limited, RateLimited) and failover(limited) == "credential"
    assert limited.retry_after == 5  # a 429 always tells the client when to retry
    bad = error_answer(orjson.dumps({"error": {"message": "too long",
                                               "type": "invalid_request_error",
                                               "code": "context_length_exceeded"}}), {}, None)
    assert isinstance(bad, InvalidRequest) and bad.status == 400 and failover(bad) is None
    ollama = error_answer(orjson.dumps({"error": f"bad key {SECRET}"}), {}, SECRET)
    assert (ollama.status, ollama.code) == (502, "upstream_error")
    assert SECRET not in ollama.message
    event = error_answer(orjson.dumps({"type": "error", "code": "server_error",
                                       "message": "m"}), {}, None)
    assert (event.code, event.message) == ("server_error", "m")
    failed = error_answer(orjson.dumps({"type": "response.failed", "response": {
        "error": {"code": "context_length_exceeded", "message": "m"}}}), {}, None)
    assert (failed.status, failed.code) == (400, "context_length_exceeded")


# --- passthrough taps ------------------------------------------------------------------------

def chat_chunk(delta: dict, finish: str | None = None) -> bytes:
    return encode({"id": "c", "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def test_chat_tap_holds_judgement_until_the_first_data_event():
    tap = ChatTap(False)
    assert tap.feed(b": ping\n\n") == b": ping\n\n" and not tap.verified
    tap.feed(chat_chunk({"role": "assistant"}))
    assert tap.verified and tap.failure is None


@pytest.mark.parametrize(("first", "code"), [
    (encode({"error": {"message": "m", "type": "server_error"}}), "server_error"),
    (b"data: {\"id\": \"x\", \"choices\": [\n\n", "upstream_bad_response"),
    (b"\x89PNG\x00\x01 noise\n\n", "upstream_bad_response"),
    (encode({"id": "x"}), "upstream_bad_response"),  # JSON, but not a chunk
    (b"data: [DONE]\n\n", "upstream_bad_response"),
])
def test_chat_tap_refuses_a_first_event_that_is_not_a_chunk(first, code):
    tap = ChatTap(False)
    assert tap.feed(first + chat_chunk({"content": "x"})) == b""  # nothing is relayed
    assert tap.failure is not None and tap.failure.code == code and not tap.verified


def test_chat_done_without_a_finish_reason_is_not_an_end():
    tap = ChatTap(False)
    out = tap.feed(chat_chunk({"role": "assistant"}) + encode({"error": {
        "message": "m", "code": "overloaded"}}) + b"data: [DONE]\n\n")
    assert b"[DONE]" not in out and not tap.complete
    reported = tap.ended_with()
    assert reported is not None and reported[0].code == "overloaded" and reported[1]
    whole = ChatTap(False)
    whole.feed(chat_chunk({"role": "assistant"}) + chat_chunk({}, "stop") + b"data: [DONE]\n\n")
    assert whole.complete and whole.ended_with() is None


def test_responses_tap_first_event_and_end():
    error = ResponsesTap(SECRET)
    error.feed(encode({"type": "error", "code": "server_error", "message": SECRET},
                      event="error"))
    assert error.failure is not None and error.failure.code == "server_error"
    assert SECRET not in error.failure.message

    failed = ResponsesTap()
    failed.feed(encode({"type": "response.created", "response": {"id": "r"}})
                + encode({"type": "response.failed", "response": {
                    "id": "r", "error": {"code": "rate_limit_exceeded", "message": "m"}}}))
    assert failed.verified and failed.complete and failed.ended_failed
    reported = failed.ended_with()
    assert reported is not None and reported[0].code == "rate_limit_exceeded" and reported[1]

    cut = ResponsesTap()
    cut.feed(encode({"type": "response.created", "response": {"id": "r"}})
             + encode({"type": "error", "code": "server_error", "message": "m"}))
    reported = cut.ended_with()
    assert not cut.complete and reported is not None and not reported[1]  # failed must follow


# --- translated streams ----------------------------------------------------------------------

def failures(events: list[c.Event]) -> list[str]:
    return [e.code for e in events if isinstance(e, c.Failure)]


def test_a_translated_stream_refuses_frames_that_are_not_its_protocol():
    decoder = EventDecoder("chat")
    events = decoder.feed(chat_chunk({"role": "assistant"}) + b"data: {not json\n\n"
                          + chat_chunk({"content": "late"}))
    assert failures(events) == ["upstream_bad_response"]
    assert not any(isinstance(e, c.TextDelta) for e in events)  # nothing after the failure
    assert decoder.finish() == []
    garbage = EventDecoder("anthropic")
    assert failures(garbage.feed(b"\x00\x01binary\n\n")) == ["upstream_bad_response"]
    ollama = EventDecoder("ollama")
    assert failures(ollama.feed(b'{"message": {\n')) == ["upstream_bad_response"]


def test_a_translated_chat_stream_ends_only_after_a_finish():
    early = EventDecoder("chat")
    assert failures(early.feed(chat_chunk({"role": "assistant"}) + b"data: [DONE]\n\n")) == [
        "upstream_stream_cut"]
    no_done = EventDecoder("chat")
    no_done.feed(chat_chunk({"content": "x"}) + chat_chunk({}, "stop"))
    assert failures(no_done.finish()) == []  # some servers end without [DONE]
