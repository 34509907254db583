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

With ``LOG_FORMAT=json`` the fields are keys of the line's JSON object, its message
``method path status``; with text, the message is ``request_id method path status`` and
``key=value`` pairs (``tokens=input/cached/output/reasoning``). The fields are the record's
extra attributes either way, for any other handler. Nothing is built when the logger is
off (``GATEWAY_ACCESS_LOG=false``); the record is made by ``logconfig.fast_record``.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import orjson
from django.conf import settings

from portal.infra.logconfig import ACCESS_LOGGER, fast_record

if TYPE_CHECKING:
    from gateway.context import RelayContext

log = logging.getLogger(ACCESS_LOGGER)
_INFO = logging.INFO
JSON = settings.LOG_FORMAT == "json"


def emit(ctx: RelayContext) -> None:
    """Log the request's access line (never raises: it runs in the request's finally)."""
    if not log.isEnabledFor(_INFO):
        return
    try:
        fields = access_fields(ctx)
        message = (f"{fields['method']} {fields['path']} {fields['status']}" if JSON
                   else text_line(fields))
        log.handle(fast_record(log.name, _INFO, message, fields))
    except Exception:  # a bug here must not cost the request its usage row or answer
        logging.getLogger(__name__).exception("could not log the access line of %s",
                                              ctx.request_id)


_NO_IDS: dict[str, str] = {}


def access_fields(ctx: RelayContext) -> dict[str, Any]:
    """The line's fields. Client-chosen text is left as it came: the JSON encoder escapes
    it, and the text form quotes anything that is not plain."""
    key, out = ctx.key, ctx.outcome
    usage, route, settlement = out.usage, out.route, ctx.settlement
    ids = _NO_IDS
    if ctx.client_request_id or ctx.trace is not None:
        ids = ids_of(ctx)
    return {
        "request_id": ctx.request_id,
        **ids,
        "method": ctx.method,
        "path": ctx.path,
        "endpoint": ctx.endpoint,
        "status": ctx.status or 500,
        "error_code": out.error_code or ctx.error_code,
        "tenant": key.tenant_id if key is not None else None,
        "key_prefix": key.prefix if key is not None else "",
        "model": ctx.model,
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
    }


def ids_of(ctx: RelayContext) -> dict[str, str]:
    """The client's request id and the trace's ids, those there are."""
    ids = {}
    if ctx.client_request_id:
        ids["client_request_id"] = ctx.client_request_id
    trace = ctx.trace
    if trace is not None:
        ids["trace_id"] = trace.trace_id
        if trace.span_id:
            ids["span_id"] = trace.span_id
        elif trace.parent_span_id:
            ids["parent_span_id"] = trace.parent_span_id
    return ids


# Text written as it is in the text form: printable ASCII without space, '"' or '='.
_PLAIN = re.compile(r'[!#-<>-~]+')
_TEXT_IDS = ("client_request_id", "trace_id", "span_id", "parent_span_id")
_TEXT_NAMES = ("tenant", "key_prefix", "model", "upstream", "error_code")


def _text(value: str) -> str:
    return value if _PLAIN.fullmatch(value) else orjson.dumps(value).decode()


def text_line(f: dict[str, Any]) -> str:
    """``req_… POST /v1/responses 200 key=value …``: the ids and names that are set, then
    the figures; text that is not plain is written as a JSON string."""
    parts = [f["request_id"], f["method"], _text(f["path"]), str(f["status"])]
    for name in _TEXT_IDS:
        if name in f:
            parts.append(f"{name}={f[name]}")
    for name in _TEXT_NAMES:
        value = f[name]
        if value is not None and value != "":
            parts.append(f"{name}={_text(value) if isinstance(value, str) else value}")
    parts.append(
        f"stream={'true' if f['stream'] else 'false'} tokens={f['input_tokens']}/"
        f"{f['cached_tokens']}/{f['output_tokens']}/{f['reasoning_tokens']} "
        f"cost={f['cost']} latency_ms={f['latency_ms']} ttfb_ms={f['ttfb_ms']} "
        f"attempts={f['attempts']} client_ip={f['client_ip']}")
    return " ".join(parts)
