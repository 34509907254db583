"""Bad client input, against a real gateway: every answer is a 400 naming what was wrong,
never a 5xx, and never a stream left open (issue 10, defects 1 and 7).

Each case here failed before the checks in ``gateway/validate.py`` and the stream safety
net in ``pipeline.handle``: numbers the limiter reserved from (a negative ``max_tokens``
locked the tenant), JSON nested too deep to serialise again (a 500, or a stream that hung
after ``response.created``), ``"include": 5`` (TypeError), control bytes in a forwarded
header (aiohttp refused to send them).
"""

from __future__ import annotations

import http.server
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest

from billing.management.commands.tenant import tenant_money
from billing.models import ModelPrice, UsageLog
from billing.services import tenant_topup
from gateway import pipeline, respond
from gateway.errors import GatewayError, UpstreamError
from gateway.providers.registry import FORWARDED_HEADERS
from gateway.services import upstream_create
from gateway.translate.canonical import seal_compaction
from gateway.validate import MAX_DEPTH, MAX_TOKENS_CAP
from tests.conftest import UPSTREAM_SECRET, wait_for_usage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

# A stream that is still open this long after the request was sent counts as a hang.
ANSWER_TIMEOUT = 10.0

PATHS = {"responses": "/responses", "compact": "/responses/compact",
         "chat": "/chat/completions"}
BODIES: dict[str, dict[str, Any]] = {
    "responses": {"model": "gpt-5", "input": "hi"},
    "compact": {"model": "gpt-5", "input": "hi"},
    "chat": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
}
# Models on translated routes (created by the ``translated`` fixture).
CHAT_ONLY_MODEL = "chat-only-model"  # openai-chat upstream: Responses clients translated
CLAUDE_MODEL = "claude-x"  # anthropic upstream: both protocols translated
CODEX_MODEL = "codex-x"  # openai-responses upstream: Codex fixes, Chat clients translated
OLLAMA_MODEL = "ollama-x"  # ollama upstream: both protocols translated


@pytest.fixture
def translated(fake_upstream, upstream) -> None:
    upstream_create(name="chat-only", kind="openai-chat", base_url=fake_upstream.openai_url,
                    models=[CHAT_ONLY_MODEL], api_keys=[UPSTREAM_SECRET])
    upstream_create(name="claude", kind="anthropic", base_url=fake_upstream.url,
                    models=[CLAUDE_MODEL], api_keys=[UPSTREAM_SECRET])
    upstream_create(name="codex", kind="openai-responses", base_url=fake_upstream.openai_url,
                    models=[CODEX_MODEL], api_keys=[UPSTREAM_SECRET])
    upstream_create(name="ollama", kind="ollama", base_url=fake_upstream.url,
                    models=[OLLAMA_MODEL], api_keys=[UPSTREAM_SECRET])


def call(gateway, secret: str, operation: str, body: dict[str, Any] | bytes,
         headers: dict[str, str] | None = None) -> tuple[httpx.Response, bytes]:
    """POST and read the whole answer (stream or not) within ANSWER_TIMEOUT."""
    # The standard library writes integers of any size (orjson stops at 64 bits).
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    started = time.monotonic()
    with httpx.stream("POST", gateway.base_url + PATHS[operation], content=content,
                      headers={"Authorization": f"Bearer {secret}",
                               "Content-Type": "application/json", **(headers or {})},
                      timeout=httpx.Timeout(ANSWER_TIMEOUT)) as resp:
        data = resp.read()
    assert time.monotonic() - started < ANSWER_TIMEOUT
    return resp, data


def assert_400(resp: httpx.Response, data: bytes, param: str | None) -> dict[str, Any]:
    assert resp.status_code == 400, data[:500]
    assert resp.headers["content-type"] == "application/json"
    error = orjson.loads(data)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    assert error["message"]
    return error


# --- numbers and types ------------------------------------------------------------------

BAD_FIELDS: list[tuple[str, str, Any, str]] = [
    # (operation, field, value, param)
    ("chat", "max_tokens", -1_000_000_000, "max_tokens"),
    ("chat", "max_tokens", 0, "max_tokens"),
    ("chat", "max_tokens", MAX_TOKENS_CAP + 1, "max_tokens"),
    ("chat", "max_tokens", 10**30, "max_tokens"),  # parsed as a float: not an integer
    ("chat", "max_tokens", 16.5, "max_tokens"),
    ("chat", "max_tokens", 16.0, "max_tokens"),
    ("chat", "max_tokens", "16", "max_tokens"),
    ("chat", "max_tokens", True, "max_tokens"),
    ("chat", "max_completion_tokens", -1, "max_completion_tokens"),
    ("chat", "max_output_tokens", -1, "max_output_tokens"),  # the limiter reads it anywhere
    ("responses", "max_output_tokens", -1_000_000_000, "max_output_tokens"),
    ("responses", "max_output_tokens", 1e308, "max_output_tokens"),
    ("responses", "max_output_tokens", [16], "max_output_tokens"),
    ("responses", "max_tokens", -5, "max_tokens"),
    ("compact", "max_output_tokens", -5, "max_output_tokens"),
    ("chat", "temperature", 2.5, "temperature"),
    ("chat", "temperature", -0.1, "temperature"),
    ("chat", "temperature", 1e308, "temperature"),
    ("responses", "temperature", "hot", "temperature"),
    ("responses", "temperature", False, "temperature"),
    ("chat", "top_p", 1.5, "top_p"),
    ("responses", "top_p", -1, "top_p"),
    ("chat", "n", 0, "n"),
    ("chat", "n", 1000, "n"),
    ("chat", "n", 2.0, "n"),
    ("chat", "presence_penalty", 3, "presence_penalty"),
    ("chat", "frequency_penalty", -2.5, "frequency_penalty"),
    ("chat", "frequency_penalty", "0", "frequency_penalty"),
    ("chat", "top_logprobs", 21, "top_logprobs"),
    ("responses", "top_logprobs", -1, "top_logprobs"),
    ("chat", "logprobs", 5, "logprobs"),
    ("chat", "seed", 2**63, "seed"),
    ("chat", "seed", -(2**63) - 1, "seed"),
    ("chat", "seed", 1.5, "seed"),
    ("chat", "logit_bias", {"50256": 101}, "logit_bias.50256"),
    ("chat", "logit_bias", [1], "logit_bias"),
    ("responses", "max_tool_calls", 0, "max_tool_calls"),
    ("responses", "max_tool_calls", -3, "max_tool_calls"),
    ("chat", "stream_options", {"include_usage": "yes"}, "stream_options.include_usage"),
    ("chat", "stream_options", True, "stream_options"),
    ("chat", "reasoning_effort", 5, "reasoning_effort"),
    ("chat", "reasoning_effort", {"effort": "high"}, "reasoning_effort"),
    ("responses", "reasoning", {"effort": 5}, "reasoning.effort"),
    ("responses", "reasoning", {"effort": ["high"]}, "reasoning.effort"),
    ("responses", "reasoning", "high", "reasoning"),
    ("chat", "metadata", {"a": 1}, "metadata.a"),
    ("responses", "metadata", [1], "metadata"),
    # list and object fields the translators iterate
    ("responses", "include", 5, "include"),
    ("responses", "include", [5], "include"),
    ("responses", "include", "reasoning.encrypted_content", "include"),
    ("responses", "input", 5, "input"),
    ("responses", "input", {"role": "user"}, "input"),
    ("compact", "input", 5, "input"),
    ("responses", "tools", 5, "tools"),
    ("responses", "tools", {"type": "function"}, "tools"),
    ("chat", "tools", "x", "tools"),
    ("responses", "tool_choice", 5, "tool_choice"),
    ("chat", "tool_choice", ["auto"], "tool_choice"),
    ("responses", "text", "json", "text"),
    ("responses", "text", {"format": "json"}, "text.format"),
    ("responses", "text", {"verbosity": 1}, "text.verbosity"),
    ("responses", "instructions", ["be brief"], "instructions"),
    ("chat", "messages", {"role": "user", "content": "hi"}, "messages"),
    ("chat", "stop", 5, "stop"),
    ("chat", "stop", ["a", 5], "stop"),
    ("chat", "response_format", "json", "response_format"),
    ("chat", "parallel_tool_calls", "yes", "parallel_tool_calls"),
    ("responses", "store", 1, "store"),
    ("responses", "previous_response_id", 5, "previous_response_id"),
]


def test_a_field_of_the_wrong_type_or_range_is_a_400_naming_it(gateway, upstream, api_key):
    # One test for the whole table (a database flush per case would cost a second each);
    # every case is tried and all mismatches reported together.
    wrong = []
    for operation, field, value, param in BAD_FIELDS:
        resp, data = call(gateway, api_key.secret, operation,
                          {**BODIES[operation], field: value})
        try:
            error = assert_400(resp, data, param)
            assert error["code"] == "invalid_request"
            assert param in error["message"]
        except (AssertionError, ValueError, KeyError) as exc:
            wrong.append(f"{operation} {field}={json.dumps(value)[:40]}: {exc}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("stream", [False, True])
def test_a_bad_field_is_refused_the_same_on_a_stream_and_a_translated_route(
        gateway, api_key, translated, stream):
    for operation, model in (("responses", CHAT_ONLY_MODEL), ("chat", CLAUDE_MODEL),
                             ("chat", CODEX_MODEL), ("responses", CODEX_MODEL)):
        body = {**BODIES[operation], "model": model, "stream": stream}
        fields = [("max_tokens", -1), ("temperature", 9), ("tools", 5)]
        fields.append(("include", 5) if operation == "responses" else ("stop", 5))
        for field, value in fields:
            resp, data = call(gateway, api_key.secret, operation, {**body, field: value})
            assert_400(resp, data, field)


MALFORMED_ITEMS: list[tuple[str, dict[str, Any]]] = [
    # (operation, fields): items whose inner fields crashed a translator or the Codex fixes
    ("responses", {"input": [{"type": "function_call", "call_id": "c", "name": ["x"],
                              "arguments": "{}"}]}),
    ("responses", {"input": [{"type": "reasoning", "summary": 5}]}),
    ("responses", {"input": [{"type": "reasoning", "summary": [], "encrypted_content": [1]}]}),
    ("responses", {"input": [{"type": "compaction", "encrypted_content": {"a": 1}}]}),
    ("responses", {"input": [{"role": "user", "content": [
        {"type": "input_file", "file_data": {"a": 1}}]}]}),
    ("responses", {"tools": [{"type": "namespace", "name": "ns", "tools": 5}]}),
    ("responses", {"tools": [{"type": "function", "name": {"a": 1}}]}),
    ("chat", {"messages": [{"role": "assistant", "tool_calls": 5}]}),
    ("chat", {"messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": True}]}]}),
    ("chat", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": ["x"]}}]}]}),
    ("chat", {"tools": [{"type": "custom", "custom": ["apply_patch"]}]}),
    ("chat", {"response_format": {"type": "json_schema", "json_schema": ["x"]}}),
]


def test_malformed_items_on_translated_routes_are_400s(gateway, api_key, translated):
    wrong = []
    for operation, fields in MALFORMED_ITEMS:
        param = next(iter(fields))
        models = [CLAUDE_MODEL, CODEX_MODEL, OLLAMA_MODEL] + (
            [CHAT_ONLY_MODEL] if operation == "responses" else [])
        for model in models:
            body = {**BODIES[operation], "model": model, **fields}
            resp, data = call(gateway, api_key.secret, operation, body)
            try:
                assert_400(resp, data, param)
            except (AssertionError, ValueError, KeyError) as exc:
                wrong.append(f"{model} {json.dumps(fields)[:60]}: {exc}")
    assert not wrong, "\n".join(wrong)


def test_the_error_says_what_is_allowed(gateway, upstream, api_key):
    resp, data = call(gateway, api_key.secret, "chat",
                      {**BODIES["chat"], "max_tokens": -1_000_000_000})
    message = assert_400(resp, data, "max_tokens")["message"]
    assert message == (f"'max_tokens' must be an integer from 1 to {MAX_TOKENS_CAP}; "
                       "got -1000000000.")
    resp, data = call(gateway, api_key.secret, "responses",
                      {**BODIES["responses"], "temperature": "hot"})
    message = assert_400(resp, data, "temperature")["message"]
    assert message == "'temperature' must be a number from 0 to 2; got a string."
    row = wait_for_usage(resp.headers["x-request-id"])
    assert (row.status_code, row.error_code) == (400, "invalid_request")


@pytest.mark.parametrize(("operation", "fields"), [
    ("chat", {"max_tokens": 1, "temperature": 0, "top_p": 1, "n": 1, "seed": -(2**63),
              "presence_penalty": -2, "frequency_penalty": 2.0, "logprobs": True,
              "top_logprobs": 20, "logit_bias": {"50256": -100}, "stop": ["x"],
              "stream_options": None, "metadata": {"a": "b"}, "reasoning_effort": "low"}),
    ("chat", {"max_tokens": MAX_TOKENS_CAP, "max_completion_tokens": None, "temperature": 2,
              "seed": 2**63 - 1, "stop": "x", "user": "u", "tool_choice": "auto"}),
    ("chat", {"max_tokens": None, "temperature": None, "top_p": None, "n": None,
              "stream": True, "stream_options": {"include_usage": True}}),
    ("responses", {"max_output_tokens": 16, "temperature": 1.5, "top_p": 0.0,
                   "reasoning": {"effort": "high", "summary": None},
                   "include": ["reasoning.encrypted_content"], "text": {"verbosity": "low"},
                   "metadata": {}, "max_tool_calls": 3, "tools": [], "store": False}),
    ("responses", {"max_output_tokens": None, "reasoning": None, "include": None,
                   "stream": True}),
    ("compact", {"instructions": "be brief", "tools": [], "parallel_tool_calls": False}),
])
def test_values_at_the_edges_and_nulls_are_accepted(gateway, upstream, api_key, operation,
                                                    fields):
    resp, data = call(gateway, api_key.secret, operation, {**BODIES[operation], **fields})
    assert resp.status_code == 200, data[:500]


def test_a_negative_max_tokens_is_refused_and_does_not_lock_the_tenant(gateway, upstream,
                                                                       make_key):
    """Defect 1: the limiter reserved from -1e9 and refunded the difference, leaving the
    tenant's reservation so large that every key got 429 quota_exceeded afterwards."""
    ModelPrice.objects.create(model="gpt-4o-mini", input_per_million=Decimal("1"),
                              output_per_million=Decimal("2"))
    ModelPrice.objects.create(model="gpt-5", output_per_million=Decimal("2"))
    made = make_key()
    other = make_key(name="second key of the tenant")
    tenant_topup(tenant=made.key.tenant, amount=Decimal("10"))
    for operation, field, value in (("chat", "max_tokens", -1_000_000_000),
                                    ("chat", "max_completion_tokens", -10**30),
                                    ("responses", "max_output_tokens", -1_000_000_000),
                                    ("responses", "max_tokens", -1)):
        for stream in (False, True):
            body = {**BODIES[operation], field: value, "stream": stream}
            resp, data = call(gateway, made.secret, operation, body)
            assert_400(resp, data, field)
    # Nothing was reserved, so nothing is held (the limiter's view, from Redis)...
    assert tenant_money(made.key.tenant)["reserved"] == "0"
    # ...and every key of the tenant is still served.
    for secret in (made.secret, other.secret):
        for operation in ("chat", "responses"):
            resp, data = call(gateway, secret, operation, BODIES[operation])
            assert resp.status_code == 200, data[:300]


# --- JSON nested too deep ---------------------------------------------------------------

def with_deep_tool(operation: str, model: str, depth: int, stream: bool) -> bytes:
    """A body nesting ``depth`` levels in all, the deep part in a tool's JSON schema (which
    Turnpike echoes into response objects and rewrites into other protocols). Written as
    bytes: neither orjson nor Python's recursion would make the deepest ones."""
    tool: dict[str, Any] = (
        {"type": "function", "name": "f", "parameters": "DEEP"}
        if operation != "chat" else
        {"type": "function", "function": {"name": "f", "parameters": "DEEP"}})
    body = orjson.dumps({**BODIES[operation], "model": model, "stream": stream,
                         "tools": [tool]})
    lists = depth - (3 if operation != "chat" else 4)  # levels above the schema
    return body.replace(b'"DEEP"', b"[" * lists + b"]" * lists)


DEEP_ROUTES = [("responses", "gpt-5"), ("responses", CHAT_ONLY_MODEL),
               ("responses", CLAUDE_MODEL), ("responses", CODEX_MODEL),
               ("responses", OLLAMA_MODEL), ("chat", "gpt-4o-mini"), ("chat", CLAUDE_MODEL),
               ("chat", CODEX_MODEL), ("chat", OLLAMA_MODEL), ("compact", "gpt-5"),
               ("compact", CLAUDE_MODEL)]


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 300, 1000])
@pytest.mark.parametrize("stream", [False, True])
def test_json_nested_too_deep_is_a_400_on_every_route(gateway, api_key, translated, depth,
                                                      stream):
    for operation, model in DEEP_ROUTES:
        if operation == "compact" and stream:
            continue
        resp, data = call(gateway, api_key.secret, operation,
                          with_deep_tool(operation, model, depth, stream))
        error = assert_400(resp, data, "tools")
        assert f"more than {MAX_DEPTH} levels" in error["message"]


def test_json_nested_to_the_limit_is_served_on_every_route(gateway, api_key, translated):
    for operation, model in DEEP_ROUTES:
        for stream in ((False,) if operation == "compact" else (False, True)):
            resp, data = call(gateway, api_key.secret, operation,
                              with_deep_tool(operation, model, MAX_DEPTH, stream))
            assert resp.status_code == 200, (operation, model, stream, data[:300])


def test_json_deeper_than_the_parser_takes_is_invalid_json(gateway, upstream, api_key):
    resp, data = call(gateway, api_key.secret, "responses",
                      b'{"model": "gpt-5", "input": ' + b"[" * 1100 + b"]" * 1100 + b"}")
    assert resp.status_code == 400
    assert orjson.loads(data)["error"]["code"] == "invalid_json"


# --- compaction on native upstreams (found by the property tests) -----------------------

def test_compact_reaches_a_codex_style_upstream_and_opens_turnpikes_own_items(
        gateway, api_key, translated, fake_upstream):
    """/v1/responses/compact on an openai-responses upstream, or with an item Turnpike
    sealed itself, went down the translated path, which has no compact form: a 500."""
    sealed = {"type": "compaction", "id": "cmp_1",
              "encrypted_content": seal_compaction("the user wants a haiku")}
    for model in (CODEX_MODEL, "gpt-5"):
        for items in ("hi", [{"role": "user", "content": "hi"}, sealed]):
            fake_upstream.clear()
            resp, data = call(gateway, api_key.secret, "compact",
                              {"model": model, "input": items})
            assert resp.status_code == 200, (model, data[:300])
            assert orjson.loads(data)["object"] == "response.compaction"
            [sent] = fake_upstream.requests()
            assert sent["path"].endswith("/responses/compact")
            assert "tpc1." not in json.dumps(sent["body"])
            if items != "hi":
                assert "the user wants a haiku" in json.dumps(sent["body"])


# --- headers ----------------------------------------------------------------------------

def raw_post(url: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes,
             timeout: float = ANSWER_TIMEOUT, method: bytes = b"POST") -> tuple[int, bytes]:
    """One HTTP/1.1 request written byte for byte (httpx refuses control bytes in header
    values); returns (status, body) once the server has closed the connection. A server
    that leaves the connection open past ``timeout`` raises TimeoutError."""
    host, port = url.removeprefix("http://").split(":")
    head = [method + b" " + path.encode() + b" HTTP/1.1", b"Host: " + host.encode(),
            b"Connection: close", b"Content-Type: application/json",
            b"Content-Length: " + str(len(body)).encode()]
    head += [name + b": " + value for name, value in headers]
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        chunks = []
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    head_bytes, _, rest = raw.partition(b"\r\n\r\n")
    status = int(head_bytes.split(b"\r\n", 1)[0].split()[1])
    if b"\r\ntransfer-encoding: chunked" in head_bytes.lower():
        rest = _dechunk(rest)
    return status, rest


def _dechunk(data: bytes) -> bytes:
    out = []
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out.append(data[:size])
        data = data[size + 2:]
    return b"".join(out)


CONTROL_BYTES = [b"\x00", b"\x01", b"\x1b", b"\x7f", b"\r"]


@pytest.mark.parametrize("header", [h.decode() for h in FORWARDED_HEADERS])
@pytest.mark.parametrize("operation", ["responses", "chat"])
def test_a_control_byte_in_a_forwarded_header_is_a_400_naming_it(gateway, upstream, api_key,
                                                                  header, operation):
    auth = (b"authorization", b"Bearer " + api_key.secret.encode())
    for byte in CONTROL_BYTES:
        status, data = raw_post(gateway.url, "/v1" + PATHS[operation],
                                [auth, (header.encode(), b"a" + byte + b"b")],
                                orjson.dumps(BODIES[operation]))
        if "_" in header:  # daphne drops these names (CVE-2015-0219): they never arrive
            assert status == 200 or (status == 400 and not data.startswith(b"{")), status
            continue
        assert status == 400, (byte, data[:300])
        if data.startswith(b"{"):  # else refused by the HTTP server before Turnpike
            error = orjson.loads(data)["error"]
            assert error["param"] == f"header:{header}" and header in error["message"]
    # A tab is allowed in a header value, and other bytes over 0x7f pass as they are.
    status, data = raw_post(gateway.url, "/v1" + PATHS[operation],
                            [auth, (header.encode(), b"a\tb\xe9")],
                            orjson.dumps(BODIES[operation]))
    assert status == 200, data[:300]


def test_a_nul_in_stored_strings_keeps_the_usage_row(gateway, upstream, api_key):
    """The model name and user agent go into the usage row; a NUL cannot go into a
    PostgreSQL text column, and one such row would fail its whole batch."""
    auth = (b"authorization", b"Bearer " + api_key.secret.encode())
    status, data = raw_post(gateway.url, "/v1/chat/completions",
                            [auth], orjson.dumps({**BODIES["chat"], "model": "gpt\x00x\n"}))
    assert status == 404
    status, _ = raw_post(gateway.url, "/v1/models/a%00b", [auth], b"", method=b"GET")
    assert status == 404
    resp, data = call(gateway, api_key.secret, "chat", BODIES["chat"])
    assert resp.status_code == 200
    row = wait_for_usage(resp.headers["x-request-id"])  # the batch was written
    assert row.status_code == 200
    row = UsageLog.objects.get(model="gpt\ufffdx\ufffd")
    assert row.status_code == 404
    assert UsageLog.objects.get(model="a\ufffdb").status_code == 404


# --- failures after the first byte ------------------------------------------------------

class _GarbageUpstream(http.server.BaseHTTPRequestHandler):
    """Answers every POST with one good event, then one the gateway's decoder cannot
    handle (an unexpected exception after the client's stream has started)."""

    frames: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        for frame in self.frames:
            self.wfile.write(frame)
            self.wfile.flush()
            time.sleep(0.2)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def garbage_upstream() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _GarbageUpstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def sse_data(data: bytes) -> list[Any]:
    return [orjson.loads(line[6:]) for line in data.split(b"\n")
            if line.startswith(b"data: {")]


def test_an_exception_after_the_first_byte_ends_a_responses_stream_with_response_failed(
        gateway, api_key, garbage_upstream, monkeypatch):
    _GarbageUpstream.frames = [
        b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"hel"}}]}\n\n',
        b'data: {"id":"c1","choices":[{"index":0,"delta":5}]}\n\n',
    ]
    upstream_create(name="garbage", kind="openai-chat", base_url=garbage_upstream,
                    models=["garbage-model"], api_keys=["k"])
    resp, data = call(gateway, api_key.secret, "responses",
                      {"model": "garbage-model", "input": "hi", "stream": True})
    assert resp.status_code == 200
    events = sse_data(data)
    assert events[0]["type"] == "response.created"
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["status"] == "failed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    row = wait_for_usage(resp.headers["x-request-id"])
    assert row.status_code == 200 and row.error_code


def test_an_exception_after_the_first_byte_ends_a_chat_stream_with_an_error_chunk(
        gateway, api_key, garbage_upstream):
    _GarbageUpstream.frames = [
        b'event: response.created\ndata: {"type":"response.created","sequence_number":0,'
        b'"response":{"id":"r1","status":"in_progress","output":[]}}\n\n',
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
        b'"sequence_number":1,"item_id":"m1","output_index":0,"content_index":0,'
        b'"delta":"hel"}\n\n',
        b'data: {"type":"response.output_item.added","sequence_number":2,"item":5}\n\n',
    ]
    upstream_create(name="garbage", kind="openai-responses", base_url=garbage_upstream,
                    models=["garbage-model"], api_keys=["k"])
    resp, data = call(gateway, api_key.secret, "chat",
                      {"model": "garbage-model", "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200
    chunks = sse_data(data)
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert set(chunks[-1]) == {"error"} and chunks[-1]["error"]["message"]
    assert b"[DONE]" not in data
    row = wait_for_usage(resp.headers["x-request-id"])
    assert row.status_code == 200 and row.error_code


# In process: the safety net in pipeline.handle itself, whatever raised.

class _Recorder:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.usage: list[Any] = []

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    async def receive(self) -> dict[str, Any]:
        await _forever()
        return {}


async def _forever() -> None:
    import asyncio

    await asyncio.Event().wait()


def _scope(endpoint: str) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": f"/v1/{endpoint}", "headers": [],
            "client": ("127.0.0.1", 1), "url_route": {"kwargs": {"endpoint": endpoint}}}


@pytest.mark.parametrize("endpoint", ["responses", "chat/completions"])
@pytest.mark.parametrize("failure", [RuntimeError("boom"),
                                     UpstreamError("it broke", code="upstream_x")])
async def test_the_safety_net_ends_an_open_stream_and_records_the_error(
        monkeypatch, caplog, endpoint, failure):
    recorder = _Recorder()

    async def relay(ctx, operation, receive, send):
        await respond.start_stream(ctx, send)
        await respond.send_chunk(ctx, send, b"event: a\ndata: {}\n\nevent: b\ndata: {}\n\n")
        raise failure

    monkeypatch.setattr(pipeline, "relay", relay)
    monkeypatch.setattr(pipeline, "record_usage", recorder.usage.append)
    with caplog.at_level(logging.ERROR, logger="gateway"):
        await pipeline.handle(_scope(endpoint), recorder.receive, recorder.send)
    last = recorder.sent[-1]
    assert last["type"] == "http.response.body" and last["more_body"] is False
    event = sse_data(last["body"])[0]
    expected = "internal_error" if isinstance(failure, RuntimeError) else "upstream_x"
    if endpoint == "responses":
        assert event["type"] == "response.failed" and event["sequence_number"] == 2
        assert event["response"]["error"]["code"] == expected
    else:
        assert event["error"]["code"] == expected
    [row] = recorder.usage
    assert (row.status_code, row.error_code) == (200, expected)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    if isinstance(failure, GatewayError):
        assert errors == []
    else:
        assert len(errors) == 1 and errors[0].exc_info is not None


async def test_a_json_answer_already_sent_gets_nothing_more(monkeypatch):
    recorder = _Recorder()

    async def relay(ctx, operation, receive, send):
        await respond.send_json(ctx, send, 200, b"{}")
        raise RuntimeError("after the answer")

    monkeypatch.setattr(pipeline, "relay", relay)
    monkeypatch.setattr(pipeline, "record_usage", recorder.usage.append)
    await pipeline.handle(_scope("responses"), recorder.receive, recorder.send)
    assert [m["type"] for m in recorder.sent] == ["http.response.start", "http.response.body"]
    assert recorder.usage[0].error_code == "internal_error"
