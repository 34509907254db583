"""The shared-state connections: the hot path's pipelined client per event loop
(``fast_redis``) and one redis-py client per process for sync code (``sync_redis``).

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

    from portal.fastredis import FastRedis

_sync_client: redis.Redis | None = None


def rkey(*parts: str | int) -> str:
    return settings.GATEWAY_REDIS_PREFIX + ":".join(str(p) for p in parts)


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
