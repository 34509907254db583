"""The OpenTelemetry SDK side of ``gateway.tracing``: imported only when tracing is on.

Importing it sets up a tracer provider (service name ``OTEL_SERVICE_NAME``, default
``turnpike``; the sampler and resource attributes from the standard ``OTEL_*`` variables)
that exports spans over OTLP/HTTP (protobuf) in batches from a background thread
(``BatchSpanProcessor``: nothing is sent on a request's path). What is still queued is sent
before daphne's reactor stops, and at exit.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any

from opentelemetry import trace as api
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from gateway.tracing import Trace

if TYPE_CHECKING:
    from gateway.context import RelayContext
    from gateway.outcome import Outcome
    from gateway.routing import Route

provider = TracerProvider(resource=Resource.create(
    {"service.name": os.environ.get("OTEL_SERVICE_NAME") or "turnpike"}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
api.set_tracer_provider(provider)
tracer = provider.get_tracer("turnpike.gateway")

_flush_hooked = False


def _hook_flush() -> None:
    """Flush what is queued before daphne's reactor stops (registered from the first
    request: the reactor is running by then)."""
    global _flush_hooked
    _flush_hooked = True
    from portal.infra.shutdown import before_reactor_shutdown

    async def flush() -> None:
        await asyncio.to_thread(provider.force_flush, 5000)

    before_reactor_shutdown(flush)


def start_request(ctx: RelayContext, parent: tuple[str, str, bool] | None) -> Trace:
    if not _flush_hooked:
        _hook_flush()
    parent_context = None
    if parent is not None:
        trace_id, span_id, sampled = parent
        remote = SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True,
                             trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else 0))
        parent_context = api.set_span_in_context(NonRecordingSpan(remote))
    root = tracer.start_span("turnpike.request", context=parent_context, kind=SpanKind.SERVER,
                             attributes={"http.request.method": ctx.method,
                                         "url.path": ctx.path,
                                         "turnpike.endpoint": ctx.endpoint,
                                         "turnpike.request_id": ctx.request_id})
    if ctx.client_request_id:
        root.set_attribute("turnpike.client_request_id", ctx.client_request_id)
    own = root.get_span_context()
    return Trace(trace_id=format(own.trace_id, "032x"),
                 parent_span_id=parent[1] if parent is not None else "",
                 span_id=format(own.span_id, "016x"), root=root,
                 context=api.set_span_in_context(root),
                 epoch_offset_ns=time.time_ns() - time.perf_counter_ns())


def _failed(span: Any, exc: BaseException) -> None:
    error = getattr(exc, "error", exc)  # UpstreamFailed carries the client's error
    code = getattr(error, "code", None) or type(exc).__name__
    span.set_attribute("error.type", code)
    span.set_status(Status(StatusCode.ERROR, code))


class Child:
    """A child span of the request's, as a context manager."""

    __slots__ = ("name", "span", "trace")

    def __init__(self, trace: Trace, name: str) -> None:
        self.trace = trace
        self.name = name
        self.span: Any = None

    def __enter__(self) -> Any:
        self.span = tracer.start_span(self.name, context=self.trace.context)
        return self.span

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if exc is not None:
            _failed(self.span, exc)
        self.span.end()


class Attempt:
    """The span of one upstream attempt: its upstream and credential, the status the
    upstream answered (none if it never did), and how it ended (``turnpike.outcome``:
    ``ok``, ``failed`` with ``error.type``, ``cancelled``)."""

    __slots__ = ("first", "out", "route", "span", "trace")

    def __init__(self, trace: Trace, out: Outcome, route: Route) -> None:
        self.trace = trace
        self.out = out
        self.route = route
        self.first = 0
        self.span: Any = None

    def __enter__(self) -> Any:
        route = self.route
        attributes: dict[str, Any] = {"turnpike.upstream": route.upstream.name,
                                      "turnpike.upstream_id": route.upstream.id}
        if route.credential is not None:
            attributes["turnpike.credential_id"] = route.credential.id
        self.first = len(self.out.attempts)
        self.span = self.trace.attempt = tracer.start_span(
            "attempt", context=self.trace.context, kind=SpanKind.CLIENT, attributes=attributes)
        return self.span

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        span = self.span
        mine = self.out.attempts[self.first:]
        if mine and mine[-1].get("status"):
            span.set_attribute("http.response.status_code", mine[-1]["status"])
        if exc is None:
            span.set_attribute("turnpike.outcome", "ok")
        elif isinstance(exc, asyncio.CancelledError):
            span.set_attribute("turnpike.outcome", "cancelled")
        else:
            span.set_attribute("turnpike.outcome", "failed")
            _failed(span, exc)
        self.trace.attempt = None
        span.end()


def traceparent_of(span: Any) -> str:
    own = span.get_span_context()
    return f"00-{own.trace_id:032x}-{own.span_id:016x}-{int(own.trace_flags):02x}"


def end_request(ctx: RelayContext) -> None:
    """End the stream span (a streamed answer: first byte to now) and the request's."""
    trace = ctx.trace
    assert trace is not None
    root = trace.root
    now = time.time_ns()
    error_code = ctx.outcome.error_code or ctx.error_code
    if ctx.stream and ctx.first_byte_at is not None:
        started = trace.epoch_offset_ns + int(ctx.first_byte_at * 1e9)
        stream = tracer.start_span("stream", context=trace.context, start_time=started,
                                   attributes={"turnpike.events": ctx.events_sent})
        if ctx.outcome.error_code:  # the stream itself broke off
            stream.set_attribute("error.type", ctx.outcome.error_code)
            stream.set_status(Status(StatusCode.ERROR, ctx.outcome.error_code))
        stream.end(end_time=now)
    key, route = ctx.key, ctx.outcome.route
    status = ctx.status or 500
    attributes: dict[str, Any] = {
        "http.response.status_code": status,
        "turnpike.model": ctx.model,
        "turnpike.stream": ctx.stream,
        "turnpike.attempts": len(ctx.outcome.attempts),
    }
    if key is not None:
        attributes["turnpike.tenant_id"] = key.tenant_id
        attributes["turnpike.key_prefix"] = key.prefix
    if route is not None:
        attributes["turnpike.upstream"] = route.upstream.name
    if error_code:
        attributes["error.type"] = error_code
    root.set_attributes(attributes)
    if status >= 500:
        root.set_status(Status(StatusCode.ERROR, error_code or str(status)))
    root.end(end_time=now)
