"""The lean ASGI application behind /v1 (no Django request machinery on the hot path).

``portal.asgi`` routes the gateway's paths here with channels' URLRouter (patterns in
``gateway.urls``); ``gateway.pipeline.handle`` does the rest and never lets an exception
escape without an OpenAI-shaped answer.
"""

from __future__ import annotations

from typing import Any

import orjson

from billing.usage import journal_pending, pending_usage
from gateway import websocket
from gateway.capture import store as capture_store
from gateway.pipeline import handle, in_flight
from gateway.respond import Receive, Send
from gateway.stored import background, store


async def gateway_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await handle(scope, receive, send)


async def status_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """GET /_gateway/status: this process's requests in flight and usage rows held in its
    memory (``usage_pending``: lost if it died now), and the rows every process journaled
    in Redis that no writer has put in the database yet (``usage_journal``; null without
    Redis); the same for stored responses (``store_pending``, ``store_journal``) and body
    captures (``capture_pending``, ``capture_journal``), and the background responses
    running on this process's loop (``background_runs``: embedded mode; with a Celery
    broker they run in workers). A readiness probe for load balancers,
    and a drain check before a restart. ``websockets``: Responses sockets open now, the
    turns and warm-ups they carried."""
    body = orjson.dumps({"ok": True, "in_flight": in_flight(), "usage_pending": pending_usage(),
                         "usage_journal": await journal_pending(),
                         "store_pending": store.pending(),
                         "store_journal": await store.journal_pending(),
                         "capture_pending": capture_store.pending(),
                         "capture_journal": await capture_store.journal_pending(),
                         "background_runs": background.running(),
                         "websockets": websocket.stats()})
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})
