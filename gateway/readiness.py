"""``GET /healthz`` and ``GET /readyz``, cheap enough to be probed every second.

/healthz: the process is alive (its event loop answers): 200 ``{"status":"ok"}``, no I/O.

/readyz: the process can serve. 200 when the database answers a trivial query, Redis
answers PING (when REDIS_URL is set) and the process is not draining (shutting down,
``portal.infra.shutdown``); 503 otherwise, the body naming each check and what failed.
Each check's outcome is kept for CHECK_TTL seconds and concurrent probes share one run, so
probing every second costs at most one query and one PING per second per process. The
query runs in this module's own thread (it keeps its connection), with a timeout. Redis
unreachable with GATEWAY_REDIS_FAILURE=open leaves the process ready: it serves with its
own limits meanwhile, which is what that mode is for. A failed or successful PING is
reported to ``portal.infra.redishealth`` like any other Redis call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from django.conf import settings

from gateway.respond import Receive, Send
from portal.infra.shutdown import draining

CHECK_TTL = 1.0
DATABASE_TIMEOUT = 2.0
REDIS_TIMEOUT = 1.0
OK = "ok"


async def _answer(send: Send, status: int, body: dict[str, Any]) -> None:
    data = orjson.dumps(body)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
        (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": data})


async def healthz_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    await _answer(send, 200, {"status": "ok"})


class _Cached:
    """One check's last outcome ("ok" or what failed), for CHECK_TTL seconds; probes that
    arrive while it runs wait for that run rather than starting another."""

    def __init__(self, run: Callable[[], Awaitable[str]]) -> None:
        self._run = run
        self._at = float("-inf")
        self._value = OK
        self._pending: asyncio.Future[str] | None = None

    async def get(self) -> str:
        if time.monotonic() - self._at < CHECK_TTL:
            return self._value
        pending = self._pending
        if pending is None or pending.done() or pending.get_loop() is not \
                asyncio.get_running_loop():
            pending = self._pending = asyncio.ensure_future(self._refresh())
        return await asyncio.shield(pending)

    async def _refresh(self) -> str:
        try:
            value = await self._run()
        except Exception as exc:
            value = f"{type(exc).__name__}: {exc}"[:200] or type(exc).__name__
        self._value, self._at = value, time.monotonic()
        return value


# The database check's own thread: it keeps its connection from one probe to the next.
_db_thread = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                   thread_name_prefix="readyz")
_db_running: concurrent.futures.Future[str] | None = None


def _query() -> str:
    from django.db import close_old_connections, connection

    close_old_connections()  # one broken or past its age is replaced
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception:
        connection.close()
        raise
    return OK


async def _database() -> str:
    global _db_running
    if _db_running is not None and not _db_running.done():
        return "timeout (the previous check has not returned)"
    _db_running = _db_thread.submit(_query)
    try:
        return await asyncio.wait_for(asyncio.wrap_future(_db_running), DATABASE_TIMEOUT)
    except TimeoutError:
        return f"timeout after {DATABASE_TIMEOUT:g} s"


async def _redis() -> str:
    from portal.infra.redis import fast_redis
    from portal.infra.redishealth import redis_health

    client = fast_redis()
    if client is None:
        return OK
    if not redis_health.usable():
        return "unreachable (retried once a second)"
    try:
        await asyncio.wait_for(client.execute("PING"), REDIS_TIMEOUT)
    except Exception as exc:
        redis_health.failed(exc)
        raise
    redis_health.succeeded()
    return OK


_database_check = _Cached(_database)
_redis_check = _Cached(_redis)


async def readyz_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    database, redis = await asyncio.gather(_database_check.get(), _redis_check.get())
    checks: dict[str, Any] = {"database": database,
                              "redis": redis if settings.REDIS_URL else "not configured",
                              "draining": draining()}
    failed = [name for name in ("database", "redis") if checks[name] not in (OK,
                                                                             "not configured")]
    if "redis" in failed and settings.GATEWAY_REDIS_FAILURE == "open":
        failed.remove("redis")  # serving with this process's own limits meanwhile
    if checks["draining"]:
        failed.append("draining")
    if failed:
        await _answer(send, 503, {"status": "unavailable", "failed": failed, "checks": checks})
    else:
        await _answer(send, 200, {"status": "ok", "checks": checks})
