"""Background responses, the pure parts (gateway.stored.background): the Send that records
a run's events (what it keeps, renames, holds back), the response assembled from events
(what a cancelled or reaped run shows), the job that crosses the Celery broker, and the
``starting_after`` cursor. The run itself, with a real worker, is in
tests/gateway/test_background_responses.py."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from billing.pricing import Price
from gateway.errors import InvalidRequest
from gateway.stored.background import Assembler, Job, Recorder, starting_after
from gateway.translate import canonical as c
from gateway.translate.responses import ResponsesEncoder
from gateway.wire.sse import encode
from gateway.wire.usage import Usage
from keys.limits import Admission

RUN_ID = "resp_run"


class FakeRunner:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def patch(self, response: dict[str, Any]) -> dict[str, Any]:
        return {**response, "id": RUN_ID, "background": True}

    async def emit(self, events: list[dict[str, Any]]) -> None:
        self.events.extend(events)


def record(chunks: list[bytes], status: int = 200,
           ctype: bytes = b"text/event-stream") -> tuple[FakeRunner, Recorder]:
    runner = FakeRunner()
    recorder = Recorder(runner)  # type: ignore[arg-type]

    async def play() -> None:
        await recorder({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", ctype)]})
        for index, chunk in enumerate(chunks):
            await recorder({"type": "http.response.body", "body": chunk,
                            "more_body": index < len(chunks) - 1})

    asyncio.run(play())
    return runner, recorder


def translated_stream() -> bytes:
    encoder = ResponsesEncoder("m")
    out = b"".join(encoder.feed(e) for e in (c.Start(), c.TextDelta("tok0 "),
                                              c.TextDelta("tok1 "), c.Finish("stop"),
                                              c.UsageReport(Usage(input_tokens=3,
                                                                  output_tokens=2))))
    return out + encoder.close()


def test_the_recorder_keeps_events_renames_the_start_and_holds_the_end() -> None:
    data = translated_stream()
    middle = len(data) // 2  # an event split across two sends
    keepalive = encode({"type": "keepalive", "sequence_number": 9}, event="keepalive")
    runner, recorder = record([data[:middle], b": keepalive\n\n" + keepalive, data[middle:]])
    kinds = [e["type"] for e in runner.events]
    # The POST already announced response.created: the upstream's start is in_progress,
    # once; keep-alives are gone; the terminal event waits for the status change.
    assert kinds[0] == "response.in_progress" and kinds.count("response.in_progress") == 1
    assert "response.created" not in kinds and "keepalive" not in kinds
    assert "response.completed" not in kinds
    assert [e["delta"] for e in runner.events
            if e["type"] == "response.output_text.delta"] == ["tok0 ", "tok1 "]
    assert recorder.terminal is not None and recorder.terminal["type"] == "response.completed"
    assert recorder.terminal["response"]["id"] == RUN_ID
    assert runner.events[0]["response"]["id"] == RUN_ID


def test_a_json_answer_is_kept_whole() -> None:
    body = b'{"error": {"message": "no", "code": "upstream_error"}}'
    runner, recorder = record([body], status=502, ctype=b"application/json")
    assert runner.events == [] and recorder.status == 502 and recorder.body == body


def test_the_assembler_shows_what_a_cut_run_produced() -> None:
    assembler = Assembler({"id": RUN_ID, "status": "in_progress", "output": []})
    for event in [
        {"type": "response.in_progress", "response": {"id": RUN_ID, "status": "in_progress",
                                                      "output": [], "model": "m"}},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {"type": "function_call", "id": "fc_1", "status": "in_progress",
                  "arguments": "", "name": "f", "call_id": "c"}},
        {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": "{}"},
        {"type": "response.output_item.done", "output_index": 0,
         "item": {"type": "function_call", "id": "fc_1", "status": "completed",
                  "arguments": "{}", "name": "f", "call_id": "c"}},
        {"type": "response.output_item.added", "output_index": 1,
         "item": {"type": "message", "id": "msg_1", "status": "in_progress", "role": "assistant",
                  "content": []}},
        {"type": "response.content_part.added", "output_index": 1, "content_index": 0,
         "part": {"type": "output_text", "text": "", "annotations": []}},
        {"type": "response.output_text.delta", "output_index": 1, "content_index": 0,
         "delta": "tok0 "},
        {"type": "response.output_text.delta", "output_index": 1, "content_index": 0,
         "delta": "tok1 "},
    ]:
        assembler.feed(event)
    snapshot = assembler.snapshot("cancelled", usage=None)
    assert snapshot["status"] == "cancelled" and snapshot["model"] == "m"
    call, message = snapshot["output"]
    assert call["status"] == "completed" and call["arguments"] == "{}"
    assert message["status"] == "incomplete"  # cut mid-item: never to be acted on
    assert message["content"][0]["text"] == "tok0 tok1 "


def test_a_job_crosses_the_broker_and_comes_back_the_same() -> None:
    job = Job(
        response_id=RUN_ID, request_id="req_1", started_at=1_700_000_000.5, client_ip=None,
        headers=[("user-agent", "sdk"), ("session_id", "s")],
        key={"x": 1}, client_model="gpt-5-high", model="gpt-5", effort="high", session="k:s",
        payload={"model": "gpt-5-high", "input": "hi", "stream": True},
        record={"id": RUN_ID}, admission={
            "key_id": 1, "tenant_id": 2, "request_id": "req_1", "rpm": 0, "rpd": 0, "tpm": 0,
            "concurrency": 1, "reserve": 5, "key_quota": False, "commit": True,
            "session": None},
        price={"input": "1.5", "cached_input": None, "output": "2", "reasoning": None,
               "per_request": "0"},
        multiplier="1.25", binding="7:3", cooled={"3": 123})
    again = Job.decode(job.encode())
    assert again == job
    ticket = again.ticket()
    assert ticket.admission == Admission(**job.admission)
    assert ticket.price == Price(input=Decimal("1.5"), output=Decimal("2"))
    assert ticket.multiplier == Decimal("1.25") and ticket.cooled == {3: 123}


@pytest.mark.parametrize(("query", "after"), [([], -1), ([("starting_after", "")], -1),
                                              ([("starting_after", "0")], 0),
                                              ([("starting_after", "41")], 41)])
def test_starting_after(query: list[tuple[str, str]], after: int) -> None:
    assert starting_after(query) == after


@pytest.mark.parametrize("value", ["-2", "x", "1.5"])
def test_a_bad_starting_after_is_a_400(value: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        starting_after([("starting_after", value)])
    assert refused.value.param == "starting_after"
