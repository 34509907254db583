"""OpenTelemetry traces (gateway.tracing, gateway.otel) from a real gateway process, exported
over OTLP/HTTP to a collector this test runs in-process (a small HTTP server decoding the
protobuf ExportTraceServiceRequest with opentelemetry-proto): the span tree of a request,
its parent from the client's traceparent, one span per upstream attempt, the traceparent
sent upstream, and the ids in the access line."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

from gateway.services import upstream_create
from tests.conftest import gateway_env, wait_for_usage
from tests.servers import FakeUpstream, Gateway, start_fake_upstream, start_gateway, stop

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


@dataclass
class Received:
    name: str
    trace_id: str
    span_id: str
    parent: str
    kind: int
    start: int
    end: int
    status: int  # 0 unset, 1 ok, 2 error
    attributes: dict[str, Any]
    service: str


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@dataclass
class Collector:
    """An OTLP/HTTP trace receiver: POST /v1/traces, protobuf."""

    spans: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    def start(self) -> str:
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers["content-length"]))
                assert self.path == "/v1/traces"
                assert self.headers["content-type"] == "application/x-protobuf"
                collector.add(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, request: ExportTraceServiceRequest) -> None:
        for resource in request.resource_spans:
            service = {a.key: _value(a.value) for a in resource.resource.attributes}.get(
                "service.name", "")
            for scope in resource.scope_spans:
                for span in scope.spans:
                    received = Received(
                        name=span.name, trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                        parent=span.parent_span_id.hex(), kind=span.kind,
                        start=span.start_time_unix_nano, end=span.end_time_unix_nano,
                        status=span.status.code,
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        service=service)
                    with self.lock:
                        self.spans.append(received)

    def trace(self, trace_id: str, names: list[str], timeout: float = 15.0) -> list[Received]:
        """The spans of ``trace_id``, once every one of ``names`` (with repeats) arrived."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                spans = [s for s in self.spans if s.trace_id == trace_id]
            got = [s.name for s in spans]
            if all(got.count(n) >= names.count(n) for n in set(names)):
                return sorted(spans, key=lambda s: s.start)
            if time.monotonic() > deadline:
                raise AssertionError(f"trace {trace_id}: got {got}, expected {names}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    receiver = Collector()
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def traced_gateway(collector: Collector, django_db_setup: Any,
                   django_db_blocker: Any) -> Iterator[Gateway]:
    assert collector.server is not None
    endpoint = f"http://127.0.0.1:{collector.server.server_address[1]}"
    with django_db_blocker.unblock():
        server = start_gateway(gateway_env(
            GATEWAY_SNAPSHOT_TTL="0", LOG_FORMAT="json", OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_SERVICE_NAME="turnpike-under-test", OTEL_BSP_SCHEDULE_DELAY="50"))
    yield server
    stop(server.proc)


@pytest.fixture(scope="module")
def open_fake() -> Iterator[FakeUpstream]:
    """A fake upstream that takes any credential (faults scripted per credential)."""
    server = start_fake_upstream()
    yield server
    stop(server.proc)


def access_line(gateway: Gateway, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for raw in gateway.log_lines():
            line = orjson.loads(raw)
            if line.get("logger") == "turnpike.access" and line.get("request_id") == request_id:
                return line
        assert time.monotonic() < deadline, f"no access line for {request_id}"
        time.sleep(0.05)


def test_a_failed_over_stream_is_one_trace_under_the_clients_span(
        traced_gateway, collector, open_fake, api_key):
    open_fake.clear()
    upstream_create(name="trace-broken", kind="openai", base_url=open_fake.openai_url,
                    models=["tm"], api_keys=["sk-trace-broken-0001"], priority=1)
    upstream_create(name="trace-healthy", kind="openai", base_url=open_fake.openai_url,
                    models=["tm"], api_keys=["sk-trace-healthy-0001"])
    open_fake.script_key("sk-trace-broken-0001", status=503)
    trace_id, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    resp = httpx.post(traced_gateway.base_url + "/chat/completions", timeout=30, headers={
        "Authorization": f"Bearer {api_key.secret}", "x-request-id": "traced-1",
        "traceparent": f"00-{trace_id}-{parent}-01"},
        json={"model": "tm", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200 and "[DONE]" in resp.text, resp.text
    own = resp.headers["x-turnpike-request-id"]

    spans = collector.trace(trace_id, ["turnpike.request", "authenticate", "admit", "attempt",
                                       "attempt", "stream"])
    by_name: dict[str, list[Received]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    (root,) = by_name["turnpike.request"]
    assert root.parent == parent  # the client's span
    assert root.kind == ProtoSpan.SPAN_KIND_SERVER and root.service == "turnpike-under-test"
    row = wait_for_usage(own)
    assert {"turnpike.endpoint": "chat/completions", "turnpike.model": "tm",
            "http.response.status_code": 200, "http.request.method": "POST",
            "url.path": "/v1/chat/completions", "turnpike.request_id": own,
            "turnpike.client_request_id": "traced-1", "turnpike.tenant_id": row.tenant_id,
            "turnpike.key_prefix": row.key_prefix, "turnpike.stream": True,
            "turnpike.attempts": 2, "turnpike.upstream": "trace-healthy"}.items() \
        <= root.attributes.items()
    assert "error.type" not in root.attributes and root.status == 0
    for span in spans:
        if span is not root:
            assert span.parent == root.span_id, span.name
            assert root.start <= span.start <= span.end <= root.end, span.name
    (auth,), (admit,), (stream,) = by_name["authenticate"], by_name["admit"], by_name["stream"]
    assert auth.end <= admit.start
    broken, healthy = by_name["attempt"]
    assert admit.end <= broken.start and broken.end <= healthy.start
    assert broken.kind == healthy.kind == ProtoSpan.SPAN_KIND_CLIENT
    assert {"turnpike.upstream": "trace-broken", "http.response.status_code": 503,
            "turnpike.outcome": "failed"}.items() <= broken.attributes.items()
    assert broken.status == 2 and broken.attributes["error.type"]
    assert {"turnpike.upstream": "trace-healthy", "http.response.status_code": 200,
            "turnpike.outcome": "ok"}.items() <= healthy.attributes.items()
    assert healthy.start <= stream.start and stream.end <= root.end
    assert stream.attributes["turnpike.events"] > 0

    # The upstream was called with the attempt's span as its parent.
    sent = open_fake.requests()[-1]["headers"]["traceparent"]
    assert sent == f"00-{trace_id}-{healthy.span_id}-01"
    # The access line names the trace and the request's span.
    line = access_line(traced_gateway, own)
    assert (line["trace_id"], line["span_id"]) == (trace_id, root.span_id)
    assert "parent_span_id" not in line


def test_a_refused_request_is_a_new_trace_with_the_refusal_on_its_authenticate_span(
        traced_gateway, collector, upstream):
    resp = httpx.post(traced_gateway.base_url + "/chat/completions", timeout=30,
                      headers={"Authorization": "Bearer sk-tp-not-a-key"},
                      json={"model": "gpt-4o-mini", "messages": []})
    assert resp.status_code == 401
    line = access_line(traced_gateway, resp.headers["x-request-id"])
    spans = collector.trace(line["trace_id"], ["turnpike.request", "authenticate"])
    assert [s.name for s in spans] == ["turnpike.request", "authenticate"]
    root, auth = spans
    assert root.parent == "" and root.span_id == line["span_id"]
    code = resp.json()["error"]["code"]
    assert root.attributes["error.type"] == code and root.attributes[
        "http.response.status_code"] == 401
    assert root.status == 0  # a client error is not the server's
    assert auth.status == 2 and auth.attributes["error.type"] == code
