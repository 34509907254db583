"""Responses over WebSocket, the pure parts: an answer's SSE events as frames (and what the
socket notes for previous_response_id), the expansion of previous_response_id from the
socket's last response, a turn's headers, and daphne's side (text frames as RFC 6455
writes them, the refusal's HTTP answer). The socket itself, end to end, is
tests/gateway/test_websocket.py."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.errors import GatewayError
from gateway.websocket import (
    KEEPALIVE,
    Connection,
    LastResponse,
    TurnSender,
    join_arrays,
    response_events,
    turn_headers,
)
from gateway.wire.sse import encode
from portal.tuning import http_answer, write_text_frames


class Frames:
    """A connection that keeps what would be sent."""

    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []

    async def send_frames(self, frames: list[bytes]) -> None:
        self.sent.append(frames)


def sse(*events: dict[str, Any], named: bool = True) -> bytes:
    return b"".join(encode(e, event=e["type"] if named else None) for e in events)


async def answer(chunks: list[bytes], status: int = 200,
                 ctype: bytes = b"text/event-stream", headers: Any = ()) -> tuple[
        TurnSender, list[dict[str, Any]]]:
    conn = Frames()
    sender = TurnSender(conn)  # type: ignore[arg-type]
    await sender({"type": "http.response.start", "status": status,
                  "headers": [(b"content-type", ctype), *headers]})
    for i, chunk in enumerate(chunks):
        await sender({"type": "http.response.body", "body": chunk,
                      "more_body": i < len(chunks) - 1})
    return sender, [orjson.loads(f) for batch in conn.sent for f in batch]


ITEM = {"type": "message", "id": "msg_1", "role": "assistant",
        "content": [{"type": "output_text", "text": "hi"}]}
STREAM = [
    {"type": "response.created", "sequence_number": 0, "response": {"id": "resp_1"}},
    {"type": "response.output_text.delta", "sequence_number": 1, "delta": "hi"},
    {"type": "response.output_item.done", "sequence_number": 2, "output_index": 0,
     "item": ITEM},
    {"type": "response.completed", "sequence_number": 3,
     "response": {"id": "resp_1", "status": "completed", "output": [ITEM]}},
]


@pytest.mark.parametrize("named", [True, False])
async def test_each_event_is_one_frame_of_its_data_and_the_chain_is_noted(named):
    raw = sse(*STREAM, named=named)
    # Cut anywhere: events split across chunks still make whole frames.
    sender, frames = await answer([raw[:37], raw[37:200], raw[200:]])
    assert frames == STREAM
    assert (sender.status, sender.response_id, sender.output) == ("completed", "resp_1", [ITEM])


async def test_a_comment_is_a_data_keepalive_and_an_upstream_error_event_is_not_relayed():
    failed = {"type": "response.failed", "sequence_number": 2,
              "response": {"id": "resp_2", "status": "failed"}}
    raw = b": keepalive\n\n" + sse(STREAM[0], {"type": "error", "message": "boom"}, failed)
    sender, frames = await answer([raw])
    assert frames == [orjson.loads(KEEPALIVE), STREAM[0], failed]
    assert (sender.status, sender.response_id) == ("failed", "resp_2")


async def test_an_error_answered_before_the_stream_is_one_error_frame_with_its_status():
    body = GatewayError("slow down", status=429, type="rate_limit_error",
                        code="rate_limit_rpm").render()
    sender, frames = await answer([body], status=429, ctype=b"application/json",
                                  headers=[(b"retry-after", b"2"), (b"x-request-id", b"r")])
    assert frames == [{"type": "error", "status": 429, "error": {
        "message": "slow down", "type": "rate_limit_error", "param": None,
        "code": "rate_limit_rpm"}, "headers": {"retry-after": "2"}}]
    assert sender.status == "failed"


async def test_a_json_response_becomes_the_events_of_its_stream():
    response = {"id": "resp_3", "object": "response", "status": "completed", "output": [ITEM]}
    sender, frames = await answer([orjson.dumps(response)], ctype=b"application/json")
    assert [f["type"] for f in frames] == ["response.created", "response.output_item.done",
                                           "response.completed"]
    assert [f["sequence_number"] for f in frames] == [0, 1, 2]
    assert frames[0]["response"]["output"] == [] and frames[-1]["response"] == response
    assert (sender.status, sender.output) == ("completed", [ITEM])
    assert len(response_events({**response, "status": "incomplete"})) == 3


def connection() -> Connection:
    return Connection({"type": "websocket", "path": "/v1/responses", "headers": []},
                      receive=None, send=None)  # type: ignore[arg-type]


def test_previous_response_id_of_the_last_response_expands_to_its_input_output_and_the_new():
    conn = connection()
    conn.last = LastResponse("resp_1", orjson.dumps([{"role": "user", "content": "a"}]), [ITEM])
    body = {"model": "m", "previous_response_id": "resp_1", "input": "b"}
    history = conn.expand(body)
    expected = [{"role": "user", "content": "a"}, ITEM,
                {"type": "message", "role": "user", "content": "b"}]
    assert isinstance(history, bytes) and orjson.loads(history) == expected
    assert "previous_response_id" not in body
    assert orjson.loads(orjson.dumps(body)) == {"model": "m", "input": expected}


def test_any_other_previous_response_id_goes_to_the_stored_chain_and_one_without_is_its_own():
    conn = connection()
    conn.last = LastResponse("resp_1", b"[]", [])
    body = {"previous_response_id": "resp_0", "input": []}
    assert conn.expand(body) is None  # the pipeline's stored chain expands it, or 404s
    assert body == {"previous_response_id": "resp_0", "input": []}
    assert isinstance(conn.expand({"previous_response_id": 7}), GatewayError)
    assert isinstance(conn.expand({"previous_response_id": "resp_1", "input": 5}),
                      GatewayError)
    assert conn.expand({"input": "x"}) == b'[{"type":"message","role":"user","content":"x"}]'
    assert conn.expand({"input": 5}) is None  # left to the pipeline's own 400


def test_json_arrays_join_and_a_turn_gets_the_handshake_headers_as_a_json_post():
    assert join_arrays(b"[1,2]", b"[]", b'[{"a":[3]}]') == b'[1,2,{"a":[3]}]'
    assert join_arrays(b"[]", b"[]") == b"[]"
    headers = turn_headers([
        (b"host", b"gw"), (b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
        (b"sec-websocket-key", b"k"), (b"authorization", b"Bearer sk"),
        (b"openai-beta", b"responses_websockets=2026-02-06, other=1"),
        (b"session-id", b"s")])
    assert headers == [(b"host", b"gw"), (b"authorization", b"Bearer sk"),
                       (b"openai-beta", b"other=1"), (b"session-id", b"s"),
                       (b"content-type", b"application/json")]
    assert (b"openai-beta", b"") not in turn_headers(
        [(b"openai-beta", b"responses_websockets=2026-02-06")])


class Transport:
    def __init__(self) -> None:
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data


class Protocol:
    """The autobahn state write_text_frames reads."""

    STATE_OPEN, SEND_STATE_GROUND = 3, 0
    state, send_state, send_queue, _perMessageCompress = 3, 0, (), None

    def __init__(self) -> None:
        self.transport = Transport()
        self.slow: list[str] = []

    def serverSend(self, content: str, binary: bool) -> None:  # noqa: N802 (daphne's name)
        self.slow.append(content)


def test_text_frames_are_unmasked_rfc6455_frames_with_each_length_form():
    proto = Protocol()
    payloads = [b"", b"x" * 125, b"y" * 126, b"z" * 65535, b"w" * 65536]
    write_text_frames(proto, payloads)
    out = proto.transport.written
    assert out[:2] == b"\x81\x00"
    assert out[2:4] == b"\x81\x7d" and out[4:129] == payloads[1]
    assert out[129:133] == b"\x81\x7e\x00\x7e"
    at = 133 + 126
    assert out[at:at + 4] == b"\x81\x7e\xff\xff"
    at += 4 + 65535
    assert out[at:at + 10] == b"\x81\x7f" + (65536).to_bytes(8, "big")
    assert len(out) == at + 10 + 65536 and not proto.slow
    closing = Protocol()
    closing.state = 4  # closing: autobahn's own path (which refuses it)
    write_text_frames(closing, [b"a"])
    assert closing.slow == ["a"] and closing.transport.written == b""


def test_a_refusal_is_a_whole_http_answer_that_closes_the_connection():
    answer_bytes = http_answer(426, [(b"content-type", b"application/json"),
                                     (b"content-length", b"99")], b'{"error":{}}')
    assert answer_bytes == (b"HTTP/1.1 426 Upgrade Required\r\ncontent-type: application/json"
                            b"\r\nContent-Length: 12\r\nConnection: close\r\n\r\n"
                            b'{"error":{}}')


def test_a_key_that_stores_chains_through_the_store_unless_the_turn_is_not_stored():
    conn = connection()
    conn.stores = True
    conn.last = LastResponse("resp_1", orjson.dumps([{"role": "user", "content": "a"}]), [ITEM])
    stored = {"model": "m", "previous_response_id": "resp_1", "input": "b"}
    assert conn.expand(stored) is None and stored["previous_response_id"] == "resp_1"
    unstored = {"model": "m", "previous_response_id": "resp_1", "input": "b", "store": False}
    assert isinstance(conn.expand(unstored), bytes)
    assert "previous_response_id" not in unstored
    conn.last = LastResponse("resp_2", b"[]", [], warmup=True)  # a warm-up is never stored
    warm = {"model": "m", "previous_response_id": "resp_2", "input": "b"}
    assert isinstance(conn.expand(warm), bytes) and "previous_response_id" not in warm
