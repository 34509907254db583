"""The stream taps' block path (gateway.streaming.StreamTap.feed after the first event):
whole runs of quiet events pass as one block, found with substring counts, and only the
events from the first one that may matter are taken one by one. It must relay, note and
report exactly what taking every event one by one (``SseSplitter.feed`` + ``on_event``, the
path before the first event and the reference here) does, however the bytes are cut."""

from __future__ import annotations

import random
import zlib
from decimal import Decimal
from typing import Any

import orjson
import pytest

from gateway.streaming import ChatTap, ResponsesTap, StreamTap
from gateway.wire.sse import SseSplitter, encode

pytestmark = pytest.mark.fast


def chunk(delta: dict[str, Any], finish: Any = None, **extra: Any) -> bytes:
    return encode({"id": "c", "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})


USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
OPEN = chunk({"role": "assistant", "content": ""})
WORDS = b"".join(chunk({"content": f"w{i} "}) for i in range(30))
END = chunk({}, "stop") + encode({"id": "c", "choices": [], "usage": USAGE}) + b"data: [DONE]\n\n"

CHAT_STREAMS = {
    "plain": OPEN + WORDS + END,
    "usage null in every chunk": OPEN + b"".join(
        chunk({"content": f"w{i}"}, usage=None) for i in range(20)) + END,
    "spaced nulls": OPEN + WORDS.replace(b'"finish_reason":null', b'"finish_reason": null')
    + END,
    "spaced usage nulls": OPEN + b"".join(
        chunk({"content": f"w{i}"}, usage=None) for i in range(20)).replace(
            b'"usage":null', b'"usage": null') + END,
    "comments between": OPEN + WORDS.replace(b"\n\n", b"\n\n: keepalive\n\n") + END,
    "CRLF": (OPEN + WORDS + END).replace(b"\n", b"\r\n"),
    "stray CR": OPEN + WORDS.replace(b"w3 ", b"w3\r\r\n") + END,
    "runs of blank lines": OPEN + WORDS.replace(b"\n\n", b"\n\n\n\n", 3) + b"\n" + END,
    "odd runs of blank lines": OPEN + WORDS.replace(b"\n\n", b"\n\n\n", 5) + END,
    "stray CR in a run": OPEN + WORDS.replace(b"\n\n", b"\r\r\n\r\n\n\n", 2) + END,
    "[DONE] in the text": OPEN + chunk({"content": "data: [DONE]"}) + WORDS + END,
    "usage key in the text": OPEN + chunk({"content": '"usage":{"x":1}'}) + WORDS + END,
    "usage mid-stream": OPEN + WORDS + chunk({"content": "x"}, usage=USAGE) + WORDS + END,
    "error, then [DONE]": OPEN + WORDS + encode({"error": {"message": "m",
                                                          "code": "overloaded"}})
    + b"data: [DONE]\n\n",
    "cut": OPEN + WORDS,
    "[DONE] too early, more after": OPEN + WORDS + b"data: [DONE]\n\n" + WORDS + END,
    "finish reason not a string": OPEN + WORDS + chunk({}, 1) + b"data: [DONE]\n\n",
    "odd spacing": OPEN + WORDS + chunk({}, "stop").replace(b'"finish_reason":',
                                                            b'"finish_reason" :')
    + b"data: [DONE]\n\n",
    "two choices": OPEN + b"".join(encode({"id": "c", "choices": [
        {"index": 0, "delta": {"content": "a"}, "finish_reason": None},
        {"index": 1, "delta": {"content": "b"}, "finish_reason": "stop" if i == 9 else None}]})
        for i in range(10)) + END,
    "multi-line data": OPEN + b"data: {\"id\":\"c\",\ndata: \"choices\":[]}\n\n" + WORDS + END,
    "no [DONE]": OPEN + WORDS + chunk({}, "length"),
}


def response_event(kind: str, **body: Any) -> bytes:
    return encode({"type": kind, **body}, event=kind)


RESP_WORDS = b"".join(response_event("response.output_text.delta", delta=f"w{i} ")
                      for i in range(30))
RESP_USAGE = {"input_tokens": 4, "output_tokens": 30, "total_tokens": 34}
RESPONSES_STREAMS = {
    "plain": response_event("response.created", response={"id": "r1"}) + RESP_WORDS
    + response_event("response.completed", response={"id": "r1", "usage": RESP_USAGE}),
    "created later": response_event("response.in_progress", response={}) + RESP_WORDS
    + response_event("response.created", response={"id": "r2"}) + RESP_WORDS
    + response_event("response.incomplete", response={"id": "r2", "usage": RESP_USAGE}),
    "created later, no id at the end": response_event("response.in_progress", response={})
    + response_event("response.created", response={"id": "r6"}) + RESP_WORDS
    + response_event("response.completed", response={"usage": RESP_USAGE}),
    "failed": response_event("response.created", response={"id": "r3"}) + RESP_WORDS
    + response_event("response.failed", response={"id": "r3", "error": {
        "code": "server_error", "message": "m"}}),
    "error, cut": response_event("response.created", response={"id": "r4"}) + RESP_WORDS
    + response_event("error", code="server_error", message="m"),
    "CRLF and comments": (response_event("response.created", response={"id": "r5"})
                          + RESP_WORDS.replace(b"\n\n", b"\n\n: ping\n\n")
                          + response_event("response.completed", response={"id": "r5"})
                          ).replace(b"\n", b"\r\n"),
}


def reference_feed(tap: StreamTap, data: bytes) -> bytes:
    """Every event one by one, as the taps took every event before blocks (and still take
    those up to the first one that proves the stream)."""
    out = []
    for event in tap.splitter.feed(data):
        if not tap.verified and not tap._check_first(event) and tap.failure is not None:
            break
        kept = tap.on_event(event)
        if kept is not None:
            out.append(kept + b"\n\n")
    return b"".join(out)


def observed(tap: StreamTap, outputs: list[bytes]) -> dict[str, Any]:
    reported = tap.ended_with()
    return {
        "outputs": outputs, "finish": tap.finish(), "events": tap.events,
        "usage": tap.usage, "complete": tap.complete, "verified": tap.verified,
        "failed": tap.ended_failed, "failure": tap.failure and tap.failure.code,
        "text": tap.relayed_text(), "delivered": tap.delivered(),
        "ended_with": reported and (reported[0].code, reported[1]),
        "state": {k: getattr(tap, k, None) for k in ("finished", "response_id", "terminal")},
        "final": orjson.dumps(getattr(tap, "final", None)),  # its cost is an orjson.Fragment
    }


def run(make: Any, stream: bytes, cuts: list[int], reference: bool) -> dict[str, Any]:
    tap = make()
    tap.pricer = lambda usage, served: Decimal("0.5") if served else Decimal(0)
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    outputs: list[Any] = []
    for n, piece in enumerate(pieces):
        outputs.append(reference_feed(tap, piece) if reference else tap.feed(piece))
        if n % 2:  # now and then mid-stream, as a keep-alive or an error event asks
            outputs.append(tap.events)
    return observed(tap, outputs)


def cuttings(stream: bytes, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    whole: list[int] = []
    bytewise = list(range(1, len(stream)))
    events = [i + 2 for i in range(len(stream)) if stream.startswith(b"\n\n", i)][:-1]
    randoms = [sorted(rng.sample(range(1, len(stream)), k)) for k in (1, 3, 12, 60)]
    return [whole, bytewise, events, *randoms]


TAPS = {"chat, usage dropped": lambda: ChatTap(False),
        "chat, usage asked for": lambda: ChatTap(True)}


@pytest.mark.parametrize("tap_name", list(TAPS))
@pytest.mark.parametrize("name", list(CHAT_STREAMS))
def test_the_chat_tap_relays_and_notes_exactly_what_one_event_at_a_time_does(tap_name, name):
    stream = CHAT_STREAMS[name]
    for seed, cuts in enumerate(cuttings(stream, zlib.crc32(name.encode()))):
        fast = run(TAPS[tap_name], stream, cuts, reference=False)
        slow = run(TAPS[tap_name], stream, cuts, reference=True)
        assert fast == slow, (name, seed)


@pytest.mark.parametrize("name", list(RESPONSES_STREAMS))
def test_the_responses_tap_relays_and_notes_exactly_what_one_event_at_a_time_does(name):
    stream = RESPONSES_STREAMS[name]
    for seed, cuts in enumerate(cuttings(stream, zlib.crc32(name.encode()))):
        fast = run(ResponsesTap, stream, cuts, reference=False)
        slow = run(ResponsesTap, stream, cuts, reference=True)
        assert fast == slow, (name, seed)


def test_quiet_events_pass_as_one_block_and_the_end_is_still_read():
    tap = ChatTap(False)
    tap.pricer = lambda usage, served: Decimal("0.25")
    assert tap.feed(OPEN) == OPEN and tap.verified
    out = tap.feed(WORDS + END)
    # The words passed whole, as one kept block; the end was taken event by event: the
    # usage chunk nobody asked for dropped, the finish and [DONE] noted.
    assert out == WORDS + chunk({}, "stop") + b"data: [DONE]\n\n"
    assert tap.relayed[1] == WORDS and tap.complete and tap.usage is not None
    assert tap.events == 1 + 30 + 3
    assert tap.relayed_text() == "".join(f"w{i} " for i in range(30))
    asked = ChatTap(True)
    asked.pricer = lambda usage, served: Decimal("0.25")
    asked.feed(OPEN)
    priced = asked.feed(WORDS + END)
    assert orjson.loads(priced.split(b"\n\n")[-3][6:])["usage"]["cost"] == 0.25


def test_a_block_with_runs_of_blank_lines_is_split_as_events_are():
    splitter = SseSplitter()
    assert splitter.feed_block(b"data: a\n\ndata: b") == b"data: a\n\n"
    assert splitter.feed_block(b"\n\n\n\ndata: c\n\n") is None
    assert splitter.feed(b"") == [b"data: b", b"data: c"]
    crlf = SseSplitter()
    assert crlf.feed_block(b"data: a\r\n\r") == b""
    assert crlf.feed_block(b"\ndata: b\r\n\r\n") == b"data: a\n\ndata: b\n\n"
