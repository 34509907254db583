"""The lean ASGI application behind /v1 (no Django request machinery on the hot path).

``portal.asgi`` routes the gateway's paths here with channels' URLRouter (patterns in
``gateway.urls``); ``gateway.pipeline.handle`` does the rest and never lets an exception
escape without an OpenAI-shaped answer.
"""

from __future__ import annotations

from typing import Any

from gateway.pipeline import Receive, Send, handle


async def gateway_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await handle(scope, receive, send)
