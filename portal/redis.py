"""The shared-state connection: one Redis client per process (and per event loop).

Returns None when REDIS_URL is unset (the embedded default); callers then use their
in-process fallback. Every key Turnpike writes goes through ``rkey()`` so it carries
settings.GATEWAY_REDIS_PREFIX.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING

from django.conf import settings

if TYPE_CHECKING:
    import redis
    import redis.asyncio

    from portal.fastredis import FastRedis

_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis] = (
    weakref.WeakKeyDictionary()
)
_sync_client: redis.Redis | None = None


def rkey(*parts: str | int) -> str:
    return settings.GATEWAY_REDIS_PREFIX + ":".join(str(p) for p in parts)


def async_redis() -> redis.asyncio.Redis | None:
    """The client bound to the running loop (redis-py connections cannot cross loops)."""
    url = settings.REDIS_URL
    if not url:
        return None
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        import redis.asyncio

        # A blocking pool: under a burst, requests wait (briefly) for a connection instead
        # of failing with "Too many connections", and the process never opens more than
        # REDIS_MAX_CONNECTIONS (one round trip takes ~0.1 ms, so a few dozen suffice).
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=settings.REDIS_MAX_CONNECTIONS, timeout=10,
            socket_connect_timeout=5, socket_timeout=10, health_check_interval=30,
        )
        client = redis.asyncio.Redis(connection_pool=pool)
        _async_clients[loop] = client
    return client


def sync_redis() -> redis.Redis | None:
    global _sync_client
    url = settings.REDIS_URL
    if not url:
        return None
    if _sync_client is None:
        import redis

        _sync_client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
    return _sync_client


_fast_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, FastRedis] = (
    weakref.WeakKeyDictionary()
)


def fast_redis() -> FastRedis | None:
    """The hot path's pipelined client for the running loop (portal.fastredis)."""
    url = settings.REDIS_URL
    if not url:
        return None
    loop = asyncio.get_running_loop()
    client = _fast_clients.get(loop)
    if client is None:
        from portal.fastredis import FastRedis

        client = _fast_clients[loop] = FastRedis(url)
    return client
