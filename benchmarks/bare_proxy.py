"""The bare proxy Turnpike is measured against: the same server (``python -m portal.server``:
daphne + uvloop + ``portal.tuning``) and the same upstream client (one aiohttp session per
loop, set up as ``gateway.providers.http``'s), relaying ``POST /v1/...`` to one upstream with
no policy at all: no key, no limits, no routing, no metering, no logging, no metrics.

    python -m portal.server -b 127.0.0.1 -p PORT benchmarks.bare_proxy:application
    (BARE_PROXY_UPSTREAM=http://127.0.0.1:MOCK/v1)

What Turnpike costs on top of this, per request, is what its policy, routing and metering
cost; ``benchmarks.run --bare`` runs it side by side (the "bare" target).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp

UPSTREAM = os.environ.get("BARE_PROXY_UPSTREAM", "http://127.0.0.1:8000/v1").rstrip("/")
_sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}


def _session() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    session = _sessions.get(loop)
    if session is None:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1000, limit_per_host=0, ttl_dns_cache=300,
                                           keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=300),
            auto_decompress=True, skip_auto_headers=("User-Agent",), raise_for_status=False)
        _sessions[loop] = session
    return session


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            pass
        return
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"].removeprefix("/v1")
    async with _session().post(UPSTREAM + path, data=body, allow_redirects=False, headers={
            "content-type": "application/json", "authorization": "Bearer sk-mock"}) as resp:
        headers = [(b"content-type", resp.headers.get("content-type", "").encode())]
        if "text/event-stream" in resp.headers.get("content-type", ""):
            await send({"type": "http.response.start", "status": resp.status,
                        "headers": headers})
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        data = await resp.read()
    headers.append((b"content-length", str(len(data)).encode()))
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
