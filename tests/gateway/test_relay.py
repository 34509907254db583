"""End to end: the official openai SDK -> Turnpike (daphne) -> the fake upstream, over
real loopback HTTP, with usage rows landing in the real database."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest

from billing.models import UsageLog
from tests.conftest import UPSTREAM_SECRET, wait_for_usage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


def test_chat_completion_round_trip_is_relayed_and_metered(client, fake_upstream, api_key,
                                                           upstream):
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "say hello please"}]
    )
    assert completion.choices[0].message.content == "tok0 tok1 tok2 "
    assert completion.usage.prompt_tokens == 3
    assert completion.usage.completion_tokens == 3

    sent = fake_upstream.requests()[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    assert sent["body"]["messages"] == [{"role": "user", "content": "say hello please"}]

    row = wait_for_usage(completion._request_id)
    assert (row.status_code, row.error_code, row.stream) == (200, "", False)
    assert (row.input_tokens, row.output_tokens) == (3, 3)
    assert row.key_id == api_key.key.pk and row.tenant_id == api_key.key.tenant_id
    assert row.upstream_id == upstream.pk and row.credential_id is not None
    assert row.model == "gpt-4o-mini" and row.endpoint == "chat/completions"
    assert row.client_ip == "127.0.0.1"
    assert row.key_prefix == api_key.key.prefix
    assert row.ttfb_ms is not None and row.latency_ms >= row.ttfb_ms


def test_chat_stream_arrives_in_chunks_and_usage_is_metered_without_the_usage_chunk(client):
    stream = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", stream=True,
        messages=[{"role": "user", "content": "count [[fake chunks=4]]"}],
    )
    request_id = stream.headers["x-request-id"]
    chunks = list(stream.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok0 tok1 tok2 tok3 "
    assert chunks[-1].choices[0].finish_reason == "stop"
    # The client did not ask for usage: Turnpike asked the upstream anyway (to meter) and
    # dropped the usage-only chunk again.
    assert all(c.choices for c in chunks)
    row = wait_for_usage(request_id)
    assert row.stream is True
    assert (row.input_tokens, row.output_tokens) == (3, 4)  # "[[fake" and "chunks=4]]" count


def test_chat_stream_with_include_usage_gets_the_usage_chunk(client):
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "hi"}],
    ))
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 3


def test_chat_stream_helper_parses_the_relayed_stream(client):
    with client.chat.completions.stream(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x [[fake chunks=2]]"}]
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "tok0 tok1 "


def test_responses_create_round_trip(client, fake_upstream):
    response = client.responses.create(model="gpt-5", input="write one line")
    assert response.output_text == "tok0 tok1 tok2 "
    assert response.usage.input_tokens == 3 and response.usage.output_tokens == 3
    assert fake_upstream.requests()[-1]["path"] == "/v1/responses"
    row = wait_for_usage(response._request_id)
    assert (row.endpoint, row.status_code, row.input_tokens, row.output_tokens) == (
        "responses", 200, 3, 3)


def test_responses_stream_relays_every_event_in_order(client):
    stream = client.responses.with_raw_response.create(
        model="gpt-5", input="hi [[fake chunks=2]]", stream=True)
    request_id = stream.headers["x-request-id"]
    events = list(stream.parse())
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert types.count("response.output_text.delta") == 2
    assert "response.output_item.done" in types
    assert [e.sequence_number for e in events] == list(range(len(events)))
    row = wait_for_usage(request_id)
    assert (row.stream, row.input_tokens, row.output_tokens) == (True, 3, 2)


def test_responses_stream_helper_gets_the_final_response(client):
    with client.responses.stream(model="gpt-5", input="go [[fake chunks=3]]") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert deltas == ["tok0 ", "tok1 ", "tok2 "]
    assert final.output_text == "tok0 tok1 tok2 "


def test_compact_endpoint_is_relayed(client, fake_upstream):
    compacted = client.responses.compact(model="gpt-5", input="a long history")
    assert compacted.output[-1].type == "compaction"
    assert fake_upstream.requests()[-1]["path"] == "/v1/responses/compact"


def test_a_chunk_reaches_the_client_before_the_upstream_finishes(gateway, upstream, api_key,
                                                                  fake_upstream):
    """The relay must not buffer: when the first delta arrives the upstream is still
    sending (it is held open between chunks), so the fake still counts it in flight."""
    body = {"model": "gpt-5", "stream": True, "input": "slow [[fake chunks=4 delay=0.4]]"}
    headers = {"Authorization": f"Bearer {api_key.secret}"}
    with httpx.stream("POST", gateway.base_url + "/responses", json=body, headers=headers,
                      timeout=10) as resp:
        assert resp.status_code == 200
        started = time.monotonic()
        lines = resp.iter_lines()
        for line in lines:
            if "response.output_text.delta" in line and line.startswith("data:"):
                first_delta_after = time.monotonic() - started
                in_flight = fake_upstream.stats()["inflight"]
                break
        rest = "\n".join(lines)
    assert in_flight == 1
    # The fake waits 0.4 s before each frame; the 3 deltas and ~8 frames still to come
    # take over 3 s, so the first delta cannot have been held back until the end.
    assert first_delta_after < 3.0
    assert rest.count("event: response.output_text.delta") == 3
    assert "response.completed" in rest


def test_a_cut_stream_reaches_the_sdk_as_response_failed_and_is_logged(client):
    stream = client.responses.with_raw_response.create(
        model="gpt-5", stream=True, input="x [[fake chunks=5 cut=2]]")
    events = list(stream.parse())
    assert [e.type for e in events].count("response.output_text.delta") == 2
    assert events[-1].type == "response.failed"
    assert events[-1].response.error.code == "upstream_stream_cut"
    row = wait_for_usage(stream.headers["x-request-id"])
    assert (row.stream, row.status_code, row.error_code) == (True, 200, "upstream_stream_cut")


def test_a_cut_chat_stream_ends_with_an_error_event(gateway, upstream, api_key):
    body = {"model": "gpt-4o-mini", "stream": True,
            "messages": [{"role": "user", "content": "[[fake chunks=5 cut=2 cut_mode=clean]]"}]}
    resp = httpx.post(gateway.base_url + "/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {api_key.secret}"})
    events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
    last = json.loads(events[-1])
    assert last["error"]["code"] == "upstream_stream_cut"
    assert len(events) == 4  # role chunk, two content chunks, the error


def test_a_cut_responses_stream_ends_with_response_failed(gateway, upstream, api_key):
    body = {"model": "gpt-5", "stream": True, "input": "[[fake chunks=5 cut=1]]"}
    resp = httpx.post(gateway.base_url + "/responses", json=body,
                      headers={"Authorization": f"Bearer {api_key.secret}"})
    datas = [json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: ")]
    assert datas[-1]["type"] == "response.failed"
    assert datas[-1]["response"]["id"] == datas[0]["response"]["id"]
    assert datas[-1]["sequence_number"] == datas[-2]["sequence_number"] + 1


def test_client_disconnect_cancels_the_upstream_stream(gateway, upstream, api_key,
                                                       fake_upstream):
    body = {"model": "gpt-5", "stream": True, "input": "[[fake chunks=50 delay=0.2]]"}
    with httpx.stream("POST", gateway.base_url + "/responses", json=body,
                      headers={"Authorization": f"Bearer {api_key.secret}"}) as resp:
        request_id = resp.headers["x-request-id"]
        for line in resp.iter_lines():
            if "output_text.delta" in line:
                break
    # The client is gone; the upstream request must be closed well before its 10 s end.
    deadline = time.monotonic() + 5
    while fake_upstream.stats()["inflight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake_upstream.stats()["inflight"] == 0
    row = wait_for_usage(request_id)
    assert row.error_code == "client_disconnected"


def test_client_disconnect_cancels_a_held_non_stream_request(gateway, upstream, api_key,
                                                             fake_upstream):
    body = {"model": "gpt-5", "input": "[[fake hold=8]]"}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gateway.base_url + "/responses", json=body, timeout=0.7,
                   headers={"Authorization": f"Bearer {api_key.secret}"})
    deadline = time.monotonic() + 5
    while fake_upstream.stats()["inflight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake_upstream.stats()["inflight"] == 0
    deadline = time.monotonic() + 5
    while not UsageLog.objects.filter(error_code="client_disconnected").exists():
        assert time.monotonic() < deadline, "no usage row for the abandoned request"
        time.sleep(0.05)
    assert UsageLog.objects.get(error_code="client_disconnected").status_code == 499


def test_parallel_streams_are_relayed_independently(client):
    results: dict[int, str] = {}

    def run(i: int) -> None:
        chunks = client.chat.completions.create(
            model="gpt-4o-mini", stream=True,
            messages=[{"role": "user", "content": f"[[fake chunks={i + 1} delay=0.05]]"}])
        results[i] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: "".join(f"tok{n} " for n in range(i + 1)) for i in range(8)}


def _post(gateway: Any, path: str, headers: dict[str, str], **kwargs: Any) -> httpx.Response:
    return httpx.post(gateway.url + path, headers=headers, timeout=10, **kwargs)
