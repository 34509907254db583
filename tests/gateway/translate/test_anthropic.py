"""Anthropic Messages translation: canonical requests to /v1/messages bodies, and Anthropic
JSON/SSE answers to canonical events. Pure table-driven cases, plus one stream decoded
from the real fake upstream (in process, over loopback)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from gateway.translate import anthropic
from gateway.translate.canonical import (
    CanonicalRequest,
    Event,
    Failure,
    Finish,
    Message,
    Opaque,
    Part,
    Reasoning,
    ReasoningDelta,
    ReasoningDone,
    Start,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolResult,
    TranslationError,
    UsageReport,
    seal_reasoning,
)
from gateway.wire.sse import SseSplitter, event_json
from gateway.wire.usage import Usage
from tests.fakeupstream import build_app

pytestmark = pytest.mark.fast

MODEL = "claude-sonnet-4-5"
PDF = "JVBERi0xLjQK"
PNG = "iVBORw0KGgo="
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}


# --- helpers ------------------------------------------------------------------------------


def req(*items: Any, **fields: Any) -> CanonicalRequest:
    return CanonicalRequest(model="alias", items=list(items), **fields)


def msg(role: str, *parts: Part | str) -> Message:
    return Message(role, [Part("text", text=p) if isinstance(p, str) else p for p in parts])


def user(*parts: Part | str) -> Message:
    return msg("user", *parts)


def assistant(*parts: Part | str) -> Message:
    return msg("assistant", *parts)


def body(messages: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 8192, "stream": False, **fields, "messages": messages}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def turn(role: str, *blocks: dict[str, Any] | str) -> dict[str, Any]:
    return {"role": role, "content": [text(b) if isinstance(b, str) else b for b in blocks]}


def tool_use(call_id: str, name: str, tool_input: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": name, "input": tool_input}


def tool_result(call_id: str, output: str) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": call_id, "content": output}


def thinking(value: str, signature: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": value, "signature": signature}


WEATHER = Tool("function", name="get_weather", description="Weather", parameters=WEATHER_SCHEMA)
WEATHER_SPEC = {"name": "get_weather", "description": "Weather", "input_schema": WEATHER_SCHEMA}
HI = [turn("user", "Hi")]


# --- build_request ------------------------------------------------------------------------

BUILD_CASES = [
    pytest.param(req(user("Hi")), body(HI), id="minimal"),
    pytest.param(
        req(user("Hi"), stream=True, max_output_tokens=100),
        body(HI, stream=True, max_tokens=100),
        id="stream-and-max-tokens",
    ),
    pytest.param(
        req(
            msg("developer", "Use tools."),
            user("Hi"),
            msg("system", "Late rule."),
            instructions=["Be brief."],
        ),
        body(HI, system="Be brief.\n\nUse tools.\n\nLate rule."),
        id="system-developer-merged-in-order",
    ),
    pytest.param(
        req(user("Hi"), assistant("Hello!"), user("How are you?")),
        body([turn("user", "Hi"), turn("assistant", "Hello!"), turn("user", "How are you?")]),
        id="multi-turn",
    ),
    pytest.param(
        req(user("a"), user("b", ""), assistant("c"), assistant("d"), user("")),
        body([turn("user", "a", "b"), turn("assistant", "c", "d")]),
        id="same-role-merged-empty-dropped",
    ),
    pytest.param(
        req(user("Hi"), assistant(Part("refusal", text="I can't help with that."))),
        body([turn("user", "Hi"), turn("assistant", "I can't help with that.")]),
        id="refusal-becomes-text",
    ),
    pytest.param(
        req(user("Hi"), Opaque({"type": "compaction", "encrypted_content": "x"})),
        body(HI),
        id="opaque-dropped",
    ),
    pytest.param(
        req(
            user("Weather in Paris and Rome?"),
            assistant("Checking."),
            ToolCall("call_1", "get_weather", '{"city":"Paris"}'),
            ToolCall("call_2", "get_weather", '"Rome"'),
            ToolResult("call_1", "sunny"),
            ToolResult("call_2", "rainy"),
            user("Thanks"),
            assistant("Paris is sunny, Rome rainy."),
        ),
        body([
            turn("user", "Weather in Paris and Rome?"),
            turn(
                "assistant",
                "Checking.",
                tool_use("call_1", "get_weather", {"city": "Paris"}),
                tool_use("call_2", "get_weather", {"input": '"Rome"'}),
            ),
            turn("user", tool_result("call_1", "sunny"), tool_result("call_2", "rainy"), "Thanks"),
            turn("assistant", "Paris is sunny, Rome rainy."),
        ]),
        id="tool-call-and-result-round-trip",
    ),
    pytest.param(
        req(
            user("Patch it"),
            ToolCall("call_p", "apply_patch", "*** Begin Patch", kind="custom"),
            ToolCall("call_e", "list_files", ""),
            ToolResult("call_p", "done", kind="custom"),
            ToolResult("call_e", "a.py"),
        ),
        body([
            turn("user", "Patch it"),
            turn(
                "assistant",
                tool_use("call_p", "apply_patch", {"input": "*** Begin Patch"}),
                tool_use("call_e", "list_files", {}),
            ),
            turn("user", tool_result("call_p", "done"), tool_result("call_e", "a.py")),
        ]),
        id="custom-call-raw-input-and-empty-arguments",
    ),
    pytest.param(
        req(
            user("Go"),
            ToolCall("call_1", "f", "{}"),
            user("(meanwhile)"),
            ToolResult("call_1", "ok"),
        ),
        body([
            turn("user", "Go"),
            turn("assistant", tool_use("call_1", "f", {})),
            turn("user", tool_result("call_1", "ok"), "(meanwhile)"),
        ]),
        id="tool-result-leads-its-user-message",
    ),
    pytest.param(
        req(
            user(
                "What is this?",
                Part("image", url=f"data:image/png;base64,{PNG}"),
                Part("image", url="https://example.com/cat.jpg", detail="high"),
            )
        ),
        body([
            turn(
                "user",
                "What is this?",
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                },
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            )
        ]),
        id="images-data-url-and-http-url",
    ),
    pytest.param(
        req(
            user(
                Part("file", file_data=f"data:application/pdf;base64,{PDF}", filename="a.pdf"),
                Part("file", file_data=f"data:application/pdf;base64,{PDF}"),
                Part("file", file_data=f"data:image/png;base64,{PNG}", filename="p.png"),
                "Summarise",
            )
        ),
        body([
            turn(
                "user",
                {
                    "type": "document",
                    "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
                    "title": "a.pdf",
                },
                {
                    "type": "document",
                    "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
                },
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                },
                "Summarise",
            )
        ]),
        id="pdf-and-image-files",
    ),
    pytest.param(
        req(
            user("Weather?"),
            tools=[
                WEATHER,
                Tool("function", name="ping"),
                Tool("custom", name="apply_patch", format={"type": "grammar"}),
                Tool("other", raw={"type": "web_search"}),
            ],
        ),
        body(
            [turn("user", "Weather?")],
            tools=[
                WEATHER_SPEC,
                {"name": "ping", "input_schema": {"type": "object", "properties": {}}},
            ],
        ),
        id="tool-definitions-functions-only",
    ),
    pytest.param(
        req(user("Hi"), tool_choice="required", parallel_tool_calls=False),
        body(HI),
        id="tool-choice-omitted-without-tools",
    ),
    pytest.param(
        req(
            user("Hi"),
            temperature=0.2,
            stop=["END", " ", ""],
            user="u-42",
            presence_penalty=0.5,
            frequency_penalty=0.5,
            seed=7,
            metadata={"k": "v"},
        ),
        body(HI, temperature=0.2, stop_sequences=["END"], metadata={"user_id": "u-42"}),
        id="sampling-stop-user-penalties-dropped",
    ),
    pytest.param(req(user("Hi"), top_p=0.9), body(HI, top_p=0.9), id="top-p-alone"),
    pytest.param(
        req(user("Hi"), temperature=1.7), body(HI, temperature=1.0), id="temperature-clamped"
    ),
    pytest.param(
        req(user("Hi"), temperature=0.5, top_p=0.9),
        body(HI, temperature=0.5),
        id="top-p-dropped-with-temperature",
    ),
    pytest.param(
        req(user("Hi"), reasoning_effort="none", temperature=0.5),
        body(HI, temperature=0.5),
        id="reasoning-none-no-thinking",
    ),
    pytest.param(
        req(
            user("Hi"),
            response_format={"type": "json_schema", "name": "city", "schema": WEATHER_SCHEMA},
            instructions=["Be brief."],
        ),
        body(
            HI,
            system="Be brief.\n\nRespond with a single JSON value that conforms to the following "
            "JSON schema and nothing else: no prose, no code fences.\nJSON schema (city): "
            + orjson.dumps(WEATHER_SCHEMA).decode(),
        ),
        id="json-schema-instruction",
    ),
    pytest.param(
        req(user("Hi"), response_format={"type": "json_object"}),
        body(
            HI,
            system="Respond with a single valid JSON object and nothing else: no prose, "
            "no code fences.",
        ),
        id="json-object-instruction",
    ),
    pytest.param(
        req(user("Hi"), response_format={"type": "text"}), body(HI), id="text-format-nothing"
    ),
    pytest.param(
        req(
            user("Weather?"),
            Reasoning(summary=["I should look"], encrypted_content=seal_reasoning("Look", "sig1")),
            ToolCall("call_1", "get_weather", '{"city":"Paris"}'),
            ToolResult("call_1", "sunny"),
            Reasoning(encrypted_content="gAAAAopenai-only"),
            Reasoning(encrypted_content=seal_reasoning("unsigned", None)),
            assistant("Sunny."),
        ),
        body([
            turn("user", "Weather?"),
            turn(
                "assistant",
                thinking("Look", "sig1"),
                tool_use("call_1", "get_weather", {"city": "Paris"}),
            ),
            turn("user", tool_result("call_1", "sunny")),
            turn("assistant", "Sunny."),
        ]),
        id="thinking-replayed-from-sealed-reasoning",
    ),
    pytest.param(
        req(
            user("Weather?"),
            assistant("Let me check."),
            Reasoning(encrypted_content=seal_reasoning("Now call it", "sig2")),
            ToolCall("call_1", "get_weather", '{"city":"Paris"}'),
        ),
        body([
            turn("user", "Weather?"),
            turn(
                "assistant",
                thinking("Now call it", "sig2"),
                "Let me check.",
                tool_use("call_1", "get_weather", {"city": "Paris"}),
            ),
        ]),
        id="thinking-leads-a-merged-assistant-message",
    ),
    pytest.param(
        req(
            user("Q"),
            Reasoning(text="raw thoughts", signature="sig3"),
            assistant("A"),
            Reasoning(summary=["trailing"], encrypted_content=seal_reasoning("x", "sig4")),
        ),
        body([turn("user", "Q"), turn("assistant", thinking("raw thoughts", "sig3"), "A")]),
        id="thinking-from-signature-field-trailing-dropped",
    ),
    pytest.param(
        req(
            user("Q"),
            Reasoning(encrypted_content=seal_reasoning("stale", "sig5")),
            user("Q again"),
            assistant("A"),
        ),
        body([turn("user", "Q", "Q again"), turn("assistant", "A")]),
        id="thinking-never-crosses-a-user-turn",
    ),
]


@pytest.mark.parametrize(("request_", "expected"), BUILD_CASES)
def test_build_request(request_: CanonicalRequest, expected: dict[str, Any]) -> None:
    assert anthropic.build_request(request_, MODEL) == expected


TOOL_CHOICE_CASES = [
    pytest.param(None, None, None, id="none-given"),
    pytest.param("auto", None, {"type": "auto"}, id="auto"),
    pytest.param("required", None, {"type": "any"}, id="required"),
    pytest.param("none", None, {"type": "none"}, id="none"),
    pytest.param(
        {"name": "get_weather"}, None, {"type": "tool", "name": "get_weather"}, id="named"
    ),
    pytest.param(None, True, None, id="parallel-on-default"),
    pytest.param(
        None, False, {"type": "auto", "disable_parallel_tool_use": True}, id="parallel-off"
    ),
    pytest.param(
        "required", False, {"type": "any", "disable_parallel_tool_use": True},
        id="required-parallel-off",
    ),
    pytest.param(
        {"name": "get_weather"},
        False,
        {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        id="named-parallel-off",
    ),
    pytest.param("none", False, {"type": "none"}, id="none-parallel-off"),
]


@pytest.mark.parametrize(("choice", "parallel", "expected"), TOOL_CHOICE_CASES)
def test_tool_choice(choice: Any, parallel: bool | None, expected: dict[str, Any] | None) -> None:
    built = anthropic.build_request(
        req(user("Hi"), tools=[WEATHER], tool_choice=choice, parallel_tool_calls=parallel), MODEL
    )
    assert built["tools"] == [WEATHER_SPEC]
    assert built.get("tool_choice") == expected


@pytest.mark.parametrize(
    ("effort", "max_output_tokens", "budget", "max_tokens"),
    [
        ("minimal", None, 1024, 8192),
        ("low", None, 2048, 8192),
        ("medium", None, 8192, 8192 + 4096),
        ("high", None, 16384, 16384 + 4096),
        ("xhigh", None, 32000, 32000 + 4096),
        ("high", 50000, 16384, 50000),
        ("low", 1000, 2048, 2048 + 4096),
    ],
)
def test_reasoning_effort_budget(
    effort: str, max_output_tokens: int | None, budget: int, max_tokens: int
) -> None:
    built = anthropic.build_request(
        req(user("Hi"), reasoning_effort=effort, max_output_tokens=max_output_tokens,
            temperature=0.3, top_p=0.9),
        MODEL,
    )
    assert built == body(
        HI, max_tokens=max_tokens, thinking={"type": "enabled", "budget_tokens": budget}
    )


def test_forced_tool_choice_turns_thinking_off() -> None:
    # Anthropic rejects tool_choice any/tool together with thinking.
    built = anthropic.build_request(
        req(user("Hi"), tools=[WEATHER], tool_choice="required", reasoning_effort="high"), MODEL
    )
    assert "thinking" not in built
    assert built["tool_choice"] == {"type": "any"}
    auto = anthropic.build_request(
        req(user("Hi"), tools=[WEATHER], tool_choice="auto", reasoning_effort="high"), MODEL
    )
    assert auto["thinking"] == {"type": "enabled", "budget_tokens": 16384}


@pytest.mark.parametrize(
    ("part", "message"),
    [
        pytest.param(Part("file", file_id="file-abc"), "file_id", id="file-id"),
        pytest.param(
            Part("file", file_data="data:text/plain;base64,aGk=", filename="a.txt"),
            "only PDF and image files",
            id="text-file",
        ),
        pytest.param(Part("image", url="file:///etc/passwd"), "images must be", id="bad-image"),
        pytest.param(
            Part("image", url="data:text/html;base64,PGI+"), "images must be", id="not-an-image"
        ),
    ],
)
def test_untranslatable_parts(part: Part, message: str) -> None:
    with pytest.raises(TranslationError, match=message) as info:
        anthropic.build_request(req(user("Look", part)), MODEL)
    assert info.value.param == "input"


# --- decode_response ----------------------------------------------------------------------


def message_body(content: list[dict[str, Any]], stop_reason: str, **usage: int) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5, **usage},
    }


START = Start(response_id="msg_1", model=MODEL)
USAGE = UsageReport(Usage(input_tokens=10, output_tokens=5))

DECODE_CASES = [
    pytest.param(
        message_body([text("Hello "), text("world")], "end_turn"),
        [START, TextDelta("Hello "), TextDelta("world"), Finish("stop"), USAGE],
        id="text",
    ),
    pytest.param(
        message_body(
            [
                thinking("Let me think", "sig_1"),
                {"type": "redacted_thinking", "data": "opaque"},
                text("Calling."),
                tool_use("toolu_1", "get_weather", {"city": "Paris"}),
                tool_use("toolu_2", "list_files", {}),
            ],
            "tool_use",
        ),
        [
            START,
            ReasoningDelta("Let me think"),
            ReasoningDone(signature="sig_1"),
            TextDelta("Calling."),
            ToolCallStart(0, "toolu_1", "get_weather"),
            ToolCallDelta(0, '{"city":"Paris"}'),
            ToolCallStart(1, "toolu_2", "list_files"),
            ToolCallDelta(1, "{}"),
            Finish("tool_calls"),
            USAGE,
        ],
        id="thinking-and-tool-use",
    ),
    pytest.param(
        message_body([text("cut")], "max_tokens"),
        [START, TextDelta("cut"), Finish("length"), USAGE],
        id="max-tokens-length",
    ),
    pytest.param(
        message_body([text("stop")], "stop_sequence"),
        [START, TextDelta("stop"), Finish("stop"), USAGE],
        id="stop-sequence",
    ),
    pytest.param(
        message_body([], "refusal"), [START, Finish("content_filter"), USAGE], id="refusal"
    ),
    pytest.param(
        message_body(
            [text("hi")], "end_turn", cache_read_input_tokens=100, cache_creation_input_tokens=20
        ),
        [
            START,
            TextDelta("hi"),
            Finish("stop"),
            UsageReport(Usage(input_tokens=130, cached_tokens=100, output_tokens=5)),
        ],
        id="usage-with-cache",
    ),
    pytest.param(
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        [Failure("overloaded_error", "Overloaded")],
        id="error-body",
    ),
]


@pytest.mark.parametrize(("response", "expected"), DECODE_CASES)
def test_decode_response(response: dict[str, Any], expected: list[Event]) -> None:
    assert anthropic.decode_response(response) == expected


def test_decode_response_without_usage() -> None:
    response = message_body([text("hi")], "end_turn")
    del response["usage"]
    assert anthropic.decode_response(response) == [START, TextDelta("hi"), Finish("stop")]


# --- StreamDecoder ------------------------------------------------------------------------


def ev(kind: str, **fields: Any) -> tuple[str, dict[str, Any]]:
    return kind, {"type": kind, **fields}


def message_start(**usage: int) -> tuple[str, dict[str, Any]]:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": 10, "output_tokens": 1, **usage},
    }
    return ev("message_start", message=message)


def block_start(index: int, block: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return ev("content_block_start", index=index, content_block=block)


def delta(index: int, kind: str, **fields: Any) -> tuple[str, dict[str, Any]]:
    return ev("content_block_delta", index=index, delta={"type": kind, **fields})


def block_stop(index: int) -> tuple[str, dict[str, Any]]:
    return ev("content_block_stop", index=index)


def message_end(stop_reason: str, output_tokens: int = 5) -> list[tuple[str, dict[str, Any]]]:
    return [
        ev("message_delta", delta={"stop_reason": stop_reason, "stop_sequence": None},
           usage={"output_tokens": output_tokens}),
        ev("message_stop"),
    ]


TEXT_BLOCK = {"type": "text", "text": ""}

STREAM_CASES = [
    pytest.param(
        [
            message_start(),
            ev("ping"),
            block_start(0, TEXT_BLOCK),
            delta(0, "text_delta", text="Hel"),
            delta(0, "text_delta", text="lo"),
            block_stop(0),
            *message_end("end_turn"),
        ],
        [START, TextDelta("Hel"), TextDelta("lo"), Finish("stop"), USAGE],
        id="text",
    ),
    pytest.param(
        [
            message_start(),
            block_start(0, TEXT_BLOCK),
            delta(0, "text_delta", text="Checking."),
            block_stop(0),
            block_start(1, tool_use("toolu_1", "get_weather", {})),
            delta(1, "input_json_delta", partial_json=""),
            delta(1, "input_json_delta", partial_json='{"ci'),
            delta(1, "input_json_delta", partial_json='ty": "Pa'),
            delta(1, "input_json_delta", partial_json='ris"}'),
            block_stop(1),
            block_start(2, tool_use("toolu_2", "get_weather", {})),
            delta(2, "input_json_delta", partial_json='{"city": "Rome"}'),
            block_stop(2),
            *message_end("tool_use"),
        ],
        [
            START,
            TextDelta("Checking."),
            ToolCallStart(0, "toolu_1", "get_weather"),
            ToolCallDelta(0, '{"ci'),
            ToolCallDelta(0, 'ty": "Pa'),
            ToolCallDelta(0, 'ris"}'),
            ToolCallStart(1, "toolu_2", "get_weather"),
            ToolCallDelta(1, '{"city": "Rome"}'),
            Finish("tool_calls"),
            USAGE,
        ],
        id="tool-use-partial-json-indexes-count-tools-only",
    ),
    pytest.param(
        [
            message_start(),
            block_start(0, tool_use("toolu_1", "list_files", {})),
            block_stop(0),
            *message_end("tool_use"),
        ],
        [
            START,
            ToolCallStart(0, "toolu_1", "list_files"),
            ToolCallDelta(0, "{}"),
            Finish("tool_calls"),
            USAGE,
        ],
        id="empty-tool-input-gives-braces",
    ),
    pytest.param(
        [
            message_start(),
            block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
            delta(0, "thinking_delta", thinking="Let me "),
            delta(0, "thinking_delta", thinking="think"),
            delta(0, "signature_delta", signature="sig_1"),
            block_stop(0),
            block_start(1, {"type": "redacted_thinking", "data": "opaque"}),
            block_stop(1),
            block_start(2, TEXT_BLOCK),
            delta(2, "text_delta", text="Done"),
            block_stop(2),
            *message_end("end_turn"),
        ],
        [
            START,
            ReasoningDelta("Let me "),
            ReasoningDelta("think"),
            ReasoningDone(signature="sig_1"),
            TextDelta("Done"),
            Finish("stop"),
            USAGE,
        ],
        id="thinking-with-signature",
    ),
    pytest.param(
        [
            message_start(),
            block_start(0, TEXT_BLOCK),
            delta(0, "text_delta", text="trunc"),
            block_stop(0),
            *message_end("max_tokens"),
        ],
        [START, TextDelta("trunc"), Finish("length"), USAGE],
        id="max-tokens-length",
    ),
    pytest.param(
        [
            message_start(cache_read_input_tokens=100, cache_creation_input_tokens=20),
            block_start(0, TEXT_BLOCK),
            delta(0, "text_delta", text="hi"),
            block_stop(0),
            *message_end("end_turn", output_tokens=7),
        ],
        [
            START,
            TextDelta("hi"),
            Finish("stop"),
            UsageReport(Usage(input_tokens=130, cached_tokens=100, output_tokens=7)),
        ],
        id="usage-with-cache-reads",
    ),
    pytest.param(
        [
            message_start(),
            block_start(0, TEXT_BLOCK),
            delta(0, "text_delta", text="par"),
            ev("error", error={"type": "overloaded_error", "message": "Overloaded"}),
        ],
        [START, TextDelta("par"), Failure("overloaded_error", "Overloaded")],
        id="error-event-failure",
    ),
]


@pytest.mark.parametrize(("stream", "expected"), STREAM_CASES)
def test_stream_decoder(stream: list[tuple[str, dict[str, Any]]], expected: list[Event]) -> None:
    decoder = anthropic.StreamDecoder()
    events = [event for name, data in stream for event in decoder.feed(name, data)]
    assert events == expected
    assert decoder.finished


def test_stream_decoder_uses_data_type_without_event_name() -> None:
    decoder = anthropic.StreamDecoder()
    events = []
    for _name, data in [message_start(), block_start(0, TEXT_BLOCK),
                        delta(0, "text_delta", text="x"), block_stop(0), *message_end("end_turn")]:
        events += decoder.feed(None, data)
    assert events == [START, TextDelta("x"), Finish("stop"), USAGE]


def test_stream_decoder_not_finished_when_cut() -> None:
    decoder = anthropic.StreamDecoder()
    for name, data in [message_start(), block_start(0, TEXT_BLOCK)]:
        decoder.feed(name, data)
    assert not decoder.finished


# --- against the fake upstream ------------------------------------------------------------


def parse_sse(raw: bytes) -> list[tuple[str | None, dict[str, Any]]]:
    splitter = SseSplitter()
    out = []
    for frame in splitter.feed(raw) + [splitter.rest()]:
        if not frame:
            continue
        name = None
        for line in frame.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip().decode()
        out.append((name, event_json(frame)))
    return out


async def post_messages(payload: dict[str, Any]) -> tuple[str, bytes]:
    server = TestServer(build_app())
    await server.start_server()
    try:
        async with ClientSession() as session:
            url = server.make_url("/v1/messages")
            async with session.post(url, data=orjson.dumps(payload)) as response:
                assert response.status == 200, await response.text()
                return response.content_type, await response.read()
    finally:
        await server.close()


def fake_request(stream: bool) -> CanonicalRequest:
    return req(
        user("What is the weather in Paris? [[fake tool=get_weather]] [[fake reasoning=1]]"),
        instructions=["Be brief. [[fake cached=2]]"],
        tools=[WEATHER],
        stream=stream,
    )


def check_fake_events(events: list[Event]) -> None:
    # 10 user words + 4 instruction words ([[fake ...]] tokens count as words); cached=2 comes
    # back as cache reads, which the decoder adds back into input tokens.
    usage = UsageReport(Usage(input_tokens=14, cached_tokens=2, output_tokens=3))
    start = events[0]
    assert isinstance(start, Start) and start.model == MODEL
    assert start.response_id and start.response_id.startswith("msg_")
    calls = [e for e in events if isinstance(e, ToolCallStart)]
    assert len(calls) == 1
    call = calls[0]
    assert call.call_id.startswith("toolu_")
    assert call.name == "get_weather" and call.index == 0
    arguments = "".join(e.arguments for e in events if isinstance(e, ToolCallDelta))
    assert orjson.loads(arguments) == {"city": "Paris"}
    assert [e for e in events if not isinstance(e, ToolCallDelta)][-2:] == [
        Finish("tool_calls"),
        usage,
    ]


@pytest.mark.e2e  # serves the fake upstream on loopback
async def test_fake_upstream_stream_decodes() -> None:
    payload = anthropic.build_request(fake_request(stream=True), MODEL)
    content_type, raw = await post_messages(payload)
    assert content_type == "text/event-stream"
    decoder = anthropic.StreamDecoder()
    events = [event for name, data in parse_sse(raw) for event in decoder.feed(name, data)]
    assert decoder.finished
    assert events[1:5] == [
        ReasoningDelta("thinking "),
        ReasoningDelta("about "),
        ReasoningDelta("it"),
        ReasoningDone(signature="sig_fake"),
    ]
    # The argument string arrives in three pieces (chunks=3), all for call 0.
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert len(deltas) == 3 and {d.index for d in deltas} == {0}
    assert events[6:9] == deltas
    check_fake_events(events)


@pytest.mark.e2e  # serves the fake upstream on loopback
async def test_fake_upstream_json_decodes_and_thinking_round_trips() -> None:
    payload = anthropic.build_request(fake_request(stream=False), MODEL)
    content_type, raw = await post_messages(payload)
    assert content_type == "application/json"
    events = anthropic.decode_response(orjson.loads(raw))
    assert events[1:3] == [ReasoningDelta("thinking about it"), ReasoningDone(signature="sig_fake")]
    check_fake_events(events)

    # Next turn: the signed thinking rides in sealed encrypted_content and is replayed
    # ahead of the tool_use it preceded.
    call = events[3]
    assert isinstance(call, ToolCallStart)
    follow_up = fake_request(stream=False)
    follow_up.items += [
        Reasoning(encrypted_content=seal_reasoning("thinking about it", "sig_fake")),
        ToolCall(call.call_id, call.name, '{"city":"Paris"}'),
        ToolResult(call.call_id, "sunny [[fake tool=]]"),
    ]
    second = anthropic.build_request(follow_up, MODEL)
    assert second["messages"][1:] == [
        turn(
            "assistant",
            thinking("thinking about it", "sig_fake"),
            tool_use(call.call_id, "get_weather", {"city": "Paris"}),
        ),
        turn("user", tool_result(call.call_id, "sunny [[fake tool=]]")),
    ]
    _content_type, raw = await post_messages(second)
    answer = anthropic.decode_response(orjson.loads(raw))
    assert [e for e in answer if isinstance(e, TextDelta)] == [
        TextDelta("tok0 tok1 tok2 ")
    ]
    assert Finish("stop") in answer
