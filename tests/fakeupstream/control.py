"""The ``/_fake/*`` endpoints tests use to inspect and steer a running fake; they never need a
key.

    GET|DELETE /_fake/requests   the recorded requests (newest last), or forget them
    GET /_fake/stats             {"total", "inflight", "max_inflight"}
    POST /_fake/stats/reset      restart the counters
    GET /_fake/health            {"ok": true}
    POST|DELETE /_fake/keys      per-credential faults (see faults.py)
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from tests.fakeupstream.state import STATE


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _ok() -> web.Response:
    return web.json_response({"ok": True}, dumps=_dumps)


async def get_requests(request: web.Request) -> web.Response:
    return web.json_response(list(request.app[STATE].requests), dumps=_dumps)


async def clear_requests(request: web.Request) -> web.Response:
    request.app[STATE].requests.clear()
    return _ok()


async def get_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].stats(), dumps=_dumps)


async def reset_stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.total = 0
    # Requests still running keep counting; restart the high-water mark from them.
    state.max_inflight = state.inflight
    return web.json_response(state.stats(), dumps=_dumps)


async def script_key(request: web.Request) -> web.Response:
    spec = await request.json(loads=orjson.loads)
    if not isinstance(spec, dict) or not isinstance(spec.get("key"), str):
        return web.json_response({"error": "send an object with a string 'key'"}, status=400,
                                 dumps=_dumps)
    request.app[STATE].faults.script(spec)
    return _ok()


async def clear_keys(request: web.Request) -> web.Response:
    request.app[STATE].faults.clear()
    return _ok()


async def health(request: web.Request) -> web.Response:
    return _ok()


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/_fake/requests", get_requests, allow_head=False)
    router.add_delete("/_fake/requests", clear_requests)
    router.add_get("/_fake/stats", get_stats, allow_head=False)
    router.add_post("/_fake/stats/reset", reset_stats)
    router.add_get("/_fake/health", health, allow_head=False)
    router.add_post("/_fake/keys", script_key)
    router.add_delete("/_fake/keys", clear_keys)
