"""Translation across the four protocols with one small conversation (shapes from
shared/PROTOCOL.md §1, §3.2 and §4): a Chat request with a system prompt, a tool call and its
result builds the equivalent Responses, Anthropic and Ollama requests; the same answer (text,
then a tool call, then usage) streamed by each kind of upstream decodes to the same
canonical events; and those events encode to the event order Chat and Responses clients
need. The per-protocol details live in tests/gateway/translate/."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.translate import anthropic, chat, ollama, responses
from gateway.translate import canonical as c
from gateway.wire.sse import SseSplitter, event_data, event_name
from gateway.wire.usage import Usage

ARGS = '{"city":"Paris"}'
TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather now",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
CHAT_REQUEST = {
    "model": "client-model", "max_tokens": 50, "temperature": 0.5,
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": ARGS}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    ],
    "tools": [TOOL],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
}


@pytest.fixture
def canonical() -> c.CanonicalRequest:
    return chat.parse_request(CHAT_REQUEST)


# --- requests (PROTOCOL.md §4.1-4.3) ----------------------------------------------------------

def test_chat_to_responses_flattens_tools_and_turns_messages_into_items(canonical):
    body = responses.build_request(canonical, "up-model")
    assert body["model"] == "up-model" and body["max_output_tokens"] == 50
    assert body["input"] == [
        {"type": "message", "role": "system",
         "content": [{"type": "input_text", "text": "Be brief."}]},
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": ARGS},
        {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
    ]
    assert body["tools"] == [{"type": "function", **TOOL["function"]}]
    assert body["tool_choice"] == {"type": "function", "name": "get_weather"}


def test_chat_to_anthropic_lifts_the_system_prompt_and_pairs_tool_use_with_its_result(
        canonical):
    body = anthropic.build_request(canonical, "up-model")
    assert body["system"] == "Be brief." and body["max_tokens"] == 50
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1",
                                           "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1",
                                      "content": "18C"}]},
    ]
    assert body["tools"] == [{"name": "get_weather", "description": "Weather now",
                              "input_schema": TOOL["function"]["parameters"]}]
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather"}


def test_chat_to_ollama_sends_arguments_as_objects_and_limits_as_options(canonical):
    body = ollama.build_request(canonical, "up-model")
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "tool"]
    call = body["messages"][2]["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert body["messages"][3]["content"] == "18C"
    assert body["options"] == {"temperature": 0.5, "num_predict": 50}


def test_a_responses_request_round_trips_to_chat():
    body = responses.build_request(chat.parse_request(CHAT_REQUEST), "m")
    again = chat.build_request(responses.parse_request(body), "m")
    assert again["messages"] == CHAT_REQUEST["messages"]
    assert again["tools"] == [TOOL] and again["tool_choice"] == CHAT_REQUEST["tool_choice"]


# --- one answer from each kind of upstream ----------------------------------------------------

def chat_chunk(delta: dict[str, Any] | None, finish: str | None = None,
               usage: dict[str, Any] | None = None) -> dict[str, Any]:
    chunk: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk",
                             "created": 1, "model": "m", "choices": []}
    if delta is not None:
        chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    if usage:
        chunk["usage"] = usage
    return chunk


def from_chat() -> list[c.Event]:
    decoder = chat.StreamDecoder()
    chunks = [
        chat_chunk({"role": "assistant", "content": ""}), chat_chunk({"content": "Hel"}),
        chat_chunk({"content": "lo"}),
        chat_chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                    "function": {"name": "get_weather", "arguments": ""}}]}),
        chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": ARGS}}]}),
        chat_chunk({}, "tool_calls"),
        chat_chunk(None, usage={"prompt_tokens": 9, "completion_tokens": 4}),
    ]
    return [e for chunk in chunks for e in decoder.feed(chunk)]


def from_responses() -> list[c.Event]:
    decoder = responses.StreamDecoder()
    call = {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "get_weather"}
    message = {"id": "msg_1", "type": "message", "role": "assistant"}
    events = [
        {"type": "response.created", "response": {"id": "resp_1", "model": "m"}},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {**message, "status": "in_progress", "content": []}},
        {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
         "content_index": 0, "delta": "Hel"},
        {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
         "content_index": 0, "delta": "lo"},
        {"type": "response.output_item.done", "output_index": 0, "item": {
            **message, "status": "completed",
            "content": [{"type": "output_text", "text": "Hello", "annotations": []}]}},
        {"type": "response.output_item.added", "output_index": 1,
         "item": {**call, "status": "in_progress", "arguments": ""}},
        {"type": "response.function_call_arguments.delta", "item_id": "fc_1",
         "output_index": 1, "delta": ARGS},
        {"type": "response.output_item.done", "output_index": 1,
         "item": {**call, "status": "completed", "arguments": ARGS}},
        {"type": "response.completed", "response": {
            "id": "resp_1", "status": "completed",
            "usage": {"input_tokens": 9, "output_tokens": 4, "total_tokens": 13}}},
    ]
    return [e for event in events for e in decoder.feed(event)]


def from_anthropic() -> list[c.Event]:
    decoder = anthropic.StreamDecoder()
    events = [
        {"type": "message_start", "message": {"id": "msg_01", "model": "m",
                                              "usage": {"input_tokens": 9, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text",
                                                                      "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta",
                                                              "text": "Hel"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta",
                                                              "text": "lo"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta",
                                                              "partial_json": ARGS}},
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
         "usage": {"output_tokens": 4}},
        {"type": "message_stop"},
    ]
    return [e for event in events for e in decoder.feed(event["type"], event)]


def from_ollama() -> list[c.Event]:
    decoder = ollama.StreamDecoder()
    base = {"model": "m", "created_at": "2026-03-01T12:00:00Z", "done": False}
    lines = [
        {**base, "message": {"role": "assistant", "content": "Hel"}},
        {**base, "message": {"role": "assistant", "content": "lo"}},
        {**base, "message": {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}},
        {**base, "done": True, "done_reason": "stop", "prompt_eval_count": 9,
         "eval_count": 4, "message": {"role": "assistant", "content": ""}},
    ]
    return [e for line in lines for e in decoder.feed(line)]


def comparable(events: list[c.Event]) -> list[Any]:
    """The events without what each upstream names its own way (ids, times)."""
    out: list[Any] = []
    for event in events:
        if isinstance(event, c.Start):
            out.append("start")
        elif isinstance(event, c.ToolCallStart):
            out.append(("call", event.index, event.name))
        elif isinstance(event, c.TextDelta) and out and isinstance(out[-1], c.TextDelta):
            out[-1] = c.TextDelta(out[-1].text + event.text)  # however the text was split
        else:
            out.append(event)
    return out


EXPECTED = ["start", c.TextDelta("Hello"), ("call", 0, "get_weather"),
            c.ToolCallDelta(0, ARGS), c.Finish("tool_calls"),
            c.UsageReport(Usage(input_tokens=9, output_tokens=4))]


@pytest.mark.parametrize("decode", [from_chat, from_responses, from_anthropic, from_ollama])
def test_every_upstream_protocol_decodes_the_same_answer_alike(decode):
    assert comparable(decode()) == EXPECTED


# --- encoding for the client (PROTOCOL.md §1.2, §3.2) -----------------------------------------

def frames(raw: bytes) -> list[bytes]:
    splitter = SseSplitter()
    return [f for f in splitter.feed(raw) + [splitter.rest()] if f]


def test_a_responses_client_gets_every_item_added_then_done_and_completed_last():
    encoder = responses.ResponsesEncoder("client-model")
    raw = b"".join(encoder.feed(e) for e in from_chat()) + encoder.close()
    events = [orjson.loads(event_data(f)) for f in frames(raw)]
    assert [event_name(f) for f in frames(raw)] == [e["type"] for e in events]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert done[0]["content"][0]["text"] == "Hello"
    assert (done[1]["call_id"], done[1]["name"], done[1]["arguments"]) == (
        "call_1", "get_weather", ARGS)
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["model"] == "client-model"
    assert [i["id"] for i in final["output"]] == [i["id"] for i in done]
    assert final["usage"]["input_tokens"] == 9 and final["usage"]["output_tokens"] == 4


def test_a_chat_client_gets_chunks_then_the_usage_chunk_then_done():
    encoder = chat.ChatEncoder("client-model", include_usage=True)
    raw = b"".join(encoder.feed(e) for e in from_responses()) + encoder.close()
    data = [event_data(f) for f in frames(raw)]
    assert data[-1] == b"[DONE]"
    chunks = [orjson.loads(d) for d in data[:-1]]
    assert len({(ch["id"], ch["created"], ch["model"]) for ch in chunks}) == 1
    deltas = [ch["choices"][0]["delta"] for ch in chunks[:-1]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("content") or "" for d in deltas) == "Hello"
    calls = [call for d in deltas for call in d.get("tool_calls", [])]
    assert calls[0]["id"] == "call_1" and calls[0]["function"]["name"] == "get_weather"
    assert "".join(call["function"]["arguments"] for call in calls) == ARGS
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 9


def test_a_chat_client_that_did_not_ask_for_usage_gets_none():
    encoder = chat.ChatEncoder("client-model", include_usage=False)
    raw = b"".join(encoder.feed(e) for e in from_anthropic()) + encoder.close()
    chunks = [orjson.loads(d) for d in map(event_data, frames(raw)) if d != b"[DONE]"]
    assert all("usage" not in ch or ch["usage"] is None for ch in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
