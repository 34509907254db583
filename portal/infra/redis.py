"""The shared-state connections: the hot path's pipelined client per event loop
(``fast_redis``) and one redis-py client per process for sync code (``sync_redis``).

Returns None when REDIS_URL is unset (the embedded default); callers then use their
in-process fallback. The names of the keys Turnpike writes are built by
portal.infra.rediskeys. Both read REDIS_URL through portal.infra.redisurl's rules
(redis://, rediss://, unix://; anything else refused), so they reach the same server and db.
"""

from __future__ import annotations

import asyncio
import functools
import time
import weakref
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.signals import setting_changed

if TYPE_CHECKING:
    import redis

    from portal.infra.fastredis import ClusterFastRedis, FastRedis

_sync_client: redis.Redis | None = None
# Longest a sync caller waits for one of the pool's REDIS_MAX_CONNECTIONS connections to be
# free (then redis.ConnectionError): as long as one command may take (socket_timeout).
POOL_WAIT_SECONDS = 10.0


def sync_redis() -> redis.Redis | None:
    global _sync_client
    url = settings.REDIS_URL
    if not url:
        return None
    if _sync_client is None:
        _sync_client = sync_client_for(url)
    return _sync_client


def sync_client_for(url: str) -> redis.Redis:
    """A redis-py client for ``url`` with at most settings.REDIS_MAX_CONNECTIONS connections.

    A blocking pool: with every connection busy a caller waits for one (up to
    POOL_WAIT_SECONDS) instead of opening more, so admin threads and tasks cannot exhaust
    Redis's client limit. The URL is checked by the hot path's rules first (ValueError), so
    a URL the fast client refuses is refused here too rather than half-honoured.
    """
    import redis

    from portal.infra.redisurl import parse_redis_url

    parse_redis_url(url)
    if settings.REDIS_CLUSTER:
        return cluster_client_for(url)  # type: ignore[return-value]
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=settings.REDIS_MAX_CONNECTIONS, timeout=POOL_WAIT_SECONDS,
        socket_connect_timeout=5, socket_timeout=10)
    return redis.Redis(connection_pool=pool)


def cluster_client_for(url: str) -> redis.RedisCluster:
    """REDIS_CLUSTER: redis-py's cluster client (``url`` names any node; the others are
    discovered), at most REDIS_MAX_CONNECTIONS connections per node. It has the same
    commands as ``redis.Redis`` for what Turnpike sends: scripts and MULTI stay in one hash
    slot (portal.infra.rediskeys), non-transactional pipelines are split by node, SCAN and
    multi-key DEL go to every master."""
    return _resharding_cluster().from_url(
        url, max_connections=settings.REDIS_MAX_CONNECTIONS, socket_connect_timeout=5,
        socket_timeout=10)


@functools.cache
def _resharding_cluster() -> type[redis.RedisCluster]:
    """redis-py's cluster client, waiting out a slot being moved (resharding) as the hot
    path's does (portal.infra.fastredis.ClusterFastRedis).

    redis-py follows ASK, and sends a command refused with TRYAGAIN (a script whose keys a
    moving slot has split between two masters) again, but at most 16 times in a few tenths
    of a second, bounced between the two masters (ASK, TRYAGAIN, MOVED back), and then
    raises ``ClusterError("TTL exhausted.")``: a usage journal writer's claim or release
    failed so, mid-move. That error means no attempt ran (every one was redirected or
    refused), so the command is sent again after a pause, doubling, for up to
    REDIS_CLUSTER_TRYAGAIN_SECONDS."""
    import redis
    from redis.exceptions import ClusterError

    from portal.infra.fastredis import moving_slot_pauses

    class ReshardingCluster(redis.RedisCluster):
        def execute_command(self, *args: Any, **kwargs: Any) -> Any:
            pauses = None
            while True:
                try:
                    return super().execute_command(*args, **kwargs)
                except ClusterError as exc:
                    if "TTL exhausted" not in str(exc):
                        raise
                    pauses = pauses or moving_slot_pauses(
                        float(settings.REDIS_CLUSTER_TRYAGAIN_SECONDS))
                    wait = next(pauses, None)
                    if wait is None:
                        raise
                time.sleep(wait)

    return ReshardingCluster


_fast_clients: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, FastRedis | ClusterFastRedis] = weakref.WeakKeyDictionary()


# The last loop asked about and its client (None: no REDIS_URL): two calls a request find
# it here, without reading the settings or the weak dictionary. Forgotten when a setting
# changes (tests).
_last: tuple[asyncio.AbstractEventLoop | None, FastRedis | ClusterFastRedis | None] = (
    None, None)


def _forget_last(**_: object) -> None:
    global _last
    _last = (None, None)


setting_changed.connect(_forget_last, dispatch_uid="portal.infra.redis.fast_redis")


def fast_redis() -> FastRedis | ClusterFastRedis | None:
    """The hot path's pipelined client for the running loop (portal.infra.fastredis); with
    REDIS_CLUSTER, the one that routes each command to its slot's master."""
    global _last
    loop = asyncio.get_running_loop()
    last_loop, client = _last
    if last_loop is loop:
        return client
    client = _fast_redis(loop)
    _last = (loop, client)
    return client


def _fast_redis(loop: asyncio.AbstractEventLoop) -> FastRedis | ClusterFastRedis | None:
    url = settings.REDIS_URL
    if not url:
        return None
    client = _fast_clients.get(loop)
    if client is None:
        from portal.infra.fastredis import ClusterFastRedis, FastRedis

        client = _fast_clients[loop] = (
            ClusterFastRedis(url, tryagain_seconds=settings.REDIS_CLUSTER_TRYAGAIN_SECONDS)
            if settings.REDIS_CLUSTER else FastRedis(url))
    return client
