"""Django's cache on a Redis Cluster (REDIS_CLUSTER): Django's own Redis backend with
redis-py's cluster client underneath.

Django's ``RedisCache`` builds a ``redis.Redis`` on a connection pool; a cluster needs
``redis.RedisCluster``, and its multi-key commands split by slot: ``get_many`` reads with
``mget_nonatomic`` and ``set_many`` sets each key in a pipeline (split by node), since MGET
and MSET across slots are refused by a cluster. ``clear`` empties every master
(FLUSHDB on each, as ``clear`` does on one Redis).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.cache.backends.redis import RedisCache, RedisCacheClient


class RedisClusterCacheClient(RedisCacheClient):
    def __init__(self, servers: list[str], serializer: Any = None, pool_class: Any = None,
                 parser_class: Any = None, max_connections: int = 64, **options: Any) -> None:
        super().__init__(servers, serializer=serializer, **options)
        self._url = servers[0]
        self._cluster: Any = None
        self._max_connections = max_connections

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        if self._cluster is None:
            import redis

            self._cluster = redis.RedisCluster.from_url(
                self._url, max_connections=self._max_connections,
                socket_connect_timeout=5, socket_timeout=10)
        return self._cluster

    def get_many(self, keys: Any) -> dict[Any, Any]:
        keys = list(keys)
        values = self.get_client(None).mget_nonatomic(keys)
        serializer: Any = getattr(self, "_serializer")  # noqa: B009 (set by Django's __init__)
        return {k: serializer.loads(v) for k, v in zip(keys, values, strict=True)
                if v is not None}

    def set_many(self, data: Mapping[Any, Any], timeout: Any) -> None:
        pipeline = self.get_client(None, write=True).pipeline()
        serializer: Any = getattr(self, "_serializer")  # noqa: B009 (set by Django's __init__)
        for key, value in data.items():
            pipeline.set(key, serializer.dumps(value), ex=timeout)
        pipeline.execute()

    def delete_many(self, keys: Any) -> None:
        keys = list(keys)
        if keys:
            self.get_client(None, write=True).delete(*keys)


class RedisClusterCache(RedisCache):
    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = RedisClusterCacheClient
