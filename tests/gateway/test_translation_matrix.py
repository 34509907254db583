"""The translation matrix, end to end: the official ``openai`` SDK (Chat Completions and
Responses, plain and through its typed stream helpers) -> Turnpike (daphne) -> the fake
upstream speaking each upstream kind, over real loopback HTTP.

Every case is data: a protocol-neutral request (``matrix_cases.Turn``s, tools, options)
and what must come out — the client-visible answer in the client's own protocol and what
the upstream received in its own. Each case runs for every client protocol x upstream
kind x stream mode it applies to. Numbers are exact: the fake's usage rule (see
``tests/fakeupstream/``) counts the words Turnpike sends, and answers 3 text chunks
(or 3 argument pieces per tool call) unless told otherwise.

Expectation tables keyed by where the request went are read with ``matrix_cases.pick``:
``"<client>><kind>"``, then ``"<kind>"``, then ``"@<protocol spoken upstream>"``, then ``"*"``.

Sections: the case matrix (text, instructions, tools, tool_choice, parallel calls, reasoning,
sampling, usage, finish reasons, images); tool round trips; errors and cut streams; strict
stream shapes (raw SSE); Codex-style upstreams; compaction by Turnpike. A case can carry
known application bugs as strict xfails (``Case.bugs``; a reason starts with ``BUG:``).
"""

from __future__ import annotations

import base64
import fnmatch
import json
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest

from gateway.services import upstream_create
from tests.conftest import UPSTREAM_SECRET
from tests.gateway.matrix_cases import (
    ABSENT,
    CITY,
    CLIENTS,
    CODEX_DEFAULT_INSTRUCTIONS,
    DEFAULT_TEXT,
    GET_WEATHER,
    GET_WEATHER_1,
    KINDS,
    MODES,
    PNG_DATA,
    PNG_DATA_URL,
    Tool,
    Turn,
    assert_paths,
    assistant,
    client_body,
    client_path,
    developer,
    dig,
    last_sent,
    model_for,
    pick,
    raw_post,
    send,
    send_chat,
    send_responses,
    sent_requests,
    sse_events,
    subset,
    system,
    tool_call,
    tool_result,
    upstream_protocol,
    upstream_turns,
    usage_in_client_format,
    user,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

FINISHED = {"chat": "stop", "responses": "completed"}
CALLED = {"chat": "tool_calls", "responses": "completed"}
PARIS = {"city": "Paris"}
COMPACTION_PREAMBLE = "Summary of the conversation so far (earlier turns were compacted):\n\n"


@pytest.fixture
def upstreams(fake_upstream: Any) -> dict[str, Any]:
    """One upstream per kind, each serving its own model ``m-<kind>``."""
    fake_upstream.clear()
    return {
        kind: upstream_create(
            name=f"matrix-{kind}", kind=kind, models=[model_for(kind)],
            base_url=fake_upstream.openai_url if kind.startswith("openai") else fake_upstream.url,
            api_keys=[UPSTREAM_SECRET])
        for kind in KINDS
    }


@pytest.fixture
def sdk(gateway: Any, upstreams: dict[str, Any], api_key: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=api_key.secret, max_retries=0)


# --- the matrix of cases ------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One request and everything the client and the upstream must see for it. Fields
    left at None are not checked for this case."""

    name: str
    turns: tuple[Turn, ...]
    tools: tuple[Tool, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    text: str = DEFAULT_TEXT
    calls: tuple[tuple[str, dict[str, Any]], ...] = ()
    finish: dict[str, str] = field(default_factory=lambda: FINISHED)
    incomplete_reason: str | None = None  # Responses clients only
    reasoning: str | None = None
    usage: dict[str, tuple[int, int, int]] | None = None  # (input, output, cached) by pick
    argument_deltas: dict[str, int] | None = None  # stream mode, by pick
    history: dict[str, list[tuple[Any, ...]]] | None = None  # upstream_turns, by pick
    upstream: dict[str, dict[str, Any]] | None = None  # {path: value} in the body, by pick
    reasoning_tokens: dict[str, int] | None = None  # usage details, by pick
    last_event: str | None = None  # Responses streams
    clients: tuple[str, ...] = CLIENTS
    kinds: tuple[str, ...] = KINDS
    # fnmatch pattern on "<client>><kind>><mode>" -> "BUG: <file>: <what happens>"
    bugs: dict[str, str] = field(default_factory=dict)


INSTRUCTION = "Answer in one line."
HISTORY = [("user", "What is Turnpike?"), ("assistant", "A gateway."),
           ("user", "Say it again [[fake echo=1]]")]
DEV_NOTE = "Prefer metric units."
ASK_WEATHER = "What's the weather in Paris? [[fake tool=get_weather]]"
WEATHER_SCHEMA = {"type": "object", "properties": {"celsius": {"type": "number"}},
                  "required": ["celsius"], "additionalProperties": False}

CHAT_WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": GET_WEATHER.description, "parameters": CITY}}
TOOL_DEFINITIONS = {
    "@chat": {"tools": [CHAT_WEATHER_TOOL]},
    "@responses": {"tools": [{"type": "function", "name": "get_weather",
                              "description": GET_WEATHER.description, "parameters": CITY}]},
    "@anthropic": {"tools": [{"name": "get_weather", "description": GET_WEATHER.description,
                              "input_schema": CITY}]},
    "@ollama": {"tools": [CHAT_WEATHER_TOOL]},
}

CASES = [
    Case(
        name="system_instruction_and_history_reach_the_upstream_in_its_own_place",
        turns=(system(INSTRUCTION), user("What is Turnpike?"), assistant("A gateway."),
               user("Say it again [[fake echo=1]]")),
        text="Say it again",
        history={
            "@chat": [("system", INSTRUCTION), *HISTORY],
            "@responses": [("instructions", INSTRUCTION), *HISTORY],
            # a chat client's system message: a developer message, default instructions
            "chat>openai-responses": [("instructions", CODEX_DEFAULT_INSTRUCTIONS),
                                      ("developer", INSTRUCTION), *HISTORY],
            "@anthropic": [("system", INSTRUCTION), *HISTORY],
            "@ollama": [("system", INSTRUCTION), *HISTORY],
        },
    ),
    Case(
        name="a_developer_message_becomes_the_upstreams_instruction",
        turns=(developer(DEV_NOTE), user("Hi there [[fake echo=1]]")),
        text="Hi there",
        history={
            "@chat": [("developer", DEV_NOTE), ("user", "Hi there [[fake echo=1]]")],
            "@responses": [("developer", DEV_NOTE), ("user", "Hi there [[fake echo=1]]")],
            "openai-responses": [("instructions", CODEX_DEFAULT_INSTRUCTIONS),
                                 ("developer", DEV_NOTE), ("user", "Hi there [[fake echo=1]]")],
            "@anthropic": [("system", DEV_NOTE), ("user", "Hi there [[fake echo=1]]")],
            "@ollama": [("system", DEV_NOTE), ("user", "Hi there [[fake echo=1]]")],
        },
    ),
    Case(
        name="a_function_tool_call_comes_back_in_the_clients_protocol",
        turns=(user(ASK_WEATHER),),
        tools=(GET_WEATHER,),
        text="",
        calls=(("get_weather", PARIS),),
        finish=CALLED,
        # The fake streams arguments in 3 pieces; Ollama sends a call whole, in one line.
        argument_deltas={"*": 3, "ollama": 1},
        upstream=TOOL_DEFINITIONS,
    ),
    Case(
        name="tool_choice_required_is_mapped",
        turns=(user("Use a tool."),),
        tools=(GET_WEATHER,),
        options={"tool_choice": "required"},
        upstream={
            "@chat": {"tool_choice": "required"},
            "@responses": {"tool_choice": "required"},
            "@anthropic": {"tool_choice": {"type": "any"}},
            # Ollama cannot force a call: the tools are offered, the model chooses.
            "@ollama": {"tool_choice": ABSENT, "tools": [CHAT_WEATHER_TOOL]},
        },
    ),
    Case(
        name="tool_choice_none_is_mapped",
        turns=(user("No tools now."),),
        tools=(GET_WEATHER,),
        options={"tool_choice": "none"},
        upstream={
            "@chat": {"tool_choice": "none"},
            "@responses": {"tool_choice": "none"},
            "@anthropic": {"tool_choice": {"type": "none"}},
            "@ollama": {"tool_choice": ABSENT, "tools": ABSENT},
        },
    ),
    Case(
        name="tool_choice_naming_a_function_is_mapped",
        turns=(user("Use get_weather."),),
        tools=(GET_WEATHER,),
        options={"tool_choice": "function:get_weather"},
        upstream={
            "@chat": {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
            "@responses": {"tool_choice": {"type": "function", "name": "get_weather"}},
            "@anthropic": {"tool_choice": {"type": "tool", "name": "get_weather"}},
            "@ollama": {"tool_choice": ABSENT, "tools": [CHAT_WEATHER_TOOL]},
        },
    ),
    Case(
        name="two_parallel_tool_calls_come_back_as_two_calls",
        turns=(user("Weather twice [[fake tool=get_weather tools=2]]"),),
        tools=(GET_WEATHER, GET_WEATHER_1),
        text="",
        calls=(("get_weather", PARIS), ("get_weather_1", PARIS)),
        finish=CALLED,
        argument_deltas={"*": 6, "ollama": 2},
    ),
    Case(
        name="reasoning_effort_high_is_mapped_and_reasoning_comes_back",
        turns=(user("Think first [[fake reasoning=1]]"),),
        options={"effort": "high"},
        reasoning="thinking about it",
        upstream={
            "@chat": {"reasoning_effort": "high"},
            "@responses": {"reasoning.effort": "high"},
            # budget for "high", and max_tokens raised to leave room for the answer
            "@anthropic": {"thinking": {"type": "enabled", "budget_tokens": 16384},
                           "max_tokens": 16384 + 4096},
            "@ollama": {"think": "high"},
        },
    ),
    Case(
        name="max_tokens_temperature_and_stop_are_mapped",
        turns=(user("Be short."),),
        options={"max_tokens": 50, "temperature": 0.5, "stop": ["END"]},  # stop: chat only
        upstream={
            "@chat": {"max_tokens": 50, "temperature": 0.5, "stop": ["END"]},
            "responses>openai-chat": {"max_tokens": 50, "temperature": 0.5, "stop": ABSENT},
            "@responses": {"max_output_tokens": 50, "temperature": 0.5},
            # Codex-style backends reject sampling overrides: dropped.
            "openai-responses": {"max_output_tokens": ABSENT, "temperature": ABSENT},
            "chat>anthropic": {"max_tokens": 50, "temperature": 0.5, "stop_sequences": ["END"]},
            "@anthropic": {"max_tokens": 50, "temperature": 0.5, "stop_sequences": ABSENT},
            "chat>ollama": {"options": {"temperature": 0.5, "stop": ["END"],
                                        "num_predict": 50}},
            "@ollama": {"options": {"temperature": 0.5, "num_predict": 50}},
        },
    ),
    Case(
        name="top_p_is_mapped",
        turns=(user("Be creative."),),
        options={"top_p": 0.9},
        upstream={
            "@chat": {"top_p": 0.9},
            "@responses": {"top_p": 0.9},
            "openai-responses": {"top_p": ABSENT},
            "@anthropic": {"top_p": 0.9, "temperature": ABSENT, "max_tokens": 8192},
            "@ollama": {"options": {"top_p": 0.9}},
        },
    ),
    Case(
        name="a_temperature_above_anthropics_range_is_clamped",
        turns=(user("Be wild."),),
        options={"temperature": 1.5},
        upstream={
            "@chat": {"temperature": 1.5},
            "@responses": {"temperature": 1.5},
            "openai-responses": {"temperature": ABSENT},
            "@anthropic": {"temperature": 1.0},
            "@ollama": {"options": {"temperature": 1.5}},
        },
    ),
    Case(
        name="usage_arrives_in_the_clients_format_with_cached_tokens",
        # 4 words + "[[fake" + "cached=2]]" = 6 input words; 3 chunks out
        turns=(user("count my words please [[fake cached=2]]"),),
        options={"include_usage": True},
        usage={
            "*": (6, 3, 2),
            # + "You are a helpful assistant." added as default instructions
            "openai-responses": (11, 3, 2),
            "ollama": (6, 3, 0),  # Ollama reports no cache reads
        },
    ),
    Case(
        name="max_completion_tokens_is_mapped_like_max_tokens",
        clients=("chat",),
        turns=(user("Be short."),),
        options={"max_completion_tokens": 40},
        upstream={
            "@chat": {"max_completion_tokens": 40},
            "openai-responses": {"max_output_tokens": ABSENT},
            "@anthropic": {"max_tokens": 40},
            "@ollama": {"options": {"num_predict": 40}},
        },
    ),
    Case(
        name="parallel_tool_calls_false_is_mapped",
        turns=(user("One call at a time."),),
        tools=(GET_WEATHER,),
        options={"parallel_tool_calls": False},
        upstream={
            "@chat": {"parallel_tool_calls": False},
            "@responses": {"parallel_tool_calls": False},
            "@anthropic": {"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}},
            "@ollama": {"parallel_tool_calls": ABSENT, "tools": [CHAT_WEATHER_TOOL]},
        },
    ),
    Case(
        name="a_json_schema_output_format_is_mapped",
        turns=(user("Weather as JSON."),),
        options={"json_schema": {"name": "weather", "schema": WEATHER_SCHEMA, "strict": True}},
        upstream={
            "@chat": {"response_format": {"type": "json_schema", "json_schema": {
                "name": "weather", "schema": WEATHER_SCHEMA, "strict": True}}},
            "@responses": {"text.format": {"type": "json_schema", "name": "weather",
                                           "schema": WEATHER_SCHEMA, "strict": True}},
            # Anthropic has no structured-output switch: the schema goes into the system text.
            "@anthropic": {"system": "Respond with a single JSON value that conforms to the "
                                     "following JSON schema and nothing else: no prose, no "
                                     "code fences.\nJSON schema (weather): "
                                     + json.dumps(WEATHER_SCHEMA, separators=(",", ":"))},
            "@ollama": {"format": WEATHER_SCHEMA},
        },
    ),
    Case(
        name="a_plain_string_input_is_one_user_message",
        clients=("responses",),
        turns=(user("Just a string [[fake echo=1]]"),),
        options={"string_input": True},
        text="Just a string",
        history={
            "*": [("user", "Just a string [[fake echo=1]]")],
            "openai-responses": [("instructions", CODEX_DEFAULT_INSTRUCTIONS),
                                 ("user", "Just a string [[fake echo=1]]")],
        },
    ),
    Case(
        name="reasoning_tokens_are_reported_in_the_usage_details",
        # 3 words + "[[fake" + "reasoning_tokens=2]]" = 5 input words
        turns=(user("count these words [[fake reasoning_tokens=2]]"),),
        options={"include_usage": True},
        usage={"*": (5, 3, 0), "openai-responses": (10, 3, 0)},
        # only the OpenAI protocols report reasoning tokens
        reasoning_tokens={"*": 2, "anthropic": 0, "ollama": 0},
    ),
    Case(
        name="a_truncated_answer_ends_with_the_protocols_length_finish",
        turns=(user("Go on [[fake finish=length]]"),),
        finish={"chat": "length", "responses": "incomplete"},
        incomplete_reason="max_output_tokens",
        last_event="response.incomplete",
    ),
    Case(
        name="a_data_url_image_reaches_the_upstream_in_its_format",
        turns=(user("What is in this image?", image=PNG_DATA_URL),),
        upstream={
            "@chat": {"messages.-1.content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": PNG_DATA_URL, "detail": "auto"}}]},
            "@responses": {"input.-1.content": [
                {"type": "input_text", "text": "What is in this image?"},
                {"type": "input_image", "image_url": PNG_DATA_URL, "detail": "auto"}]},
            "@anthropic": {"messages.-1.content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": PNG_DATA}}]},
            "@ollama": {"messages.-1": {"role": "user", "content": "What is in this image?",
                                        "images": [PNG_DATA]}},
        },
    ),
]


def _bug_marks(client: str, kind: str, mode: str, bugs: dict[str, str]) -> list[Any]:
    where = f"{client}>{kind}>{mode}"
    return [pytest.mark.xfail(strict=True, reason=reason)
            for pattern, reason in bugs.items() if fnmatch.fnmatch(where, pattern)]


# A Chat client on an ``openai-chat`` upstream takes exactly the path it takes on an
# ``openai`` one: both providers speak Chat for the chat operation and relay it untouched
# (passthrough); they differ only in native compaction and stored responses, which a Chat
# request without a compaction trigger never reaches (gateway/exchange/attempts.py,
# ``run_route``; gateway/providers/openai*.py). So where a test runs every kind, a Chat
# client runs ``openai`` as the representative of that passthrough and not ``openai-chat``;
# ``openai-chat`` keeps its translated pairing (a Responses client) and every test that
# names it.
SAME_PATH = {("chat", "openai-chat")}


def kinds_for(client: str) -> list[str]:
    """Every upstream kind with its own path for this client (see ``SAME_PATH``)."""
    return [kind for kind in KINDS if (client, kind) not in SAME_PATH]


def grid(clients: tuple[str, ...] = CLIENTS, kinds: tuple[str, ...] = KINDS,
         modes: tuple[str, ...] = MODES, bugs: dict[str, str] | None = None) -> list[Any]:
    """(client, kind, mode) params; ``bugs`` as in ``Case.bugs``. With every kind, a
    pairing in ``SAME_PATH`` is left to its representative."""
    return [pytest.param(client, kind, mode, marks=_bug_marks(client, kind, mode, bugs or {}),
                         id=f"{client}-to-{kind}-{mode}")
            for client in clients for kind in kinds for mode in modes
            if kinds != KINDS or (client, kind) not in SAME_PATH]


def _matrix() -> list[Any]:
    return [pytest.param(case, *param.values, marks=_bug_marks(*param.values, case.bugs),
                         id=f"{case.name}-{param.id}")
            for case in CASES for param in grid(case.clients, case.kinds)]


@pytest.mark.parametrize(("case", "client", "kind", "mode"), _matrix())
def test_each_client_gets_what_the_case_expects_from_each_upstream_kind(
        case: Case, client: str, kind: str, mode: str, sdk: openai.OpenAI,
        fake_upstream: Any) -> None:
    stream = mode == "stream"
    body = client_body(client, model_for(kind), case.turns, tools=case.tools,
                       options=case.options, stream=stream)
    answer = send(sdk, client, body)

    assert answer.model == model_for(kind)
    assert answer.text == case.text
    assert answer.calls == list(case.calls)
    ids = [call.call_id for call in answer.tool_calls]
    assert all(ids) and len(set(ids)) == len(ids)
    if client == "responses":
        assert all(call.item_id for call in answer.tool_calls)
    assert answer.finish == case.finish[client]
    if client == "responses":
        assert answer.incomplete_reason == case.incomplete_reason
    if case.reasoning is not None:
        assert answer.reasoning == case.reasoning
    if case.usage is not None:
        expected = usage_in_client_format(client, pick(case.usage, client, kind))
        assert subset(answer.usage, expected) == expected
    if case.reasoning_tokens is not None:
        details = "completion_tokens_details" if client == "chat" else "output_tokens_details"
        tokens = pick(case.reasoning_tokens, client, kind)
        assert answer.usage[details]["reasoning_tokens"] == tokens
    if stream and case.argument_deltas is not None:
        assert answer.argument_deltas == pick(case.argument_deltas, client, kind)
    if stream and client == "chat":
        assert len(answer.chunk_ids) == 1  # one completion id across the stream
    if stream and client == "responses":
        assert answer.events[0] == "response.created"
        assert answer.events[-1] == (case.last_event or "response.completed")
    if client == "responses":
        assert answer.instructions == body.get("instructions")  # echoed as the client sent it

    sent = last_sent(fake_upstream)
    assert sent.protocol == upstream_protocol(client, kind)
    # Codex-style upstreams are always called streaming; the others as the client asked.
    streamed = stream or kind == "openai-responses"
    assert dig(sent.body, "stream") in ((True,) if streamed else (False, ABSENT))
    if case.history is not None:
        assert upstream_turns(sent) == pick(case.history, client, kind)
    if case.upstream is not None:
        assert_paths(sent.body, pick(case.upstream, client, kind))


# --- tools: the round trip ------------------------------------------------------------------

RESULT = "Sunny, 21 C [[fake tool=]]"  # "tool=" ends tool calling for the next answer


def result_in_upstream_protocol(call_id: str) -> dict[str, dict[str, Any]]:
    return {
        "@chat": {"messages.-1": {"role": "tool", "tool_call_id": call_id, "content": RESULT}},
        "@responses": {"input.-1": {"type": "function_call_output", "call_id": call_id,
                                    "output": RESULT}},
        "@anthropic": {"messages.-1": {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call_id, "content": RESULT}]}},
        "@ollama": {"messages.-1": {"role": "tool", "content": RESULT,
                                    "tool_name": "get_weather", "tool_call_id": call_id}},
    }


@pytest.mark.parametrize(("client", "kind", "mode"), grid())
def test_a_tool_result_sent_back_reaches_the_upstream_and_the_answer_is_text(
        client: str, kind: str, mode: str, sdk: openai.OpenAI, fake_upstream: Any) -> None:
    stream = mode == "stream"
    ask = (user(ASK_WEATHER),)
    first = send(sdk, client, client_body(client, model_for(kind), ask, tools=(GET_WEATHER,),
                                          stream=stream))
    [call] = first.tool_calls
    turns = (*ask, tool_call(call.call_id, call.name, call.arguments),
             tool_result(call.call_id, RESULT))
    second = send(sdk, client, client_body(client, model_for(kind), turns,
                                           tools=(GET_WEATHER,), stream=stream))

    assert (second.text, second.tool_calls, second.finish) == (DEFAULT_TEXT, [], FINISHED[client])
    sent = last_sent(fake_upstream)
    assert upstream_turns(sent)[-3:] == [
        ("user", ASK_WEATHER),
        ("tool_call", call.call_id, "get_weather", PARIS),
        ("tool_result", call.call_id, RESULT),
    ]
    assert_paths(sent.body, pick(result_in_upstream_protocol(call.call_id), client, kind))


@pytest.mark.parametrize(("client", "kind", "mode"), grid())
def test_the_results_of_two_parallel_calls_reach_the_upstream_together(
        client: str, kind: str, mode: str, sdk: openai.OpenAI, fake_upstream: Any) -> None:
    stream = mode == "stream"
    tools = (GET_WEATHER, GET_WEATHER_1)
    ask = (user("Weather twice [[fake tool=get_weather tools=2]]"),)
    first = send(sdk, client, client_body(client, model_for(kind), ask, tools=tools,
                                          stream=stream))
    one, two = first.tool_calls
    turns = (*ask, tool_call(one.call_id, one.name, one.arguments),
             tool_call(two.call_id, two.name, two.arguments),
             tool_result(one.call_id, "Sunny"), tool_result(two.call_id, RESULT))
    second = send(sdk, client, client_body(client, model_for(kind), turns, tools=tools,
                                           stream=stream))

    assert (second.text, second.finish) == (DEFAULT_TEXT, FINISHED[client])
    sent = last_sent(fake_upstream)
    assert upstream_turns(sent)[-5:] == [
        ("user", "Weather twice [[fake tool=get_weather tools=2]]"),
        ("tool_call", one.call_id, "get_weather", PARIS),
        ("tool_call", two.call_id, "get_weather_1", PARIS),
        ("tool_result", one.call_id, "Sunny"),
        ("tool_result", two.call_id, RESULT),
    ]
    # Both calls in one assistant turn; Anthropic: both results in one user message.
    assert_paths(sent.body, pick({
        "@chat": {"messages.-3.tool_calls.0.id": one.call_id,
                  "messages.-3.tool_calls.1.id": two.call_id, "messages.-2.role": "tool"},
        "@responses": {"input.-4.call_id": one.call_id, "input.-3.call_id": two.call_id},
        "@anthropic": {"messages.-2.content.0.id": one.call_id,
                       "messages.-2.content.1.id": two.call_id,
                       "messages.-1.content.0.tool_use_id": one.call_id,
                       "messages.-1.content.1.tool_use_id": two.call_id},
        "@ollama": {"messages.-3.tool_calls.0.id": one.call_id,
                    "messages.-3.tool_calls.1.id": two.call_id,
                    "messages.-2.tool_name": "get_weather",
                    "messages.-1.tool_name": "get_weather_1"},
    }, client, kind))


# --- usage only when asked, for chat streams -------------------------------------------------

@pytest.mark.parametrize(("client", "kind", "mode"), grid(clients=("chat",), modes=("stream",)))
def test_a_chat_stream_carries_no_usage_unless_the_client_asks(
        client: str, kind: str, mode: str, sdk: openai.OpenAI, gateway: Any,
        api_key: Any) -> None:
    body = client_body(client, model_for(kind), (user("hello there"),), stream=True)
    answer = send_chat(sdk, body)
    assert (answer.text, answer.usage) == (DEFAULT_TEXT, None)
    resp = raw_post(gateway, api_key.secret, client_path(client), body)
    chunks = [e.json for e in sse_events(resp.text) if e.data != "[DONE]"]
    assert [c for c in chunks if not c["choices"] or c.get("usage")] == []


# --- images that cannot be sent ----------------------------------------------------------------

@pytest.mark.parametrize(("client", "kind", "mode"), grid(kinds=("ollama",)))
def test_an_http_image_url_to_ollama_is_a_clear_400(
        client: str, kind: str, mode: str, sdk: openai.OpenAI, fake_upstream: Any) -> None:
    turns = (user("What is in this image?", image="https://example.com/cat.png"),)
    body = client_body(client, model_for(kind), turns, stream=mode == "stream")
    with pytest.raises(openai.BadRequestError) as caught:
        send(sdk, client, body)
    error = caught.value.body
    assert caught.value.status_code == 400
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "input"
    assert "base64 data URL" in error["message"] and "http(s) URL" in error["message"]
    assert sent_requests(fake_upstream) == []  # refused before anything went upstream


# --- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("client", "kind", "mode"), grid())
def test_an_upstream_500_reaches_the_client_as_an_openai_server_error(
        client: str, kind: str, mode: str, sdk: openai.OpenAI) -> None:
    body = client_body(client, model_for(kind), (user("Hello [[fake status=500]]"),),
                       stream=mode == "stream")
    with pytest.raises(openai.InternalServerError) as caught:
        send(sdk, client, body)
    assert caught.value.status_code == 500
    assert caught.value.body["message"] == "fake upstream error 500"
    assert caught.value.body["type"] == "server_error"


@pytest.mark.parametrize(("client", "kind", "mode"), grid(modes=("stream",)))
def test_a_stream_cut_mid_way_ends_with_the_protocols_error_event(
        client: str, kind: str, mode: str, gateway: Any, api_key: Any, upstreams: Any) -> None:
    body = client_body(client, model_for(kind), (user("Tell me [[fake chunks=5 cut=2]]"),),
                       stream=True)
    resp = raw_post(gateway, api_key.secret, client_path(client), body)
    assert resp.status_code == 200
    events = sse_events(resp.text)
    if client == "chat":
        assert "[DONE]" not in [e.data for e in events]
        chunks = [e.json for e in events]
        assert chunks[-1]["error"]["code"] == "upstream_stream_cut"
        texts = [c["choices"][0]["delta"].get("content") for c in chunks[:-1] if c["choices"]]
        assert "".join(t for t in texts if t) == "tok0 tok1 "
    else:
        datas = [e.json for e in events]
        assert datas[-1]["type"] == "response.failed"
        assert datas[-1]["response"]["status"] == "failed"
        assert datas[-1]["response"]["error"]["code"] == "upstream_stream_cut"
        assert datas[-1]["response"]["id"] == datas[0]["response"]["id"]
        assert [d["sequence_number"] for d in datas] == list(range(len(datas)))
        deltas = [d["delta"] for d in datas if d["type"] == "response.output_text.delta"]
        assert "".join(deltas) == "tok0 tok1 "



@pytest.mark.parametrize(("client", "kind", "mode"), grid(
    clients=("responses",), modes=("stream",)))
def test_a_tool_call_cut_mid_stream_is_never_reported_as_completed(
        client: str, kind: str, mode: str, gateway: Any, api_key: Any, upstreams: Any) -> None:
    # 4 argument pieces; the stream breaks after the second.
    turns = (user("Weather? [[fake tool=get_weather chunks=4 cut=2]]"),)
    body = client_body(client, model_for(kind), turns, tools=(GET_WEATHER,), stream=True)
    datas = [e.json for e in sse_events(raw_post(gateway, api_key.secret, "/responses",
                                                 body).text)]
    assert datas[-1]["type"] == "response.failed"
    completed_calls = [d["item"] for d in datas if d["type"] == "response.output_item.done"
                       and d["item"]["type"] == "function_call"
                       and d["item"]["status"] == "completed"]
    # (Ollama sends a call whole, so a call it started is complete.)
    assert all(json.loads(item["arguments"]) == PARIS for item in completed_calls)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_cut_upstream_stream_behind_a_non_stream_client_is_a_502(
        client: str, sdk: openai.OpenAI) -> None:
    # Codex-style upstreams are always called streaming, even for a non-stream client.
    body = client_body(client, model_for("openai-responses"),
                       (user("Tell me [[fake chunks=5 cut=2]]"),))
    with pytest.raises(openai.InternalServerError) as caught:
        send(sdk, client, body)
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "upstream_stream_cut"


# --- strict stream shapes (raw SSE) -------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    turns: tuple[Turn, ...]
    tools: tuple[Tool, ...]
    items: list[str]  # Responses: output item types, in order
    end: str  # Responses: the terminal event
    finish: str  # Chat: the one finish_reason


SHAPES = {
    "text": Shape((user("Hello [[fake chunks=4]]"),), (), ["message"],
                  "response.completed", "stop"),
    "tool_call": Shape((user(ASK_WEATHER),), (GET_WEATHER,), ["function_call"],
                       "response.completed", "tool_calls"),
    "two_tool_calls": Shape((user("Twice [[fake tool=get_weather tools=2]]"),),
                            (GET_WEATHER, GET_WEATHER_1), ["function_call", "function_call"],
                            "response.completed", "tool_calls"),
    "reasoning_then_text": Shape((user("Think [[fake reasoning=1]]"),), (),
                                 ["reasoning", "message"], "response.completed", "stop"),
    "truncated": Shape((user("More [[fake finish=length]]"),), (), ["message"],
                       "response.incomplete", "length"),
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("kind", KINDS)
def test_a_responses_stream_has_the_strict_event_shape(
        kind: str, shape: str, gateway: Any, api_key: Any, upstreams: Any) -> None:
    spec = SHAPES[shape]
    body = client_body("responses", model_for(kind), spec.turns, tools=spec.tools, stream=True)
    resp = raw_post(gateway, api_key.secret, "/responses", body)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp.text)
    datas = [e.json for e in events]
    assert [e.event for e in events] == [d["type"] for d in datas]
    assert datas[0]["type"] == "response.created"
    assert [d["sequence_number"] for d in datas] == list(range(len(datas)))
    response_id = datas[0]["response"]["id"]
    assert all(d["response"]["id"] == response_id for d in datas if "response" in d)

    added = [d for d in datas if d["type"] == "response.output_item.added"]
    done = [d for d in datas if d["type"] == "response.output_item.done"]
    assert [(d["output_index"], d["item"]["id"]) for d in added] == \
        [(d["output_index"], d["item"]["id"]) for d in done]
    assert [d["output_index"] for d in done] == list(range(len(done)))
    for item_done in done:
        item = item_done["item"]
        pieces = [d["delta"] for d in datas if d.get("item_id") == item["id"]
                  and d["type"].endswith(".delta")]
        if item["type"] == "message":
            if shape != "truncated":  # see test_a_truncated_message_item_is_marked_incomplete
                assert item["status"] == "completed"
            assert item["content"][0]["text"] == "".join(pieces)
        elif item["type"] == "function_call":
            assert item["status"] == "completed"
            assert item["arguments"] == "".join(pieces) == '{"city":"Paris"}'
            assert item["call_id"] and item["name"].startswith("get_weather")
        elif item["type"] == "reasoning":
            assert [s["text"] for s in item["summary"]] == ["".join(pieces)]
            assert "".join(pieces) == "thinking about it"

    final = datas[-1]
    assert final["type"] == spec.end
    assert final["response"]["status"] == spec.end.removeprefix("response.")
    assert final["response"]["output"] == [d["item"] for d in done]
    usage = final["response"]["usage"]
    assert isinstance(usage["total_tokens"], int)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    assert isinstance(usage["input_tokens_details"]["cached_tokens"], int)
    assert isinstance(usage["output_tokens_details"]["reasoning_tokens"], int)
    assert [d["item"]["type"] for d in done] == spec.items


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("kind", kinds_for("chat"))
def test_a_chat_stream_has_one_id_and_ends_with_done(
        kind: str, shape: str, gateway: Any, api_key: Any, upstreams: Any) -> None:
    spec = SHAPES[shape]
    body = client_body("chat", model_for(kind), spec.turns, tools=spec.tools,
                       options={"include_usage": True}, stream=True)
    resp = raw_post(gateway, api_key.secret, "/chat/completions", body)
    assert resp.status_code == 200
    events = sse_events(resp.text)
    assert events[-1].data == "[DONE]"
    assert [e.data for e in events].count("[DONE]") == 1
    chunks = [e.json for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"]
                if ch["finish_reason"]]
    assert finishes == [spec.finish]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


# --- truncated answers: the message item -------------------------------------------------------


@pytest.mark.parametrize(("client", "kind", "mode"), grid(clients=("responses",)))
def test_a_truncated_message_item_is_marked_incomplete(
        client: str, kind: str, mode: str, sdk: openai.OpenAI) -> None:
    body = client_body(client, model_for(kind), (user("Go on [[fake finish=length]]"),),
                       stream=mode == "stream")
    answer = send_responses(sdk, body)
    assert answer.finish == "incomplete"
    assert [(item["type"], item["status"]) for item in answer.output] == [
        ("message", "incomplete")]


# --- reasoning carried across a tool call ---------------------------------------------------

@pytest.mark.parametrize(("client", "kind", "mode"), grid(clients=("responses",),
                                                         kinds=("anthropic",)))
def test_signed_thinking_is_replayed_to_anthropic_before_the_tool_call(
        client: str, kind: str, mode: str, sdk: openai.OpenAI, fake_upstream: Any) -> None:
    ask = "Weather? [[fake tool=get_weather reasoning=1]]"
    body = client_body(client, model_for(kind), (user(ask),), tools=(GET_WEATHER,),
                       options={"effort": "high"}, stream=mode == "stream")
    first = send_responses(sdk, body)
    reasoning, call = first.output
    assert reasoning["type"] == "reasoning" and call["type"] == "function_call"
    assert reasoning["encrypted_content"].startswith("tpr1.")  # Turnpike's sealed thinking

    result = {"type": "function_call_output", "call_id": call["call_id"], "output": RESULT}
    second = send_responses(sdk, {**body, "input": [*body["input"], reasoning, call, result]})
    assert second.text == DEFAULT_TEXT
    assert_paths(last_sent(fake_upstream).body, {
        "messages.1": {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "thinking about it", "signature": "sig_fake"},
            {"type": "tool_use", "id": call["call_id"], "name": "get_weather",
             "input": PARIS}]},
        "messages.2": {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call["call_id"], "content": RESULT}]},
    })


# --- Codex-style upstreams (kind openai-responses) ---------------------------------------------

CODEX = model_for("openai-responses")
LOOKUP_TOOL = {"type": "function", "name": "lookup",
               "description": "Tool used earlier in this conversation.",
               "parameters": {"type": "object", "properties": {}, "additionalProperties": True},
               "strict": False}


def codex_history(client: str) -> dict[str, Any]:
    """System text, assistant history, and a call of a tool the request does not declare."""
    if client == "responses":
        items = [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "What did the lookup say?"},
            # input_text in assistant history: Codex-style backends reject it
            {"role": "assistant", "content": [{"type": "input_text", "text": "Let me look."}]},
            {"type": "function_call", "call_id": "call_1", "name": "lookup",
             "arguments": '{"q":"x"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "found it"},
            {"role": "user", "content": "Summarise."},
        ]
        return {"model": CODEX, "input": items}
    return {"model": CODEX, "messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "What did the lookup say?"},
        {"role": "assistant", "content": "Let me look."},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "lookup", "arguments": '{"q":"x"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "found it"},
        {"role": "user", "content": "Summarise."},
    ]}


@pytest.mark.parametrize(("client", "kind", "mode"), grid(kinds=("openai-responses",)))
def test_a_codex_style_upstream_gets_a_request_it_accepts(
        client: str, kind: str, mode: str, sdk: openai.OpenAI, fake_upstream: Any) -> None:
    body = codex_history(client)
    if mode == "stream":
        body["stream"] = True
    answer = send(sdk, client, body)
    assert answer.text == DEFAULT_TEXT

    sent = last_sent(fake_upstream)
    assert sent.protocol == "responses"
    assert_paths(sent.body, {
        "stream": True,
        "store": False,
        "instructions": CODEX_DEFAULT_INSTRUCTIONS,
        "input.0.role": "developer",
        "input.0.content": [{"type": "input_text", "text": "Be terse."}],
        "input.2.role": "assistant",
        "input.2.content.0.type": "output_text",
        "input.2.content.0.text": "Let me look.",
        "tools": [LOOKUP_TOOL],
    })
    assert "reasoning.encrypted_content" in sent.body["include"]
    assert [t[0] for t in upstream_turns(sent)] == [
        "instructions", "developer", "user", "assistant", "tool_call", "tool_result", "user"]


@pytest.mark.parametrize(("client", "kind", "mode"), grid())
def test_a_model_name_with_an_effort_suffix_sets_the_effort_upstream(
        client: str, kind: str, mode: str, sdk: openai.OpenAI, fake_upstream: Any) -> None:
    # No upstream serves "m-<kind>-high": it means model m-<kind> with effort high.
    base = model_for(kind)
    body = client_body(client, f"{base}-high", (user("Think hard."),), stream=mode == "stream")
    assert send(sdk, client, body).text == DEFAULT_TEXT
    assert_paths(last_sent(fake_upstream).body, pick({
        "@chat": {"model": base, "reasoning_effort": "high"},
        "@responses": {"model": base, "reasoning.effort": "high"},
        "@anthropic": {"model": base, "thinking.budget_tokens": 16384},
        "@ollama": {"model": base, "think": "high"},
    }, client, kind))


@pytest.mark.parametrize("mode", MODES)
def test_raw_mode_sends_the_body_to_a_codex_style_upstream_untouched(
        mode: str, sdk: openai.OpenAI, fake_upstream: Any) -> None:
    body: dict[str, Any] = {"model": CODEX, "input": "hello there", "store": True,
                            "temperature": 0.5}
    if mode == "stream":
        body["stream"] = True
    answer = send_responses(sdk.with_options(default_headers={"X-Codex-Mode": "raw"}), body)
    assert answer.text == DEFAULT_TEXT
    sent = last_sent(fake_upstream)
    assert sent.body == body  # no store=false, instructions, include or forced stream


@pytest.mark.parametrize("client", CLIENTS)
def test_a_non_stream_client_gets_one_json_answer_aggregated_from_the_upstream_stream(
        client: str, gateway: Any, api_key: Any, upstreams: Any, fake_upstream: Any) -> None:
    body = client_body(client, CODEX, (user("Hello [[fake chunks=4]]"),))
    resp = raw_post(gateway, api_key.secret, client_path(client), body)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    answer = resp.json()
    if client == "responses":
        assert (answer["object"], answer["status"]) == ("response", "completed")
        [message] = answer["output"]
        assert message["content"][0]["text"] == "tok0 tok1 tok2 tok3 "
        assert answer["usage"]["output_tokens"] == 4
    else:
        assert answer["object"] == "chat.completion"
        assert answer["choices"][0]["message"]["content"] == "tok0 tok1 tok2 tok3 "
        assert answer["usage"]["completion_tokens"] == 4
    assert last_sent(fake_upstream).body["stream"] is True


XML_TEXT = 'Before <tool_use>{"name":"x"}</tool_use> after'




@pytest.mark.parametrize(("client", "kind", "mode"),
                         grid(kinds=("openai-responses",)))
def test_xml_tool_use_text_from_a_codex_style_upstream_is_removed(
        client: str, kind: str, mode: str, sdk: openai.OpenAI) -> None:
    # echo=1 answers with the text in 3 pieces, so the tags are split across deltas.
    body = client_body(client, CODEX, (user(XML_TEXT + " [[fake echo=1]]"),),
                       stream=mode == "stream")
    assert send(sdk, client, body).text == "Before  after"


# --- compaction by Turnpike (upstreams without native compaction) ------------------------------

HISTORY_TO_COMPACT = [
    {"role": "user", "content": "Plan a trip."},
    {"role": "assistant", "content": "Paris first."},
    {"role": "user", "content": "Then Rome."},
]


def summary_of(encrypted_content: str) -> str:
    assert encrypted_content.startswith("tpc1.")
    return json.loads(base64.urlsafe_b64decode(encrypted_content[5:]))["summary"]


@pytest.mark.parametrize("kind", ["anthropic", "ollama", "openai-chat"])
def test_compact_returns_one_turnpike_compaction_item(
        kind: str, sdk: openai.OpenAI, fake_upstream: Any) -> None:
    compacted = sdk.responses.compact(model=model_for(kind), input=HISTORY_TO_COMPACT)
    output = compacted.output
    assert len(output) == 3  # the two user messages, then the compaction item
    assert [item.type == "compaction" for item in output] == [False, False, True]
    assert summary_of(output[-1].encrypted_content) == DEFAULT_TEXT  # the model's summary

    sent = last_sent(fake_upstream)
    assert sent.protocol == {"openai-chat": "chat"}.get(kind, kind)
    [(role, prompt), *turns] = upstream_turns(sent)
    assert role == "system" and prompt.startswith("You are compacting a conversation")
    assert turns == [("user", "Plan a trip."), ("assistant", "Paris first."),
                     ("user", "Then Rome."),
                     ("user", "Write the handoff summary of the conversation above now.")]



@pytest.mark.parametrize("kind", ["anthropic", "ollama", "openai-chat", "openai"])
def test_compact_keeps_the_user_messages_as_typed_message_items(
        kind: str, sdk: openai.OpenAI) -> None:
    # "openai" (native compaction, relayed) is the reference shape.
    raw = sdk.responses.with_raw_response.compact(model=model_for(kind),
                                                  input=HISTORY_TO_COMPACT)
    kept = raw.http_response.json()["output"][:-1]
    assert [{k: v for k, v in item.items() if k != "id"} for item in kept] == [
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "Plan a trip."}]},
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "Then Rome."}]},
    ]


SUMMARY_MESSAGE = COMPACTION_PREAMBLE + DEFAULT_TEXT
COMPACTED_IN_UPSTREAM = {
    # Anthropic merges neighbouring user turns into one message.
    "@anthropic": {"messages.0": {"role": "user", "content": [
        {"type": "text", "text": SUMMARY_MESSAGE}, {"type": "text", "text": "Continue."}]}},
    "@ollama": {"messages.0": {"role": "user", "content": SUMMARY_MESSAGE},
                "messages.1": {"role": "user", "content": "Continue."}},
    "@chat": {"messages.0": {"role": "user", "content": SUMMARY_MESSAGE},
              "messages.1": {"role": "user", "content": "Continue."}},
    "@responses": {"input.0": {"type": "message", "role": "user",
                               "content": [{"type": "input_text", "text": SUMMARY_MESSAGE}]}},
}


@pytest.mark.parametrize(("client", "kind", "mode"), grid(clients=("responses",)))
def test_a_compaction_item_sent_back_reaches_the_upstream_as_its_summary(
        client: str, kind: str, mode: str, sdk: openai.OpenAI, fake_upstream: Any) -> None:
    # Compacted by Turnpike (an Anthropic upstream), then sent to each kind: a Turnpike
    # compaction item is readable after a model switch too, native-compaction kinds included.
    compacted = sdk.responses.compact(model=model_for("anthropic"), input=HISTORY_TO_COMPACT)
    item = compacted.output[-1].model_dump(exclude_none=True)
    body: dict[str, Any] = {"model": model_for(kind),
                            "input": [item, {"role": "user", "content": "Continue."}]}
    if mode == "stream":
        body["stream"] = True
    assert send_responses(sdk, body).text == DEFAULT_TEXT
    assert_paths(last_sent(fake_upstream).body, pick(COMPACTED_IN_UPSTREAM, client, kind))


@pytest.mark.parametrize(("client", "kind", "mode"),
                         grid(clients=("responses",), kinds=("anthropic", "ollama")))
def test_an_input_ending_in_a_compaction_trigger_yields_one_compaction_item(
        client: str, kind: str, mode: str, sdk: openai.OpenAI) -> None:
    body = {"model": model_for(kind), "input": [*HISTORY_TO_COMPACT,
                                                {"type": "compaction_trigger"}]}
    if mode == "stream":
        with sdk.responses.stream(**body) as stream:
            events = list(stream)
            response = stream.get_final_response()
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert [e.type for e in events] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.output_item.done",
                         "response.completed"]
    else:
        response = sdk.responses.create(**body)
    assert response.status == "completed"
    [item] = response.output
    assert item.type == "compaction"
    assert summary_of(item.encrypted_content) == DEFAULT_TEXT
