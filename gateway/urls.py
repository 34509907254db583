"""URL patterns of the /v1 API, for channels' URLRouter in portal.asgi.

Each endpoint is served at /v1/<endpoint>, at /<endpoint> (no /v1), and under every
prefix in settings.GATEWAY_PATH_PREFIXES (/codex/v1/<endpoint>, /codex/<endpoint>).
Anything else under /v1 reaches the gateway too, which answers 404 in the OpenAI shape.
"""

from __future__ import annotations

import re

from django.conf import settings
from django.urls import URLPattern, re_path

from gateway.app import gateway_app, status_app

ENDPOINT = (r"(?P<endpoint>responses/compact|responses|chat/completions|models"
            r"|dashboard/billing/subscription|dashboard/billing/usage)")


def gateway_patterns() -> list[URLPattern]:
    prefixes = [re.escape(p.strip("/")) for p in settings.GATEWAY_PATH_PREFIXES if p.strip("/")]
    prefix = f"(?:(?:{'|'.join(prefixes)})/)?" if prefixes else ""
    # channels' URLRouter routes ASGI apps with Django's re_path, whose stubs allow only
    # views: hence the ignores.
    return [
        re_path(r"^_gateway/status$", status_app),  # type: ignore[arg-type]
        re_path(rf"^{prefix}(?:v1/)?{ENDPOINT}/?$", gateway_app),  # type: ignore[arg-type]
        re_path(rf"^{prefix}(?:v1/)?(?P<endpoint>models)/(?P<model_id>.+)$",
                gateway_app),  # type: ignore[arg-type]
        # Stored responses (gateway.stored.api): /v1/responses/{id}[/input_items|/cancel].
        re_path(rf"^{prefix}(?:v1/)?responses/(?P<response_id>[^/]+)"
                r"(?:/(?P<sub>input_items|cancel))?/?$", gateway_app,  # type: ignore[arg-type]
                {"endpoint": "responses/stored"}),
        re_path(rf"^{prefix}v1(?:/.*)?$", gateway_app),  # type: ignore[arg-type]
    ]
