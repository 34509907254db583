"""URL patterns of the /v1 API, for channels' URLRouter in portal.asgi.

Each endpoint is served at /v1/<endpoint>, at /<endpoint> (no /v1), and under every
prefix in settings.GATEWAY_PATH_PREFIXES (/codex/v1/<endpoint>, /codex/<endpoint>).
Anything else under /v1 reaches the gateway too, which answers 404 in the OpenAI shape.
WebSockets (``gateway_websocket_patterns``): ``responses`` at the same paths, upgraded;
any other /v1 path refuses the upgrade with that 404. ``/healthz`` and ``/readyz``
(``gateway.readiness``) and ``/_gateway/status`` are served here too, without Django.
"""

from __future__ import annotations

import re
from typing import Any

from channels.routing import URLRouter
from django.conf import settings
from django.urls import URLPattern, re_path

from gateway.app import gateway_app, status_app
from gateway.metrics import metrics_app
from gateway.readiness import healthz_app, readyz_app
from gateway.websocket import refused_socket, responses_socket

# The API's endpoints (a longer path before its prefix: the pattern tries them in order).
ENDPOINTS = ("responses/compact", "responses", "chat/completions", "models",
             "dashboard/billing/subscription", "dashboard/billing/usage")
ENDPOINT = f"(?P<endpoint>{'|'.join(map(re.escape, ENDPOINTS))})"


def _prefix() -> str:
    prefixes = [re.escape(p.strip("/")) for p in settings.GATEWAY_PATH_PREFIXES if p.strip("/")]
    return f"(?:(?:{'|'.join(prefixes)})/)?" if prefixes else ""


def gateway_patterns() -> list[URLPattern]:
    prefix = _prefix()
    # channels' URLRouter routes ASGI apps with Django's re_path, whose stubs allow only
    # views: hence the ignores.
    return [
        re_path(r"^_gateway/status$", status_app),  # type: ignore[arg-type]
        re_path(r"^healthz$", healthz_app),  # type: ignore[arg-type]
        re_path(r"^readyz$", readyz_app),  # type: ignore[arg-type]
        re_path(r"^metrics$", metrics_app),  # type: ignore[arg-type]
        re_path(rf"^{prefix}(?:v1/)?{ENDPOINT}/?$", gateway_app),  # type: ignore[arg-type]
        re_path(rf"^{prefix}(?:v1/)?(?P<endpoint>models)/(?P<model_id>.+)$",
                gateway_app),  # type: ignore[arg-type]
        # Stored responses (gateway.stored.api): /v1/responses/{id}[/input_items|/cancel].
        re_path(rf"^{prefix}(?:v1/)?responses/(?P<response_id>[^/]+)"
                r"(?:/(?P<sub>input_items|cancel))?/?$", gateway_app,  # type: ignore[arg-type]
                {"endpoint": "responses/stored"}),
        re_path(rf"^{prefix}v1(?:/.*)?$", gateway_app),  # type: ignore[arg-type]
    ]


def gateway_websocket_patterns() -> list[URLPattern]:
    """The WebSocket paths the gateway answers: Responses over WebSocket where POST
    /v1/responses is served; any other /v1 path is refused with a 404."""
    prefix = _prefix()
    return [
        re_path(rf"^{prefix}(?:v1/)?(?P<endpoint>responses)/?$",
                responses_socket),  # type: ignore[arg-type]
        re_path(rf"^{prefix}v1(?:/.*)?$", refused_socket),  # type: ignore[arg-type]
    ]


def gateway_paths() -> list[str]:
    """Every path an endpoint of ``ENDPOINTS`` is served at (prefixes, with and without
    /v1, with and without the trailing slash): the paths ``ExactPathRouter`` knows."""
    prefixes = ["", *(p.strip("/") + "/" for p in settings.GATEWAY_PATH_PREFIXES if p.strip("/"))]
    return [f"/{prefix}{v1}{endpoint}{slash}" for prefix in prefixes for v1 in ("v1/", "")
            for endpoint in ENDPOINTS for slash in ("", "/")]


class ExactPathRouter(URLRouter):
    """channels' URLRouter, with the outcome of its pattern list worked out once for the
    paths given (the API's endpoints): such a path is dispatched with one dict look-up
    instead of a regular expression per pattern tried, to the same application with the
    same scope. Every other path (and any scope with a root path, or routed already) goes
    through the patterns as before."""

    def __init__(self, routes: list[Any], exact: list[str]) -> None:
        super().__init__(routes)
        self.exact: dict[str, tuple[Any, str, tuple[Any, ...], dict[str, Any]]] = {}
        for path in exact:
            relative = path.lstrip("/")
            for route in self.routes:
                match = route.pattern.match(relative)
                if match:
                    new_path, args, kwargs = match
                    self.exact[path] = (route.callback, new_path, args,
                                        {**kwargs, **route.default_args})
                    break

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        hit = self.exact.get(scope.get("path"))  # type: ignore[arg-type]
        if hit is None or "path_remaining" in scope or "url_route" in scope \
                or scope.get("root_path"):
            return await super().__call__(scope, receive, send)
        application, new_path, args, kwargs = hit
        return await application(
            dict(scope, path_remaining=new_path, url_route={"args": args, "kwargs": dict(kwargs)}),
            receive, send)
