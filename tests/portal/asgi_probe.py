"""A test-only ASGI application: Turnpike's own (``portal.asgi``), plus ``GET /_probe``
answering what the serving process is running on, so a test can tell the launch commands
apart from outside: the event loop, Twisted's Content-Type parser and the GC settings."""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any

from portal.asgi import application as turnpike


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http" or scope["path"] != "/_probe":
        await turnpike(scope, receive, send)
        return
    from twisted.web import http

    parser = http._parseContentType
    body = json.dumps({
        "loop": type(asyncio.get_running_loop()).__module__,
        "content_type_parser": f"{parser.__module__}.{parser.__qualname__}",
        "frozen": gc.get_freeze_count(),
        "threshold": list(gc.get_threshold()),
    }).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
