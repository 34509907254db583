"""Ollama ``/api/chat`` translation: canonical requests in, Ollama bodies out; Ollama JSON
and NDJSON lines in, canonical events out. Pure tables, plus one pass over the real fake
upstream's answers (run as a subprocess) to keep the decoder honest about the wire."""

from __future__ import annotations

import dataclasses
import os
import re
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

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
from gateway.translate.ollama import StreamDecoder, build_request, decode_response
from gateway.wire.usage import Usage

pytestmark = pytest.mark.fast

MODEL = "llama3.2"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def text(value: str) -> Part:
    return Part("text", text=value)


def user(*parts: str | Part) -> Message:
    return Message("user", [text(p) if isinstance(p, str) else p for p in parts])


def assistant(value: str) -> Message:
    return Message("assistant", [text(value)])


def request(*items: Any, **fields: Any) -> CanonicalRequest:
    return CanonicalRequest(model="alias", items=list(items), **fields)


def body(*messages: dict[str, Any], stream: bool = False, **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": list(messages), "stream": stream, **fields}


def sys_msg(content: str) -> dict[str, Any]:
    return {"role": "system", "content": content}


def user_msg(content: str, **fields: Any) -> dict[str, Any]:
    return {"role": "user", "content": content, **fields}


def assistant_msg(content: str, **fields: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content, **fields}


def call(name: str, arguments: dict[str, Any], call_id: str) -> dict[str, Any]:
    return {"function": {"name": name, "arguments": arguments}, "id": call_id}


# --- build_request ------------------------------------------------------------------------

BUILD_CASES = [
    pytest.param(request(user("hi")), body(user_msg("hi")), id="minimal-stream-false-explicit"),
    pytest.param(
        request(user("hi"), stream=True), body(user_msg("hi"), stream=True), id="stream-true"
    ),
    pytest.param(
        request(
            Message("system", [text("sys item")]),
            Message("developer", [text("dev item")]),
            user("hi"),
            instructions=["Be brief.", "", "Answer in French."],
        ),
        body(
            sys_msg("Be brief.\n\nAnswer in French."),
            sys_msg("sys item"),
            sys_msg("dev item"),
            user_msg("hi"),
        ),
        id="instructions-then-system-then-developer",
    ),
    pytest.param(
        request(
            user("context", "question"),
            Message("assistant", [text("answer"), Part("refusal", text="no more")]),
            user("again"),
        ),
        body(
            user_msg("context\nquestion"),
            assistant_msg("answer\nno more"),
            user_msg("again"),
        ),
        id="multi-turn-parts-joined",
    ),
    pytest.param(
        request(user("what is this?", Part("image", url=f"data:image/png;base64,{PNG}"))),
        body(user_msg("what is this?", images=[PNG])),
        id="image-data-url",
    ),
    pytest.param(
        request(
            user("weather?"),
            tools=[
                Tool("function", name="get_weather", description="Weather.", parameters=WEATHER),
                Tool("function", name="now"),
                Tool("custom", name="apply_patch", format={"type": "grammar"}),
                Tool("other", raw={"type": "web_search"}),
            ],
        ),
        body(
            user_msg("weather?"),
            tools=[
                {
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "description": "Weather.",
                        "parameters": WEATHER,
                    },
                },
                {
                    "type": "function",
                    "function": {"name": "now", "parameters": {"type": "object", "properties": {}}},
                },
            ],
        ),
        id="tool-definitions-functions-only",
    ),
    pytest.param(
        request(
            user("weather in Paris and Rome?"),
            Reasoning(text="two cities", summary=["ignored"]),
            assistant("Looking."),
            ToolCall("c1", "get_weather", '{"city":"Paris"}'),
            ToolCall("c2", "get_weather", ""),
            ToolResult("c1", "sunny", name="get_weather"),
            ToolResult("c2", "rain"),  # name recovered from the call
            ToolCall("c3", "odd", "[1, 2]"),
            ToolCall("c4", "apply_patch", '{"looks": "like json"}', kind="custom"),
            ToolResult("c3", "ok"),
            ToolResult("c4", "done", kind="custom"),
            ToolResult("unknown", "orphan"),
            assistant("Paris sunny, Rome rain."),
        ),
        body(
            user_msg("weather in Paris and Rome?"),
            assistant_msg(
                "Looking.",
                thinking="two cities",
                tool_calls=[
                    call("get_weather", {"city": "Paris"}, "c1"),
                    call("get_weather", {}, "c2"),
                ],
            ),
            {"role": "tool", "content": "sunny", "tool_name": "get_weather", "tool_call_id": "c1"},
            {"role": "tool", "content": "rain", "tool_name": "get_weather", "tool_call_id": "c2"},
            assistant_msg(
                "",
                tool_calls=[
                    call("odd", {"input": "[1, 2]"}, "c3"),
                    call("apply_patch", {"input": '{"looks": "like json"}'}, "c4"),
                ],
            ),
            {"role": "tool", "content": "ok", "tool_name": "odd", "tool_call_id": "c3"},
            {"role": "tool", "content": "done", "tool_name": "apply_patch", "tool_call_id": "c4"},
            {"role": "tool", "content": "orphan", "tool_call_id": "unknown"},
            assistant_msg("Paris sunny, Rome rain."),
        ),
        id="tool-call-and-result-round-trip",
    ),
    pytest.param(
        request(
            user("q"),
            Reasoning(encrypted_content=seal_reasoning("sealed thoughts", None)),
            ToolCall("c1", "f", "{}"),
            Reasoning(summary=["only a summary"], encrypted_content="openai-opaque"),
            Opaque({"type": "compaction", "encrypted_content": "x"}),
            Reasoning(text="dangling"),
            user("next"),
        ),
        body(
            user_msg("q"),
            assistant_msg("", thinking="sealed thoughts", tool_calls=[call("f", {}, "c1")]),
            user_msg("next"),
        ),
        id="reasoning-and-opaque-items",
    ),
    pytest.param(
        request(user("hi"), tools=[Tool("function", name="f")], tool_choice="none"),
        body(user_msg("hi")),
        id="tool-choice-none-sends-no-tools",
    ),
    pytest.param(
        request(user("hi"), tools=[Tool("function", name="f")], tool_choice={"name": "f"}),
        body(
            user_msg("hi"),
            tools=[
                {
                    "type": "function",
                    "function": {"name": "f", "parameters": {"type": "object", "properties": {}}},
                }
            ],
        ),
        id="tool-choice-named-ignored",
    ),
    pytest.param(
        request(
            user("hi"),
            temperature=0.2,
            top_p=0.9,
            stop=["END"],
            seed=7,
            presence_penalty=0.5,
            frequency_penalty=0.0,
            max_output_tokens=128,
            parallel_tool_calls=False,
            user="someone",
            verbosity="low",
        ),
        body(
            user_msg("hi"),
            options={
                "temperature": 0.2,
                "top_p": 0.9,
                "stop": ["END"],
                "seed": 7,
                "presence_penalty": 0.5,
                "frequency_penalty": 0.0,
                "num_predict": 128,
            },
        ),
        id="options",
    ),
    pytest.param(
        request(user("hi"), stop=[], temperature=0.0),
        body(user_msg("hi"), options={"temperature": 0.0}),
        id="options-empty-stop-dropped-zero-kept",
    ),
    pytest.param(
        request(
            user("hi"),
            response_format={"type": "json_schema", "name": "w", "schema": WEATHER, "strict": True},
        ),
        body(user_msg("hi"), format=WEATHER),
        id="format-json-schema",
    ),
    pytest.param(
        request(user("hi"), response_format={"type": "json_object"}),
        body(user_msg("hi"), format="json"),
        id="format-json-object",
    ),
    pytest.param(
        request(user("hi"), response_format={"type": "text"}),
        body(user_msg("hi")),
        id="format-text-omitted",
    ),
]


@pytest.mark.parametrize(("canonical", "expected"), BUILD_CASES)
def test_build_request(canonical: CanonicalRequest, expected: dict[str, Any]) -> None:
    assert build_request(canonical, MODEL) == expected


@pytest.mark.parametrize(
    ("effort", "think"),
    [
        ("minimal", "low"),
        ("low", "low"),
        ("medium", "medium"),
        ("high", "high"),
        ("xhigh", "high"),
        ("none", False),
        (None, None),
        ("bogus", None),
    ],
)
def test_reasoning_effort_maps_to_think(effort: str | None, think: str | bool | None) -> None:
    built = build_request(request(user("hi"), reasoning_effort=effort), MODEL)
    assert built.get("think", None) == think
    assert ("think" in built) is (think is not None)


ERROR_CASES = [
    pytest.param(
        Part("image", url="https://example.com/cat.png"), "inline images", id="http-image"
    ),
    pytest.param(Part("image", url="http://example.com/cat.png"), "inline images", id="http"),
    pytest.param(Part("image", url="data:image/svg+xml,<svg/>"), "base64", id="data-not-b64"),
    pytest.param(
        Part("file", file_data="data:application/pdf;base64,JVBERi0=", filename="a.pdf"),
        "file inputs (a.pdf)",
        id="pdf",
    ),
    pytest.param(Part("file", file_id="file-123"), "file inputs", id="file-id"),
]


@pytest.mark.parametrize(("part", "message"), ERROR_CASES)
def test_untranslatable_parts_raise(part: Part, message: str) -> None:
    with pytest.raises(TranslationError, match=re.escape(message)) as raised:
        build_request(request(user("look", part)), MODEL)
    assert raised.value.param == "input"


# --- decoding -----------------------------------------------------------------------------

GENERATED_ID = re.compile(r"call_[0-9a-f]{24}")


def normalize(events: list[Event]) -> list[Event]:
    """Replace generated call ids by ``#0``, ``#1`` … after checking they look right and
    are unique within the answer; ids the upstream sent stay as they are."""
    ids = [e.call_id for e in events if isinstance(e, ToolCallStart)]
    assert len(ids) == len(set(ids)), ids
    names: dict[str, str] = {}
    out: list[Event] = []
    for event in events:
        if isinstance(event, ToolCallStart) and GENERATED_ID.fullmatch(event.call_id):
            names[event.call_id] = f"#{len(names)}"
            event = dataclasses.replace(event, call_id=names[event.call_id])
        out.append(event)
    return out


def line(message: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    obj = {"model": MODEL, "created_at": "2024-07-22T20:33:28.123648Z", "done": False}
    if message is not None:
        obj["message"] = {"role": "assistant", "content": "", **message}
    return {**obj, **fields}


def final(reason: str = "stop", prompt: int | None = 5, output: int | None = 3) -> dict[str, Any]:
    counts = {"prompt_eval_count": prompt, "eval_count": output}
    return line(
        {},
        done=True,
        done_reason=reason,
        total_duration=1,
        **{k: v for k, v in counts.items() if v is not None},
    )


CREATED = 1721680408
START = Start(model=MODEL, created=CREATED)


def usage(prompt: int = 5, output: int = 3) -> UsageReport:
    return UsageReport(Usage(input_tokens=prompt, output_tokens=output))


WEATHER_CALL = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}

DECODE_CASES = [
    pytest.param(
        {**final(), "message": {"role": "assistant", "content": "Hello there."}},
        [START, TextDelta("Hello there."), Finish("stop"), usage()],
        id="text",
    ),
    pytest.param(
        {**final(), "message": {"role": "assistant", "content": "4", "thinking": "2+2"}},
        [
            START,
            ReasoningDelta("2+2", kind="raw"),
            ReasoningDone(),
            TextDelta("4"),
            Finish("stop"),
            usage(),
        ],
        id="thinking",
    ),
    pytest.param(
        {
            **final(),
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    WEATHER_CALL,
                    {"function": {"name": "get_time", "arguments": {"tz": "Europe/Zürich"}}},
                    {"function": {"name": "now", "arguments": {}}},
                ],
            },
        },
        [
            START,
            ToolCallStart(0, "#0", "get_weather"),
            ToolCallDelta(0, '{"city":"Paris"}'),
            ToolCallStart(1, "#1", "get_time"),
            ToolCallDelta(1, '{"tz":"Europe/Zürich"}'),
            ToolCallStart(2, "#2", "now"),
            ToolCallDelta(2, "{}"),
            Finish("tool_calls"),
            usage(),
        ],
        id="tool-calls-get-unique-ids",
    ),
    pytest.param(
        {
            **final(),
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {**WEATHER_CALL, "id": "call_lyywui55"},
                    {**WEATHER_CALL, "id": "call_lyywui55"},
                ],
            },
        },
        [
            START,
            ToolCallStart(0, "call_lyywui55", "get_weather"),
            ToolCallDelta(0, '{"city":"Paris"}'),
            ToolCallStart(1, "#0", "get_weather"),
            ToolCallDelta(1, '{"city":"Paris"}'),
            Finish("tool_calls"),
            usage(),
        ],
        id="upstream-ids-kept-duplicates-replaced",
    ),
    pytest.param(
        {**final("length", prompt=None, output=9), "message": {"content": "trunc"}},
        [START, TextDelta("trunc"), Finish("length"), usage(0, 9)],
        id="length-and-cached-prompt",
    ),
    pytest.param(
        {**final("load", prompt=None, output=None), "created_at": "yesterday"},
        [Start(model=MODEL), Finish("stop")],
        id="no-usage-bad-date-other-reason",
    ),
    pytest.param(
        {"error": "model 'nope' not found"},
        [Failure("upstream_error", "model 'nope' not found")],
        id="error",
    ),
]


@pytest.mark.parametrize(("answer", "expected"), DECODE_CASES)
def test_decode_response(answer: dict[str, Any], expected: list[Event]) -> None:
    assert normalize(decode_response(answer)) == expected


def feed_all(lines: list[dict[str, Any]]) -> list[Event]:
    decoder = StreamDecoder()
    return [event for obj in lines for event in decoder.feed(obj)]


STREAM_CASES = [
    pytest.param(
        [line({"content": "Hel"}), line({"content": "lo"}), line({"content": ""}), final()],
        [START, TextDelta("Hel"), TextDelta("lo"), Finish("stop"), usage()],
        id="text",
    ),
    pytest.param(
        [
            line({"thinking": "hmm "}),
            line({"thinking": "ok"}),
            line({"content": "A"}),
            line({"content": "B"}),
            final(),
        ],
        [
            START,
            ReasoningDelta("hmm ", kind="raw"),
            ReasoningDelta("ok", kind="raw"),
            ReasoningDone(),
            TextDelta("A"),
            TextDelta("B"),
            Finish("stop"),
            usage(),
        ],
        id="thinking-then-text",
    ),
    pytest.param(
        [line({"thinking": "only thoughts"}), final("length")],
        [
            START,
            ReasoningDelta("only thoughts", kind="raw"),
            ReasoningDone(),
            Finish("length"),
            usage(),
        ],
        id="thinking-closed-at-end-length",
    ),
    pytest.param(
        [
            line({"thinking": "need tools"}),
            line({"tool_calls": [WEATHER_CALL]}),
            line({"tool_calls": [WEATHER_CALL, {"function": {"name": "b", "arguments": {}}}]}),
            final(),
        ],
        [
            START,
            ReasoningDelta("need tools", kind="raw"),
            ReasoningDone(),
            ToolCallStart(0, "#0", "get_weather"),
            ToolCallDelta(0, '{"city":"Paris"}'),
            ToolCallStart(1, "#1", "get_weather"),
            ToolCallDelta(1, '{"city":"Paris"}'),
            ToolCallStart(2, "#2", "b"),
            ToolCallDelta(2, "{}"),
            Finish("tool_calls"),
            usage(),
        ],
        id="tool-calls-indexes-across-lines",
    ),
    pytest.param(
        [line({"content": "partial"}), {"error": "out of memory"}, final()],
        [START, TextDelta("partial"), Failure("upstream_error", "out of memory")],
        id="error-line",
    ),
    pytest.param(
        [final(), line({"content": "late"})],
        [START, Finish("stop"), usage()],
        id="nothing-after-done",
    ),
]


@pytest.mark.parametrize(("lines", "expected"), STREAM_CASES)
def test_stream_decoder(lines: list[dict[str, Any]], expected: list[Event]) -> None:
    assert normalize(feed_all(lines)) == expected


def test_stream_decoder_done_flag() -> None:
    decoder = StreamDecoder()
    decoder.feed(line({"content": "x"}))
    assert decoder.done is False
    decoder.feed(final())
    assert decoder.done is True


def test_generated_ids_differ_between_answers() -> None:
    answer = {**final(), "message": {"content": "", "tool_calls": [WEATHER_CALL]}}
    first, second = decode_response(answer)[1], decode_response(answer)[1]
    assert isinstance(first, ToolCallStart) and isinstance(second, ToolCallStart)
    assert first.call_id != second.call_id


# --- against the fake upstream ------------------------------------------------------------

REPO = Path(__file__).resolve().parents[3]
LISTENING = "fake upstream listening on "


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    command = [sys.executable, "-m", "tests.fakeupstream", "--port", "0"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    url = None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 20
        while url is None and time.monotonic() < deadline:
            if selector.select(timeout=0.1):
                out = process.stdout.readline()
                if out.startswith(LISTENING):
                    url = out[len(LISTENING) :].strip()
                elif not out:
                    break
    try:
        assert url is not None, "fake upstream did not start"
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def ask(url: str, prompt: str, *, stream: bool) -> list[Event]:
    """Build the body from a canonical request, send it, decode what comes back."""
    canonical = request(
        user(prompt),
        tools=[Tool("function", name="get_weather", parameters=WEATHER)],
        stream=stream,
        reasoning_effort="high",
    )
    built = build_request(canonical, MODEL)
    with httpx.Client(base_url=url, timeout=10) as client:
        response = client.post("/api/chat", json=built)
    assert response.status_code == 200, response.text
    if not stream:
        return decode_response(response.json())
    assert response.headers["content-type"] == "application/x-ndjson"
    decoder = StreamDecoder()
    events = [e for raw in response.text.splitlines() for e in decoder.feed(orjson.loads(raw))]
    assert decoder.done
    return events


def settle_start(events: list[Event]) -> list[Event]:
    """The fake stamps the real time: check it, then pin it for comparison."""
    start = events[0]
    assert isinstance(start, Start) and start.created is not None
    assert abs(start.created - time.time()) < 300
    return [Start(model=start.model), *events[1:]]


THINKING = [ReasoningDelta(piece, kind="raw") for piece in ("thinking ", "about ", "it")]


@pytest.mark.e2e  # the fake upstream runs as a subprocess
def test_fake_upstream_stream_with_reasoning_and_tool_calls(fake_url: str) -> None:
    # input words: "weather" "please" "[[fake" "tool=get_weather" "tools=2" "reasoning=1]]"
    events = ask(fake_url, "weather please [[fake tool=get_weather tools=2 reasoning=1]]",
                 stream=True)
    assert normalize(settle_start(events)) == [
        Start(model=MODEL),
        *THINKING,
        ReasoningDone(),
        ToolCallStart(0, "#0", "get_weather"),
        ToolCallDelta(0, '{"city":"Paris"}'),
        ToolCallStart(1, "#1", "get_weather_1"),
        ToolCallDelta(1, '{"city":"Paris"}'),
        Finish("tool_calls"),
        UsageReport(Usage(input_tokens=6, output_tokens=6)),  # 3 argument pieces per call
    ]


@pytest.mark.e2e  # the fake upstream runs as a subprocess
def test_fake_upstream_stream_text_with_length_finish(fake_url: str) -> None:
    events = ask(fake_url, "go [[fake finish=length]]", stream=True)
    assert settle_start(events) == [
        Start(model=MODEL),
        TextDelta("tok0 "),
        TextDelta("tok1 "),
        TextDelta("tok2 "),
        Finish("length"),
        UsageReport(Usage(input_tokens=3, output_tokens=3)),
    ]


@pytest.mark.e2e  # the fake upstream runs as a subprocess
def test_fake_upstream_non_stream_with_reasoning_and_tool_call(fake_url: str) -> None:
    events = ask(fake_url, "[[fake tool=get_weather reasoning=1]]", stream=False)
    assert normalize(settle_start(events)) == [
        Start(model=MODEL),
        ReasoningDelta("thinking about it", kind="raw"),
        ReasoningDone(),
        ToolCallStart(0, "#0", "get_weather"),
        ToolCallDelta(0, '{"city":"Paris"}'),
        Finish("tool_calls"),
        UsageReport(Usage(input_tokens=3, output_tokens=3)),
    ]


@pytest.mark.e2e  # the fake upstream runs as a subprocess
def test_fake_upstream_non_stream_text(fake_url: str) -> None:
    events = ask(fake_url, "say [[fake reasoning=1 chunks=2]]", stream=False)
    assert settle_start(events) == [
        Start(model=MODEL),
        ReasoningDelta("thinking about it", kind="raw"),
        ReasoningDone(),
        TextDelta("tok0 tok1 "),
        Finish("stop"),
        UsageReport(Usage(input_tokens=4, output_tokens=2)),
    ]
