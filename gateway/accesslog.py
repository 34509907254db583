"""The access line: one log line per /v1 request (each WebSocket turn is one), on the logger
``turnpike.access``, written when the request is over (``pipeline.record``).

Its fields, in this order (``access_fields``):

    request_id          Turnpike's id (``req_…``): the usage row's, the limiter's, the ledger's
    client_request_id   the client's valid ``x-request-id`` (only when it sent one)
    trace_id            the request's trace (tracing on, or a valid incoming ``traceparent``)
    span_id             the request span (tracing on); ``parent_span_id`` the client's span
                        when tracing is off
    method, path, endpoint, status, error_code
    tenant, key_prefix  the tenant id and the key's public prefix (never the key)
    model, upstream     the model asked for; the name of the upstream tried last
    stream, input_tokens, cached_tokens, output_tokens, reasoning_tokens, cost
    latency_ms, ttfb_ms, attempts (upstream attempts made), client_ip

With ``LOG_FORMAT=json`` the fields are keys of the line's JSON object (``extra``); with
text, the message is ``request_id method path status`` and ``key=value`` for the rest that
are set. Nothing is built when the logger is off (``GATEWAY_ACCESS_LOG=false``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson
from django.conf import settings

from gateway.validate import printable
from portal.infra.logconfig import ACCESS_LOGGER

if TYPE_CHECKING:
    from gateway.context import RelayContext

log = logging.getLogger(ACCESS_LOGGER)
_INFO = logging.INFO
JSON = settings.LOG_FORMAT == "json"
_HEAD = ("request_id", "method", "path", "status")


def emit(ctx: RelayContext) -> None:
    """Log the request's access line (never raises: it runs in the request's finally)."""
    if not log.isEnabledFor(_INFO):
        return
    try:
        fields = access_fields(ctx)
        if JSON:
            log.info("%s %s %s", fields["method"], fields["path"], fields["status"],
                     extra=fields)
        else:
            log.info(text_line(fields))
    except Exception:  # a bug here must not cost the request its usage row or answer
        logging.getLogger(__name__).exception("could not log the access line of %s",
                                              ctx.request_id)


def access_fields(ctx: RelayContext) -> dict[str, Any]:
    key, out = ctx.key, ctx.outcome
    usage, route = out.usage, out.route
    settlement = ctx.settlement
    fields: dict[str, Any] = {"request_id": ctx.request_id}
    if ctx.client_request_id:
        fields["client_request_id"] = ctx.client_request_id
    trace = ctx.trace
    if trace is not None:
        fields["trace_id"] = trace.trace_id
        if trace.span_id:
            fields["span_id"] = trace.span_id
        elif trace.parent_span_id:
            fields["parent_span_id"] = trace.parent_span_id
    fields.update({
        "method": ctx.method,
        "path": printable(ctx.path),
        "endpoint": ctx.endpoint,
        "status": ctx.status or 500,
        "error_code": printable(out.error_code or ctx.error_code),
        "tenant": key.tenant_id if key is not None else None,
        "key_prefix": key.prefix if key is not None else "",
        "model": printable(ctx.model),
        "upstream": route.upstream.name if route is not None else None,
        "stream": ctx.stream,
        "input_tokens": usage.input_tokens if usage else 0,
        "cached_tokens": usage.cached_tokens if usage else 0,
        "output_tokens": usage.output_tokens if usage else 0,
        "reasoning_tokens": usage.reasoning_tokens if usage else 0,
        "cost": float(settlement.cost) if settlement is not None else 0.0,
        "latency_ms": ctx.elapsed_ms(),
        "ttfb_ms": ctx.elapsed_ms(ctx.first_byte_at) if ctx.first_byte_at else None,
        "attempts": len(out.attempts),
        "client_ip": ctx.client_ip,
    })
    return fields


def text_line(fields: dict[str, Any]) -> str:
    """``req_… POST /v1/responses 200 key=value …``: the values that are set; text with a
    space, a quote or an equals sign in it is written as a JSON string."""
    head = " ".join(_text(fields[name]) for name in _HEAD)
    rest = " ".join(f"{name}={_text(value)}" for name, value in fields.items()
                    if name not in _HEAD and value is not None and value != "")
    return f"{head} {rest}"


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if value and value.isprintable() and not any(c in value for c in ' "='):
            return value
        return orjson.dumps(value).decode()
    return str(value)
