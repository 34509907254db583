"""Pure translation tests for the OpenAI protocols, Codex fixes, tool lowering and XML
tool-text cleaning: literal inputs in, exact outputs out."""

from __future__ import annotations

import orjson
import pytest

from gateway.translate import canonical as c
from gateway.translate import chat, codex, responses
from gateway.translate.xmltools import XmlToolUseFilter, strip_xml_tool_use
from gateway.wire.sse import event_data, event_name
from gateway.wire.usage import Usage

pytestmark = pytest.mark.fast


def sse_events(raw: bytes) -> list[tuple[str | None, dict]]:
    frames = [f for f in raw.split(b"\n\n") if f]
    out = []
    for frame in frames:
        data = event_data(frame)
        out.append((event_name(frame), orjson.loads(data) if data and data != b"[DONE]"
                    else {"done": True}))
    return out


def test_chat_request_parses_every_message_kind():
    req = chat.parse_request({
        "model": "m", "max_tokens": 10, "max_completion_tokens": 20, "stop": "END",
        "reasoning_effort": "low", "stream": True, "stream_options": {"include_usage": True},
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "x", "schema": {"type": "object"}}},
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "look"},
                                         {"type": "image_url",
                                          "image_url": {"url": "data:image/png;base64,AA",
                                                        "detail": "low"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        ]})
    assert req.max_output_tokens == 20 and req.stop == ["END"] and req.include_usage
    assert req.reasoning_effort == "low" and req.tool_choice == {"name": "f"}
    assert req.response_format == {"type": "json_schema", "name": "x",
                                   "schema": {"type": "object"}, "strict": None}
    system, user, call, result = req.items
    assert isinstance(system, c.Message) and system.role == "system" and system.text == "be brief"
    assert isinstance(user, c.Message) and user.parts[1] == c.Part(
        "image", url="data:image/png;base64,AA", detail="low")
    assert call == c.ToolCall(call_id="call_1", name="f", arguments='{"a":1}')
    assert result == c.ToolResult(call_id="call_1", output="42")


def test_responses_request_parses_codex_style_input():
    req = responses.parse_request({
        "model": "m", "instructions": "sys", "session_id": "s1",
        "reasoning": {"effort": "high", "summary": "auto"},
        "include": ["reasoning.encrypted_content"],
        "tools": [{"type": "function", "name": "exec", "parameters": {}},
                  {"type": "custom", "name": "apply_patch", "format": {"type": "grammar"}},
                  {"type": "web_search", "external_web_access": False}],
        "input": [
            {"type": "message", "role": "developer",
             "content": [{"type": "input_text", "text": "rules"}]},
            {"role": "user", "content": "hi"},
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text",
                                                             "text": "think"}],
             "content": None, "encrypted_content": "enc"},
            {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "exec",
             "arguments": "{}", "namespace": "ns"},
            {"type": "function_call_output", "call_id": "c1", "output": "done"},
            {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch",
             "input": "*** Begin Patch"},
            {"type": "compaction", "encrypted_content": "opaque-from-openai"},
        ]})
    assert req.instructions == ["sys"] and req.prompt_cache_key == "s1"
    assert [t.kind for t in req.tools] == ["function", "custom", "other"]
    kinds = [type(i).__name__ for i in req.items]
    assert kinds == ["Message", "Message", "Reasoning", "ToolCall", "ToolResult", "ToolCall",
                     "Opaque"]
    assert req.items[2] == c.Reasoning(summary=["think"], encrypted_content="enc",
                                       item_id="rs_1")
    assert req.items[3].namespace == "ns" and req.items[5].kind == "custom"


def test_turnpike_compaction_items_are_expanded_into_the_summary():
    item = {"type": "compaction", "encrypted_content": c.seal_compaction("we did X")}
    message = responses.parse_item(item)
    assert isinstance(message, c.Message) and message.role == "user"
    assert message.text.endswith("we did X")


def test_lowering_turns_custom_and_namespace_tools_into_functions_and_back():
    req = responses.parse_request({
        "model": "m", "input": [
            {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": "P"}],
        "tools": [{"type": "custom", "name": "apply_patch"},
                  {"type": "namespace", "name": "agents",
                   "tools": [{"type": "function", "name": "spawn", "parameters": {}}]},
                  {"type": "web_search"}]})
    tool_map = c.lower_tools(req)
    assert [(t.kind, t.name) for t in req.tools] == [("function", "apply_patch"),
                                                      ("function", "agents__spawn")]
    assert tool_map.dropped == ["web_search"]
    assert req.items[0].arguments == '{"input":"P"}' and req.items[0].kind == "function"
    restorer = c.ToolCallRestorer(tool_map)
    events = []
    for event in (c.ToolCallStart(0, "c9", "apply_patch"), c.ToolCallDelta(0, '{"inp'),
                  c.ToolCallDelta(0, 'ut":"*** Begin"}'),
                  c.ToolCallStart(1, "c10", "agents__spawn"),
                  c.ToolCallDelta(1, "{}"), c.Finish("tool_calls")):
        events += restorer.feed(event)
    assert events == [
        c.ToolCallStart(0, "c9", "apply_patch", kind="custom"),
        c.ToolCallDelta(0, "*** Begin"),
        c.ToolCallStart(1, "c10", "spawn", namespace="agents"),
        c.ToolCallDelta(1, "{}"),
        c.Finish("tool_calls"),
    ]


def test_chat_build_request_merges_calls_into_the_assistant_turn():
    req = c.CanonicalRequest(model="m", instructions=["sys"], items=[
        c.Message("user", [c.Part("text", "q")]),
        c.Message("assistant", [c.Part("text", "let me check")]),
        c.ToolCall("c1", "f", '{"a":1}'),
        c.ToolCall("c2", "g", ""),
        c.ToolResult("c1", "1"),
        c.Reasoning(summary=["x"]),
    ], stream=True, max_output_tokens=5)
    body = chat.build_request(req, "up")
    assert body["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "let me check", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "1"},
    ]
    assert body["stream_options"] == {"include_usage": True} and body["max_tokens"] == 5


def test_chat_stream_decoder_handles_reasoning_tool_fragments_and_usage():
    decoder = chat.StreamDecoder()
    events = []
    for chunk in (
        {"id": "x", "choices": [{"index": 0, "delta": {"reasoning_content": "hm"}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_a", "function": {"name": "f", "arguments": ""}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": "{}"}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}},
    ):
        events += decoder.feed(chunk)
    assert events == [c.Start(response_id="x"), c.ReasoningDelta("hm", kind="raw"),
                      c.ReasoningDone(), c.ToolCallStart(0, "call_a", "f"),
                      c.ToolCallDelta(0, "{}"), c.Finish("tool_calls"),
                      c.UsageReport(Usage(input_tokens=3, output_tokens=1))]


def test_responses_encoder_emits_a_strict_sequence():
    enc = responses.ResponsesEncoder("m", clean_xml_tools=True)
    raw = b"".join(enc.feed(e) for e in (
        c.Start(), c.ReasoningDelta("plan"), c.ReasoningDone(signature="sig"),
        c.TextDelta("Hi <tool_"), c.TextDelta("use>x</tool_use>there"),
        c.ToolCallStart(0, "call_1", "f"), c.ToolCallDelta(0, '{"a":'),
        c.ToolCallDelta(0, "1}"), c.Finish("tool_calls"),
        c.UsageReport(Usage(input_tokens=5, output_tokens=2, cached_tokens=1)))) + enc.close()
    events = sse_events(raw)
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    assert all(name == d["type"] for name, d in events)
    types = [d["type"] for _, d in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    done = [d["item"] for _, d in events if d["type"] == "response.output_item.done"]
    added = [d["item"]["id"] for _, d in events if d["type"] == "response.output_item.added"]
    assert [i["id"] for i in done] == added
    reasoning, message, call = done
    assert reasoning["summary"] == [{"type": "summary_text", "text": "plan"}]
    assert c.open_reasoning(reasoning["encrypted_content"]) == ("plan", "sig")
    assert message["content"][0]["text"] == "Hi there"
    assert call == {"id": call["id"], "type": "function_call", "status": "completed",
                    "call_id": "call_1", "name": "f", "arguments": '{"a":1}'}
    completed = events[-1][1]["response"]
    assert completed["usage"] == {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7,
                                  "input_tokens_details": {"cached_tokens": 1,
                                                           "cache_write_tokens": 0},
                                  "output_tokens_details": {"reasoning_tokens": 0}}
    assert [i["id"] for i in completed["output"]] == added


def test_responses_encoder_reports_length_as_incomplete_and_failures_as_failed():
    enc = responses.ResponsesEncoder("m")
    enc.feed(c.TextDelta("partial"))
    enc.feed(c.Finish("length"))
    assert enc.final()["incomplete_details"] == {"reason": "max_output_tokens"}
    enc = responses.ResponsesEncoder("m")
    enc.feed(c.TextDelta("partial"))
    enc.feed(c.Failure("upstream_stream_cut", "broke"))
    last = sse_events(enc.close())[-1][1]
    assert last["type"] == "response.failed"
    assert last["response"]["error"] == {"code": "upstream_stream_cut", "message": "broke"}


def test_chat_encoder_final_and_stream_agree():
    events = [c.Start(), c.TextDelta("a"), c.TextDelta("b"), c.Finish("stop"),
              c.UsageReport(Usage(input_tokens=1, output_tokens=2))]
    enc = chat.ChatEncoder("m", include_usage=True)
    stream = b"".join(enc.feed(e) for e in events) + enc.close()
    chunks = [d for _, d in sse_events(stream)]
    assert chunks[-1] == {"done": True}
    assert len({ch["id"] for ch in chunks[:-1]}) == 1
    assert chunks[-2]["choices"] == [] and chunks[-2]["usage"]["total_tokens"] == 3
    final = enc.final()
    assert final["choices"][0]["message"]["content"] == "ab"
    assert final["choices"][0]["finish_reason"] == "stop"


def test_codex_fixes_make_a_request_acceptable_to_codex_style_backends():
    fixed = codex.fix_request({
        "model": "m", "stream": False, "input": [
            {"role": "system", "content": "sys"},
            {"type": "message", "role": "assistant",
             "content": [{"type": "input_text", "text": "old"}]},
            {"type": "function_call", "call_id": "c", "name": "ls", "arguments": "{}"}],
        "session_id": "abc", "temperature": 0.2})
    assert fixed["stream"] is True and fixed["store"] is False
    assert fixed["instructions"] == codex.DEFAULT_INSTRUCTIONS
    assert fixed["input"][0]["role"] == "developer"
    assert fixed["input"][0]["content"] == [{"type": "input_text", "text": "sys"}]
    assert fixed["input"][1]["content"][0]["type"] == "output_text"
    assert fixed["include"] == ["reasoning.encrypted_content"]
    assert [t["name"] for t in fixed["tools"]] == ["ls"]
    assert fixed["prompt_cache_key"] == "abc" and "temperature" not in fixed


@pytest.mark.parametrize(("model", "expected"), [
    ("gpt-5-high", ("gpt-5", "high")), ("gpt-5-codex-low", ("gpt-5-codex", "low")),
    ("gpt-5.4-xhigh", ("gpt-5.4", "xhigh")), ("gpt-5", None), ("o3-mini", None),
])
def test_effort_suffixes(model, expected):
    assert codex.split_effort_suffix(model) == expected


def test_xml_tool_use_filter_works_across_deltas():
    f = XmlToolUseFilter()
    pieces = ["Answer: <to", "ol_use><name>x</name></tool", "_use> done", " <t"]
    out = "".join(f.feed(p) for p in pieces) + f.flush()
    assert out == "Answer:  done <t"
    assert strip_xml_tool_use("a<tool_use>unclosed") == "a"
