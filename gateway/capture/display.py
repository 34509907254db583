"""A captured exchange as a page shows it: the admin's usage row (staff) and the portal's
request page (the tenant's owners) render the same partial, ``portal/usage/_capture.html``.
A body that is whole JSON is shown indented; any other (cut at the cap, a stream's events)
as stored."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from django.conf import settings
from django.template.loader import render_to_string

if TYPE_CHECKING:
    from gateway.models import CapturedExchange


def readable(text: str) -> str:
    """Whole JSON indented; anything else as it is."""
    if not text.lstrip().startswith(("{", "[")):
        return text
    try:
        return orjson.dumps(orjson.loads(text), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        return text


def context(exchange: CapturedExchange) -> dict[str, Any]:
    return {
        "capture": exchange,
        "request_text": readable(exchange.request_body),
        "response_text": exchange.response_body if exchange.stream
        else readable(exchange.response_body),
        "headers": sorted(exchange.request_headers.items()),
        "limit": int(settings.GATEWAY_CAPTURE_MAX_BYTES),
        "retention_hours": int(settings.GATEWAY_CAPTURE_RETENTION_HOURS),
    }


def render(exchange: CapturedExchange) -> str:
    """The partial as HTML (escaped by the template)."""
    return render_to_string("portal/usage/_capture.html", context(exchange))
