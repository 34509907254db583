"""The fake upstream, driven over real HTTP by the official openai SDK and httpx.

Each server runs as a real subprocess (``python -m tests.fakeupstream --port 0``), exactly as
the gateway's end-to-end tests, the demo and the benchmarks use it.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

REPO = Path(__file__).resolve().parents[2]
LISTENING = "fake upstream listening on "


@dataclass(frozen=True)
class FakeServer:
    url: str
    process: subprocess.Popen[str]

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"


def start_server(command: list[str], timeout: float = 20.0) -> FakeServer:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(timeout=0.1):
            line = process.stdout.readline()
            if line.startswith(LISTENING):
                return FakeServer(line[len(LISTENING) :].strip(), process)
            if not line:
                break
    process.kill()
    raise RuntimeError(f"fake upstream did not start: {command}")


def stop_server(server: FakeServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        server.process.kill()


def fake_module(*args: str) -> list[str]:
    return [sys.executable, "-m", "tests.fakeupstream", "--port", "0", *args]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    server = start_server(fake_module())
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def keyed_fake() -> Iterator[FakeServer]:
    server = start_server(
        fake_module("--api-key", "sk-one", "--api-key", "sk-two", "--models", "alpha,beta")
    )
    yield server
    stop_server(server)


@pytest.fixture
def client(fake: FakeServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.v1, api_key="sk-test", max_retries=0, timeout=10)


@pytest.fixture
def http(fake: FakeServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, timeout=10) as session:
        yield session


def sse(text: str) -> list[tuple[str | None, str]]:
    """(event name or None, data) per SSE frame."""
    frames = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
        frames.append((name, "\n".join(data)))
    return frames


def sse_json(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(data) for _name, data in sse(text) if data != "[DONE]"]


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# --------------------------------------------------------------------------- chat completions


def test_chat_completion_returns_deterministic_text_usage_and_request_model(
    client: openai.OpenAI,
) -> None:
    completion = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "be brief"}, *user("say hi")],
    )
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "gpt-4o-mini"
    choice = completion.choices[0]
    assert choice.message.content == "tok0 tok1 tok2 "
    assert choice.finish_reason == "stop"
    assert choice.message.tool_calls is None
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (4, 3, 7)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0


def test_chat_stream_sends_role_chunk_deltas_finish_chunk_and_usage_chunk(
    client: openai.OpenAI,
) -> None:
    chunks = list(
        client.chat.completions.create(
            model="gpt-5",
            messages=user("hello [[fake chunks=2 cached=1 reasoning_tokens=4]]"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len({chunk.id for chunk in chunks}) == 1
    assert all(chunk.model == "gpt-5" for chunk in chunks)
    first, *deltas, finish, usage_chunk = chunks
    assert first.choices[0].delta.role == "assistant"
    assert first.choices[0].delta.content == ""
    assert [chunk.choices[0].delta.content for chunk in deltas] == ["tok0 ", "tok1 "]
    assert finish.choices[0].finish_reason == "stop"
    assert all(chunk.usage is None for chunk in [first, *deltas, finish])
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    # "hello" plus the four words of the token itself.
    counts = {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert usage_chunk.usage.model_dump(include=counts) == {
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "total_tokens": 7,
    }
    assert usage_chunk.usage.prompt_tokens_details.cached_tokens == 1
    assert usage_chunk.usage.completion_tokens_details.reasoning_tokens == 4


def test_chat_stream_is_framed_as_data_lines_ending_with_done(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": user("hi"), "stream": True},
    )
    assert response.headers["content-type"] == "text/event-stream"
    frames = sse(response.text)
    assert all(name is None for name, _data in frames)
    assert frames[-1] == (None, "[DONE]")
    chunks = [orjson.loads(data) for _name, data in frames[:-1]]
    # Without include_usage there is no usage anywhere, not even null.
    assert all("usage" not in chunk for chunk in chunks)
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks] == [None] * 4 + ["stop"]


def test_chat_stream_helper_accumulates_the_final_completion(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model="gpt-4o-mini",
        messages=user("go [[fake chunks=4]]"),
        stream_options={"include_usage": True},
    ) as stream:
        deltas = [event.delta for event in stream if event.type == "content.delta"]
        final = stream.get_final_completion()
    # The helper reports the opening chunk's empty content as a delta too.
    assert deltas == ["", "tok0 ", "tok1 ", "tok2 ", "tok3 "]
    assert final.choices[0].message.content == "tok0 tok1 tok2 tok3 "
    assert final.usage is not None
    assert final.usage.completion_tokens == 4


def test_streams_tool_call_arguments_in_pieces_with_id_and_name_only_first(
    client: openai.OpenAI,
) -> None:
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=user('weather? [[fake tool=get_weather tools=2 args={"city":"Rome"}]]'),
            stream=True,
        )
    )
    assert chunks[0].choices[0].delta.content is None
    fragments = [call for chunk in chunks for call in (chunk.choices[0].delta.tool_calls or [])]
    by_index: dict[int, list[Any]] = {0: [], 1: []}
    for fragment in fragments:
        by_index[fragment.index].append(fragment)
    for index, name in [(0, "get_weather"), (1, "get_weather_1")]:
        opening, *rest = by_index[index]
        assert opening.id.startswith("call_")
        assert opening.type == "function"
        assert opening.function.name == name
        assert opening.function.arguments == ""
        assert len(rest) >= 2
        assert all(piece.id is None and piece.function.name is None for piece in rest)
        assert "".join(piece.function.arguments for piece in rest) == '{"city":"Rome"}'
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_chat_tool_call_without_stream_has_null_content_and_parsed_calls(
    client: openai.OpenAI,
) -> None:
    completion = client.chat.completions.create(
        model="m", messages=user("x"), extra_headers={"x-fake-tool": "lookup"}
    )
    message = completion.choices[0].message
    assert message.content is None
    assert message.tool_calls is not None
    assert [(call.function.name, call.function.arguments) for call in message.tool_calls] == [
        ("lookup", '{"city":"Paris"}')
    ]
    assert completion.choices[0].finish_reason == "tool_calls"
    # Three argument pieces (max(2, chunks=3)) are the output tokens.
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3


def test_a_later_empty_tool_token_ends_a_tool_round_trip_with_text(
    client: openai.OpenAI,
) -> None:
    first = client.chat.completions.create(model="m", messages=user("go [[fake tool=lookup]]"))
    call = first.choices[0].message.tool_calls[0]
    second = client.chat.completions.create(
        model="m",
        messages=[
            *user("go [[fake tool=lookup]]"),
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny [[fake tool= chunks=1]]"},
        ],
    )
    assert second.choices[0].message.content == "tok0 "
    assert second.choices[0].finish_reason == "stop"
    # 3 + 4 words of text; the replayed call's arguments do not count.
    assert second.usage is not None
    assert second.usage.prompt_tokens == 7


def test_chat_reasoning_is_streamed_as_reasoning_content(http: httpx.Client) -> None:
    body = {"model": "m", "messages": user("[[fake reasoning=1 chunks=1]]"), "stream": True}
    chunks = sse_json(http.post("/v1/chat/completions", json=body).text)
    reasoning = "".join(c["choices"][0]["delta"].get("reasoning_content", "") for c in chunks)
    assert reasoning == "thinking about it"
    assert [c["choices"][0]["delta"].get("content") for c in chunks[-2:]] == ["tok0 ", None]


def test_rate_limit_status_raises_rate_limit_error_with_retry_after(
    client: openai.OpenAI,
) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(
            model="m", messages=user("hi [[fake status=429 retry_after=2]]")
        )
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "2"
    assert caught.value.body == {
        "message": "fake upstream error 429",
        "type": "rate_limit_exceeded",
        "param": None,
        "code": "rate_limit_exceeded",
    }


def test_server_error_status_uses_server_error_type(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.responses.create(model="m", input="x", extra_headers={"x-fake-status": "503"})
    assert caught.value.status_code == 503
    assert caught.value.body["type"] == "server_error"


def test_cut_abort_breaks_the_connection_after_k_chunks(client: openai.OpenAI) -> None:
    received = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in client.chat.completions.create(
            model="m", messages=user("hi [[fake cut=2 chunks=5]]"), stream=True
        ):
            received.append(chunk.choices[0].delta.content)
    assert received == ["", "tok0 ", "tok1 "]


def test_cut_clean_ends_the_body_without_terminal_events(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": user("hi"), "stream": True},
        headers={"x-fake-cut": "1", "x-fake-cut-mode": "clean"},
    )
    assert response.status_code == 200
    chunks = [data for _name, data in sse(response.text)]
    assert "[DONE]" not in chunks
    assert [orjson.loads(c)["choices"][0]["delta"].get("content") for c in chunks] == ["", "tok0 "]


def test_echo_replies_with_the_last_user_message_without_the_token(
    client: openai.OpenAI,
) -> None:
    with client.chat.completions.stream(
        model="m",
        messages=[
            *user("an older message"),
            {"role": "assistant", "content": "ok"},
            *user("please repeat these words [[fake echo=1 chunks=4]]"),
        ],
    ) as stream:
        deltas = [event.delta for event in stream if event.type == "content.delta"]
    assert deltas == ["", "please ", "repeat", " these", " words"]


def test_header_directives_apply_and_body_tokens_override_them(client: openai.OpenAI) -> None:
    from_header = client.chat.completions.create(
        model="m", messages=user("hi"), extra_headers={"x-fake-chunks": "5", "x-fake-usage": "0"}
    )
    assert from_header.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 "
    assert from_header.usage is None
    overridden = client.chat.completions.create(
        model="m", messages=user("hi [[fake chunks=1]]"), extra_headers={"x-fake-chunks": "5"}
    )
    assert overridden.choices[0].message.content == "tok0 "


def test_unknown_directive_is_answered_with_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="unknown fake directive 'chunkz'"):
        client.chat.completions.create(model="m", messages=user("[[fake chunkz=2]]"))


def test_json_directive_answers_json_to_a_stream_request(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": user("hi [[fake json=1]]"), "stream": True},
    )
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["object"] == "chat.completion"


def test_delay_paces_the_stream_and_hold_delays_the_headers(http: httpx.Client) -> None:
    started = time.monotonic()
    body = {"model": "m", "messages": user("[[fake delay=0.1]]"), "stream": True}
    frames = sse(http.post("/v1/chat/completions", json=body).text)
    paced = time.monotonic() - started
    assert len(frames) == 6  # role, 3 deltas, finish, [DONE]: five gaps of 0.1 s
    assert 0.45 <= paced < 3
    started = time.monotonic()
    http.post("/v1/chat/completions", json={"messages": user("[[fake hold=0.3]]")})
    assert time.monotonic() - started >= 0.3


# --------------------------------------------------------------------------- responses


def test_responses_create_returns_message_and_complete_usage(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="gpt-5", instructions="be nice", input="tell me [[fake chunks=2 cached=3]]"
    )
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.model == "gpt-5"
    assert response.instructions == "be nice"
    assert response.output_text == "tok0 tok1 "
    [item] = response.output
    assert item.type == "message"
    assert item.id.startswith("msg_")
    assert response.usage is not None
    assert response.usage.model_dump() == {
        "input_tokens": 7,
        "input_tokens_details": {
            "cached_tokens": 3,
            "cache_write_tokens": 0,
            "cache_write_tokens_details": None,
        },
        "output_tokens": 2,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 9,
    }


def test_responses_stream_emits_the_full_event_sequence_with_consecutive_numbers(
    http: httpx.Client,
) -> None:
    body = {"model": "gpt-5", "input": user("hi [[fake chunks=2]]"), "stream": True}
    response = http.post("/v1/responses", json=body)
    assert response.headers["content-type"] == "text/event-stream"
    frames = sse(response.text)
    events = [orjson.loads(data) for _name, data in frames]
    assert [name for name, _data in frames] == [event["type"] for event in events]
    assert [event["type"] for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event["sequence_number"] for event in events] == list(range(10))
    item_id = events[2]["item"]["id"]
    assert {event.get("item_id", item_id) for event in events[3:9]} == {item_id}
    assert events[6]["text"] == "tok0 tok1 "
    completed = events[-1]["response"]
    assert completed["id"] == events[0]["response"]["id"]
    assert completed["output"] == [events[8]["item"]]
    assert completed["usage"]["total_tokens"] == 5


def test_responses_stream_helper_returns_final_response_with_reasoning(
    client: openai.OpenAI,
) -> None:
    with client.responses.stream(model="gpt-5", input="think [[fake reasoning=1]]") as stream:
        types = [event.type for event in stream]
        final = stream.get_final_response()
    assert types[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert "response.reasoning_summary_text.delta" in types
    assert types[-1] == "response.completed"
    reasoning, message = final.output
    assert reasoning.type == "reasoning"
    assert reasoning.id.startswith("rs_")
    assert reasoning.encrypted_content == "enc_fake"
    assert [part.text for part in reasoning.summary] == ["thinking about it"]
    assert message.type == "message"
    assert final.output_text == "tok0 tok1 tok2 "


def test_responses_raw_stream_streams_function_call_arguments(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(model="gpt-5", input="[[fake tool=get_weather]]", stream=True)
    )
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(deltas) >= 2
    assert "".join(deltas) == '{"city":"Paris"}'
    [done_event] = [e for e in events if e.type == "response.output_item.done"]
    item = done_event.item
    assert item.type == "function_call"
    assert item.id.startswith("fc_")
    assert item.call_id.startswith("call_")
    assert (item.name, item.arguments) == ("get_weather", '{"city":"Paris"}')
    assert events[-1].type == "response.completed"


def test_responses_finish_length_ends_with_response_incomplete(http: httpx.Client) -> None:
    body = {"model": "m", "input": "x [[fake finish=length]]", "stream": True}
    last = sse_json(http.post("/v1/responses", json=body).text)[-1]
    assert last["type"] == "response.incomplete"
    assert last["response"]["status"] == "incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_responses_usage_zero_omits_usage(client: openai.OpenAI) -> None:
    response = client.responses.create(model="m", input="x [[fake usage=0]]")
    assert response.usage is None
    assert response.output_text == "tok0 tok1 tok2 "


def test_responses_compact_returns_user_messages_and_one_compaction_item(
    client: openai.OpenAI,
) -> None:
    compacted = client.responses.compact(
        model="gpt-5",
        input=[
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": [{"type": "input_text", "text": "second"}]},
        ],
    )
    assert compacted.object == "response.compaction"
    *messages, compaction = compacted.output
    assert [(m.role, m.content[0].text) for m in messages] == [
        ("user", "first question"),
        ("user", "second"),
    ]
    assert compaction.type == "compaction"
    assert compaction.encrypted_content
    assert compacted.usage.input_tokens == 5


# --------------------------------------------------------------------------- models


def test_models_list_returns_the_default_models(client: openai.OpenAI) -> None:
    models = list(client.models.list())
    assert [model.id for model in models] == [
        "gpt-4o-mini",
        "gpt-5",
        "gpt-5-codex",
        "claude-sonnet-4-5",
        "llama3.2",
    ]
    assert {(model.object, model.owned_by) for model in models} == {("model", "fakeupstream")}


# --------------------------------------------------------------------------- anthropic


def test_anthropic_stream_sends_the_event_sequence_and_usage(http: httpx.Client) -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "system": "be short",
        "messages": user("hello there [[fake chunks=2 cached=1]]"),
        "stream": True,
    }
    frames = sse(http.post("/v1/messages", json=body).text)
    events = [orjson.loads(data) for _name, data in frames]
    assert [name for name, _data in frames] == [event["type"] for event in events]
    assert [event["type"] for event in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    message = events[0]["message"]
    assert message["id"].startswith("msg_")
    assert message["model"] == "claude-sonnet-4-5"
    # 7 words, 1 of them read from cache: Anthropic input_tokens excludes cache reads.
    assert message["usage"] == {
        "input_tokens": 6,
        "output_tokens": 0,
        "cache_read_input_tokens": 1,
        "cache_creation_input_tokens": 0,
    }
    assert [e["delta"]["text"] for e in events[3:5]] == ["tok0 ", "tok1 "]
    assert events[6]["delta"]["stop_reason"] == "end_turn"
    assert events[6]["usage"] == {"output_tokens": 2}


def test_anthropic_stream_tool_use_sends_partial_json_pieces(http: httpx.Client) -> None:
    body = {"model": "c", "messages": user("[[fake tool=get_weather]]"), "stream": True}
    events = sse_json(http.post("/v1/messages", json=body).text)
    block = events[2]["content_block"]
    assert block["type"] == "tool_use"
    assert block["id"].startswith("toolu_")
    assert block["name"] == "get_weather"
    pieces = [e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"]
    assert len(pieces) == 3
    assert orjson.loads("".join(pieces)) == {"city": "Paris"}
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_anthropic_message_has_thinking_text_blocks_and_stop_reason(http: httpx.Client) -> None:
    body = {"model": "c", "messages": user("[[fake reasoning=1 finish=length chunks=1]]")}
    message = http.post("/v1/messages", json=body).json()
    assert message["type"] == "message"
    assert message["content"] == [
        {"type": "thinking", "thinking": "thinking about it", "signature": "sig_fake"},
        {"type": "text", "text": "tok0 "},
    ]
    assert message["stop_reason"] == "max_tokens"
    assert message["usage"]["output_tokens"] == 1


def test_anthropic_errors_use_the_anthropic_error_shape(http: httpx.Client) -> None:
    response = http.post(
        "/v1/messages", json={"messages": user("hi")}, headers={"x-fake-status": "529"}
    )
    assert response.status_code == 529
    assert response.json() == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "fake upstream error 529"},
    }


def test_anthropic_cut_clean_stops_before_message_delta(http: httpx.Client) -> None:
    body = {"model": "c", "messages": user("[[fake cut=1 cut_mode=clean]]"), "stream": True}
    types = [e["type"] for e in sse_json(http.post("/v1/messages", json=body).text)]
    assert types == ["message_start", "ping", "content_block_start", "content_block_delta"]


# --------------------------------------------------------------------------- ollama


def test_ollama_streams_ndjson_by_default_with_final_counts(http: httpx.Client) -> None:
    response = http.post("/api/chat", json={"model": "llama3.2", "messages": user("one two")})
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = [orjson.loads(line) for line in response.text.splitlines()]
    assert [line["message"]["content"] for line in lines] == ["tok0 ", "tok1 ", "tok2 ", ""]
    assert [line["done"] for line in lines] == [False, False, False, True]
    assert all(line["model"] == "llama3.2" for line in lines)
    final = lines[-1]
    assert (final["done_reason"], final["prompt_eval_count"], final["eval_count"]) == ("stop", 2, 3)


def test_ollama_without_stream_returns_one_object_with_tool_call_arguments(
    http: httpx.Client,
) -> None:
    body = {"model": "llama3.2", "stream": False, "messages": user("[[fake tool=f reasoning=1]]")}
    reply = http.post("/api/chat", json=body).json()
    assert reply["done"] is True
    assert reply["message"]["thinking"] == "thinking about it"
    assert reply["message"]["tool_calls"] == [
        {"function": {"name": "f", "arguments": {"city": "Paris"}}}
    ]
    assert reply["eval_count"] == 3


def test_ollama_tags_and_errors(http: httpx.Client) -> None:
    tags = http.get("/api/tags").json()
    assert [model["name"] for model in tags["models"]][-1] == "llama3.2"
    error = http.post("/api/chat", json={"messages": []}, headers={"x-fake-status": "500"})
    assert (error.status_code, error.json()) == (500, {"error": "fake upstream error 500"})


# --------------------------------------------------------------------------- auth


def test_api_keys_are_enforced_in_each_protocols_shape(keyed_fake: FakeServer) -> None:
    wrong = openai.OpenAI(base_url=keyed_fake.v1, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.chat.completions.create(model="m", messages=user("hi"))
    assert caught.value.body["code"] == "invalid_api_key"
    right = openai.OpenAI(base_url=keyed_fake.v1, api_key="sk-two", max_retries=0)
    assert [model.id for model in right.models.list()] == ["alpha", "beta"]

    with httpx.Client(base_url=keyed_fake.url, timeout=10) as session:
        body = {"model": "c", "messages": user("hi")}
        denied = session.post("/v1/messages", json=body)
        assert denied.status_code == 401
        assert denied.json()["error"]["type"] == "authentication_error"
        assert session.post("/v1/messages", json=body, headers={"x-api-key": "sk-one"}).is_success
        ollama_body = {**body, "stream": False}
        assert session.post("/api/chat", json=ollama_body).json() == {"error": "invalid api key"}
        bearer = {"Authorization": "Bearer sk-one"}
        assert session.post("/api/chat", json=ollama_body, headers=bearer).json()["done"] is True
        assert session.get("/_fake/health").json() == {"ok": True}


def test_without_api_keys_any_key_or_none_is_accepted(http: httpx.Client) -> None:
    assert http.get("/v1/models").is_success
    assert http.get("/v1/models", headers={"Authorization": "Bearer anything"}).is_success


# --------------------------------------------------------------------------- control endpoints


def test_records_requests_with_lowercased_headers_and_parsed_body(http: httpx.Client) -> None:
    assert http.delete("/_fake/requests").is_success
    body = {"model": "m", "messages": user("recorded")}
    before = time.time()
    http.post("/v1/chat/completions", json=body, headers={"X-Trace": "abc"})
    http.get("/v1/models")
    first, second = http.get("/_fake/requests").json()
    assert (first["method"], first["path"], first["body"]) == ("POST", "/v1/chat/completions", body)
    assert first["headers"]["x-trace"] == "abc"
    assert before <= first["time"] <= time.time()
    assert (second["method"], second["path"], second["body"]) == ("GET", "/v1/models", None)
    http.delete("/_fake/requests")
    assert http.get("/_fake/requests").json() == []


def test_keeps_only_the_last_500_requests(http: httpx.Client) -> None:
    http.delete("/_fake/requests")
    for index in range(505):
        http.get("/v1/models", headers={"x-n": str(index)})
    recorded = http.get("/_fake/requests").json()
    assert len(recorded) == 500
    assert (recorded[0]["headers"]["x-n"], recorded[-1]["headers"]["x-n"]) == ("5", "504")


def test_stats_report_max_inflight_for_concurrent_held_requests(
    http: httpx.Client, fake: FakeServer
) -> None:
    assert http.post("/_fake/stats/reset").json()["total"] == 0

    def held_request(_index: int) -> int:
        body = {"model": "m", "messages": user("[[fake hold=0.6]]")}
        return httpx.post(f"{fake.v1}/chat/completions", json=body, timeout=10).status_code

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(held_request, index) for index in range(4)]
        time.sleep(0.3)
        during = http.get("/_fake/stats").json()
        statuses = [future.result() for future in futures]
    assert time.monotonic() - started < 1.5  # concurrent, not 4 x 0.6 s
    assert statuses == [200] * 4
    assert during["inflight"] == 4
    assert http.get("/_fake/stats").json() == {"total": 4, "inflight": 0, "max_inflight": 4}


def test_client_disconnect_mid_stream_cancels_the_handler(
    http: httpx.Client, fake: FakeServer
) -> None:
    http.post("/_fake/stats/reset")
    body = {"model": "m", "messages": user("[[fake chunks=100 delay=0.2]]"), "stream": True}
    with (
        httpx.Client(timeout=10) as other,
        other.stream("POST", f"{fake.v1}/chat/completions", json=body) as response,
    ):
        # Keep the iterator referenced: dropping it closes the response early.
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert http.get("/_fake/stats").json()["inflight"] == 1
    deadline = time.monotonic() + 3
    while http.get("/_fake/stats").json()["inflight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert http.get("/_fake/stats").json()["inflight"] == 0


def test_health_answers_ok(http: httpx.Client) -> None:
    assert http.get("/_fake/health").json() == {"ok": True}


def test_management_command_serves_the_configured_models() -> None:
    env_command = [sys.executable, "manage.py", "fakeupstream", "--port", "0", "--models", "x,y"]
    server = start_server(env_command, timeout=60)
    try:
        listed = httpx.get(f"{server.v1}/models", timeout=10).json()
        assert [model["id"] for model in listed["data"]] == ["x", "y"]
    finally:
        stop_server(server)


def test_management_command_says_so_where_the_fake_is_not_installed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The Docker image leaves tests/ out; the command must explain rather than trace back.
    from django.core.management import CommandError, call_command

    monkeypatch.setitem(sys.modules, "tests.fakeupstream", None)
    with pytest.raises(CommandError, match="test tool"):
        call_command("fakeupstream", port=0)
