"""OpenTelemetry traces of /v1 requests: off unless an OTLP endpoint is configured.

``ENABLED`` (settings.TRACING_ENABLED: ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` set, ``OTEL_SDK_DISABLED`` not true) is read once,
when this module is imported. Off, every call here is one boolean check (and a header look-up
for ``traceparent``): the SDK is never imported. On, ``gateway.otel`` holds the SDK:

    turnpike.request        one per /v1 request (a WebSocket turn is one), the child of the
                            client's ``traceparent`` when it sent one
      authenticate          the key check (``pipeline.authenticate``)
      admit                 the limiter call (``policy.admit``)
      attempt               one per upstream attempt (``exchange.attempts``); its id goes
                            upstream as the ``traceparent`` of that call
      stream                a streamed answer, from its first byte to its end

The request's trace id (and span id) are in its access line (``gateway.accesslog``); with
tracing off, the trace id of a valid incoming ``traceparent`` is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.conf import settings

from gateway.requestids import parse_traceparent

if TYPE_CHECKING:
    from gateway.context import RelayContext
    from gateway.outcome import Outcome
    from gateway.routing import Route

ENABLED: bool = bool(getattr(settings, "TRACING_ENABLED", False))


@dataclass(slots=True)
class Trace:
    """What a request knows of its trace."""

    trace_id: str  # 32 hex digits
    parent_span_id: str = ""  # the client's span (its traceparent), if any
    span_id: str = ""  # the request span's id (tracing on)
    root: Any = None  # the request span (tracing on)
    context: Any = None  # an OpenTelemetry context whose current span is ``root``
    attempt: Any = None  # the upstream attempt span in progress (tracing on)
    epoch_offset_ns: int = 0  # time.time_ns() - perf_counter_ns() when the request started


class _NoSpan:
    """What ``span`` and ``attempt`` give when there is nothing to trace."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


NO_SPAN = _NoSpan()


def start_request(ctx: RelayContext) -> Trace | None:
    """The request's trace: its span when tracing is on, else only the incoming
    ``traceparent``'s ids (None without a valid one)."""
    raw = ctx.headers.get(b"traceparent")
    if ENABLED:
        return otel.start_request(ctx, parse_traceparent(raw) if raw is not None else None)
    if raw is None:
        return None
    parsed = parse_traceparent(raw)
    return None if parsed is None else Trace(trace_id=parsed[0], parent_span_id=parsed[1])


def span(ctx: RelayContext, name: str) -> Any:
    """A context manager: a child span of the request's (``authenticate``, ``admit``)."""
    if not ENABLED or ctx.trace is None or ctx.trace.root is None:
        return NO_SPAN
    return otel.Child(ctx.trace, name)


def attempt(ctx: RelayContext, out: Outcome, route: Route) -> Any:
    """A context manager: the span of one upstream attempt on ``route``."""
    if not ENABLED or ctx.trace is None or ctx.trace.root is None:
        return NO_SPAN
    return otel.Attempt(ctx.trace, out, route)


def upstream_traceparent(ctx: RelayContext) -> str | None:
    """The ``traceparent`` to send upstream: the attempt span's (tracing on only)."""
    if not ENABLED or ctx.trace is None or ctx.trace.attempt is None:
        return None
    return otel.traceparent_of(ctx.trace.attempt)


def end_request(ctx: RelayContext) -> None:
    """The request is over: its stream span (if it streamed) and its own span end."""
    if ENABLED and ctx.trace is not None and ctx.trace.root is not None:
        try:
            otel.end_request(ctx)
        except Exception:  # it runs in the request's finally: never a reason to fail there
            logging.getLogger(__name__).exception("could not end the trace of %s",
                                                  ctx.request_id)


if ENABLED:  # last: gateway.otel imports Trace from here
    from gateway import otel
