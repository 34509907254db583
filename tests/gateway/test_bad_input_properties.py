"""Property-based bad input (hypothesis): valid request bodies of both protocols, mutated
(any field replaced by JSON of another type, random nesting, strings with control
characters, random headers), must never crash Turnpike.

In process (fast, many examples): the client-side checks and translation —
``validate.check_fields``, ``responses.parse_request`` / ``chat.parse_request``, the
builders for every upstream protocol, the Codex fixes and the client encoders — raise
nothing but ``validate.Invalid`` or ``TranslationError`` (both 400s), and whatever they
build serialises.

Over HTTP (bounded): the same bodies and random headers against a real gateway process,
on passthrough and translated routes: no 5xx, every answer complete and the connection
closed within a bound, and the process still serving afterwards.

Examples are derandomized, so a run is reproducible (CI sees the same cases every time).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import exchange, pipeline, policy, validate
from gateway.providers.protocols import PROTOCOLS
from gateway.providers.registry import FORWARDED_HEADERS
from gateway.translate import canonical as c
from gateway.translate import chat, codex, responses
from tests.gateway.test_bad_input import (
    CHAT_ONLY_MODEL,
    CLAUDE_MODEL,
    CODEX_MODEL,
    OLLAMA_MODEL,
    PATHS,
    raw_post,
    translated,  # noqa: F401 (a fixture)
)

# --- strategies -----------------------------------------------------------------------------

# Strings a client can send: any text, and often control characters and JSON-ish or
# Turnpike-meaningful fragments.
_TRICKY = ["", " ", "\x00", "\n", "\r\n", "\x7f", "\u2028", "data: [DONE]", "tpr1.", "tpc1.",
           "tpr1.eyJ0ZXh0Ijo1fQ==", "tpc1.eyJzdW1tYXJ5Ijo1fQ==", "data:image/png;base64,",
           "data:application/pdf;base64,JVBE", "http://x/y.png", "system", "user",
           "assistant", "tool", "developer", "function", "message", "function_call",
           "function_call_output", "custom_tool_call", "custom_tool_call_output",
           "reasoning", "compaction", "compaction_trigger", "input_text", "output_text",
           "input_image", "input_file", "image_url", "file", "text", "refusal", "namespace",
           "custom", "json_schema", "json_object", "auto", "none", "required", "high",
           "xhigh", "minimal", "__"]
texts = st.one_of(st.text(max_size=12), st.sampled_from(_TRICKY))
# What orjson.loads can produce: 64-bit integers (unsigned too), finite doubles.
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([0, 1, -1, 2**31, 2**63 - 1, -(2**63), 2**64 - 1]),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
# Keys the translators read, so that random objects often look like items, parts, tools.
_KEYS = ["type", "role", "content", "name", "call_id", "arguments", "input", "output", "id",
         "summary", "encrypted_content", "namespace", "tool_calls", "function", "custom",
         "image_url", "url", "file", "file_data", "file_id", "filename", "text", "detail",
         "refusal", "tool_call_id", "tools", "format", "parameters", "description", "strict",
         "json_schema", "schema", "effort", "include_usage", "function_call"]
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(texts, inner, max_size=4),
                            st.dictionaries(st.sampled_from(_KEYS), inner, max_size=6)),
    max_leaves=12,
)

RESPONSES_BODY: dict[str, Any] = {
    "model": "gpt-5",
    "instructions": "Be brief.",
    "input": [
        {"type": "message", "role": "developer", "content": "rules"},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "look"},
            {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=",
             "detail": "high"},
            {"type": "input_file", "file_data": "data:application/pdf;base64,JVBE",
             "filename": "a.pdf"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "t"}],
         "content": None, "encrypted_content": "enc"},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "ok", "annotations": []}]},
        {"type": "function_call", "call_id": "call_1", "name": "shell",
         "arguments": "{\"cmd\":[\"ls\"]}", "namespace": "tools"},
        {"type": "function_call_output", "call_id": "call_1", "output": "a.txt"},
        {"type": "custom_tool_call", "call_id": "call_2", "name": "apply_patch",
         "input": "*** Begin Patch"},
        {"type": "custom_tool_call_output", "call_id": "call_2",
         "output": [{"type": "input_text", "text": "done"}]},
        {"type": "compaction", "id": "cmp_1", "encrypted_content": "opaque"},
        {"role": "user", "content": "go on"},
    ],
    "tools": [
        {"type": "function", "name": "shell", "description": "run",
         "parameters": {"type": "object", "properties": {"cmd": {"type": "array"}}},
         "strict": False},
        {"type": "custom", "name": "apply_patch", "description": "patch",
         "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}},
        {"type": "namespace", "name": "tools", "description": "ns",
         "tools": [{"type": "function", "name": "shell", "parameters": {"type": "object"}}]},
        {"type": "web_search", "external_web_access": False},
    ],
    "tool_choice": "auto",
    "parallel_tool_calls": True,
    "reasoning": {"effort": "high", "summary": "auto"},
    "include": ["reasoning.encrypted_content"],
    "text": {"format": {"type": "json_schema", "name": "n", "schema": {"type": "object"},
                        "strict": True}, "verbosity": "low"},
    "max_output_tokens": 64,
    "temperature": 0.5,
    "top_p": 0.9,
    "store": False,
    "stream": False,
    "prompt_cache_key": "session-1",
    "metadata": {"k": "v"},
    "user": "u",
}

CHAT_BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "http://x/y.png", "detail": "low"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE",
                                      "filename": "a.pdf"}}]},
        {"role": "assistant", "content": "calling", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
            {"id": "call_2", "type": "custom",
             "custom": {"name": "apply_patch", "input": "*** Begin Patch"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "assistant", "content": None,
         "function_call": {"name": "legacy", "arguments": "{}"}},
        {"role": "function", "name": "legacy", "content": "x"},
        {"role": "assistant", "refusal": "no"},
        {"role": "user", "content": "thanks"},
    ],
    "tools": [
        {"type": "function", "function": {"name": "get_weather", "description": "w",
                                          "parameters": {"type": "object"}, "strict": True}},
        {"type": "custom", "custom": {"name": "apply_patch", "description": "p"}},
    ],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": False,
    "max_tokens": 64,
    "max_completion_tokens": 32,
    "temperature": 1.0,
    "top_p": 1.0,
    "n": 1,
    "stop": ["END"],
    "presence_penalty": 0.5,
    "frequency_penalty": -0.5,
    "seed": 7,
    "reasoning_effort": "low",
    "response_format": {"type": "json_schema",
                        "json_schema": {"name": "n", "schema": {"type": "object"}}},
    "stream": False,
    "stream_options": {"include_usage": True},
    "user": "u",
    "metadata": {"k": "v"},
    "logit_bias": {"50256": -100},
    "verbosity": "low",
}
BASES = {"responses": RESPONSES_BODY, "chat": CHAT_BODY}


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in ``value`` a mutation can replace (not the root)."""
    out: list[tuple[Any, ...]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            out.append((*prefix, key))
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out.append((*prefix, index))
            out += _paths(item, (*prefix, index))
    return out


MUTABLE = {name: _paths(body) for name, body in BASES.items()}


def _set(body: Any, path: tuple[Any, ...], value: Any) -> None:
    for step in path[:-1]:
        body = body[step]
    body[path[-1]] = value


@st.composite
def mutated(draw: st.DrawFn, protocol: str, least: int = 1) -> dict[str, Any]:
    """A valid body of ``protocol`` with ``least`` to four places replaced by random JSON
    (or by the original value nested in lists), and perhaps an extra field."""
    body = copy.deepcopy(BASES[protocol])
    paths = MUTABLE[protocol]
    for _ in range(draw(st.integers(least, 4))):
        path = draw(st.sampled_from(paths))
        try:
            current: Any = body
            for step in path:
                current = current[step]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation replaced a parent
        if draw(st.integers(0, 9)) == 0:
            value: Any = current
            for _ in range(draw(st.integers(1, 8))):
                value = [value]
        else:
            value = draw(json_values)
        _set(body, path, value)
    if draw(st.booleans()):
        body[draw(st.sampled_from([*BASES["responses"], *BASES["chat"], "x_extra"]))] = \
            draw(json_values)
    return body


# --- in process: checks and translation -----------------------------------------------------

def _exercise(operation: str, payload: dict[str, Any]) -> None:
    """Everything Turnpike does with a client body before and around the upstream call,
    short of I/O. Only the two client-error exceptions may escape."""
    policy.requested_max_tokens(payload)
    pipeline.first_user_text(payload)
    exchange.has_compaction_trigger(payload)
    try:
        validate.check_fields(operation, payload)
    except validate.Invalid as exc:
        assert exc.status == 400 and exc.message
        return
    try:
        req = (chat.parse_request if operation == "chat" else responses.parse_request)(payload)
    except c.TranslationError:
        return
    # The Responses client echo and the client encoders.
    encoder: Any
    if operation == "chat":
        encoder = chat.ChatEncoder("m", req.include_usage)
    else:
        echo = {k: payload.get(k) for k in ("instructions", "tools", "tool_choice",
                                            "parallel_tool_calls", "max_output_tokens",
                                            "previous_response_id", "reasoning", "store",
                                            "temperature", "top_p", "text", "metadata",
                                            "user") if payload.get(k) is not None}
        encoder = responses.ResponsesEncoder("m", echo)
    encoder.feed(c.Start())
    encoder.feed(c.TextDelta("hi"))
    encoder.close()
    orjson.dumps(encoder.final())
    # Every upstream protocol's body.
    for protocol, build in ((p.name, p.build) for p in PROTOCOLS.values() if p.build):
        one = copy.deepcopy(req)
        try:
            if protocol != "responses":
                c.lower_tools(one)
            body = build(one, "upstream-model")
        except c.TranslationError:
            continue
        orjson.dumps(body)
        if protocol == "responses":
            orjson.dumps(codex.fix_request(body))
    if operation != "chat":
        # Same protocol: the client's own fields go on, fixed for Codex-style upstreams.
        orjson.dumps(codex.fix_request({**payload, "model": "upstream-model"}))


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(payload=mutated("responses"))
def test_responses_bodies_translate_or_are_refused_as_client_errors(payload):
    _exercise("responses", payload)


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(payload=mutated("chat"))
def test_chat_bodies_translate_or_are_refused_as_client_errors(payload):
    _exercise("chat", payload)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(payload=mutated("responses"))
def test_compact_bodies_translate_or_are_refused_as_client_errors(payload):
    _exercise("compact", payload)


# --- over HTTP: a real gateway process --------------------------------------------------------

ROUTES = {"responses": ["gpt-5", CHAT_ONLY_MODEL, CLAUDE_MODEL, CODEX_MODEL, OLLAMA_MODEL],
          "compact": ["gpt-5", CLAUDE_MODEL, CODEX_MODEL, OLLAMA_MODEL],
          "chat": ["gpt-4o-mini", CLAUDE_MODEL, CODEX_MODEL, OLLAMA_MODEL]}
HEADER_NAMES = [*FORWARDED_HEADERS, b"x-codex-mode", b"accept", b"x-junk"]
# Header values as bytes: anything but CR and LF, which would end the header line (the
# concrete tests cover a lone CR).
header_values = st.one_of(
    st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.sampled_from([b"raw", b"\x00", b"\x7f", b"a\tb", b"\xff\xfe"]),
)
STREAM_ENDS = {"responses": (b'"response.completed"', b'"response.failed"',
                             b'"response.incomplete"'),
               "chat": (b"data: [DONE]", b'data: {"error"')}


@st.composite
def http_requests(draw: st.DrawFn, operation: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """(body, extra headers): a mutated body on one of the routes, sometimes with a field
    nested hundreds of levels deep, and random forwarded headers."""
    body = draw(mutated("chat" if operation == "chat" else "responses", least=0))
    # (sampled_from rather than integers or booleans: hypothesis favours small numbers
    # and False, which would mostly keep the mutated model and skip streams)
    if draw(st.sampled_from([True, True, True, True, False])):
        body["model"] = draw(st.sampled_from(ROUTES[operation]))
    if operation != "compact" and draw(st.sampled_from([True, True, True, False])):
        body["stream"] = draw(st.sampled_from([True, True, False]))
    deep = draw(st.sampled_from([0, 0, 0, 0, 130, 300, 1000]))
    if deep:
        body[draw(st.sampled_from(["tools", "metadata", "input", "messages", "x_extra"]))] = \
            "DEEP"
    content = json.dumps(body).encode()  # any integer size, as a client could send
    content = content.replace(b'"DEEP"', b"[" * deep + b"]" * deep)
    if draw(st.integers(0, 19)) == 19:  # not JSON, or JSON cut short
        content = draw(st.sampled_from([draw(st.binary(max_size=40)),
                                        content[:draw(st.integers(0, len(content)))]]))
    headers = draw(st.lists(st.tuples(st.sampled_from(HEADER_NAMES), header_values),
                            max_size=2)) if draw(st.integers(0, 2)) == 0 else []
    return content, headers


def _answers_properly(gateway, secret: str, operation: str, content: bytes,
                      headers: list[tuple[bytes, bytes]]) -> None:
    auth = (b"authorization", b"Bearer " + secret.encode())
    status, data = raw_post(gateway.url, "/v1" + PATHS[operation], [auth, *headers], content,
                            timeout=15)
    assert status < 500, (status, data[:500])
    if status == 200 and data.startswith((b"event:", b"data:")):
        # A stream ends with its protocol's end, or its error event: never just stops.
        tail = data.rstrip()[-4000:]
        ends = STREAM_ENDS["chat" if operation == "chat" else "responses"]
        assert any(end in tail for end in ends), data[-500:]
    elif status == 400 and data.startswith(b"{"):
        error = orjson.loads(data)["error"]
        assert error["type"] == "invalid_request_error" and error["message"]


_E2E = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.django_db(transaction=True)
@pytest.mark.e2e
@pytest.mark.usefixtures("translated")
@pytest.mark.parametrize("operation", ["responses", "chat", "compact"])
def test_a_gateway_answers_any_request_without_a_5xx_or_a_hang(gateway, api_key, operation):
    @_E2E
    @given(request=http_requests(operation))
    def send(request: tuple[bytes, list[tuple[bytes, bytes]]]) -> None:
        _answers_properly(gateway, api_key.secret, operation, *request)

    send()
    state = httpx.get(gateway.url + "/_gateway/status", timeout=5).json()
    assert state["ok"] is True
