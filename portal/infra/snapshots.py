"""A three-level read-through cache for what the /v1 hot path needs from the database.

    process memory (trusted for GATEWAY_SNAPSHOT_TTL, ~1 s)
      -> Redis (shared by every gateway process; deleted when the source row changes)
        -> the database (through the sync ORM, at most once per identity per process
           at a time)

A known key therefore costs no SQL and, within the TTL, no Redis either; a change made
anywhere reaches every process within the TTL. Without Redis (the embedded default) the
middle level is skipped and a process re-reads the database at most once per TTL.
Negative answers ("no such key") are cached too, briefly, so a flood of bogus keys cannot
turn into a flood of queries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from redis.exceptions import RedisError

from portal.infra import rediskeys
from portal.infra.redis import fast_redis, sync_redis
from portal.infra.redishealth import redis_health

log = logging.getLogger(__name__)

T = TypeVar("T")
_MISSING = {"_missing": True}


class LayeredCache(Generic[T]):
    def __init__(
        self,
        name: str,
        load: Callable[[str], dict[str, Any] | None],
        decode: Callable[[dict[str, Any]], T],
        redis_ttl: int = 300,
        negative_ttl: int = 5,
    ) -> None:
        self.name = name
        self._load = load
        self._decode = decode
        self._redis_ttl = redis_ttl
        self._negative_ttl = negative_ttl
        self._local: dict[str, tuple[float, T | None]] = {}
        self._pending: dict[str, asyncio.Future[T | None]] = {}

    def _redis_key(self, ident: str) -> str:
        return rediskeys.snapshot(self.name, ident)

    async def get(self, ident: str) -> T | None:
        hit = self._local.get(ident)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        pending = self._pending.get(ident)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[T | None] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        try:
            value = await self._fetch(ident)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters may be gone
            raise
        else:
            future.set_result(value)
            self._local[ident] = (time.monotonic() + settings.GATEWAY_SNAPSHOT_TTL, value)
            if len(self._local) > 100_000:
                self._evict(now)
            return value
        finally:
            del self._pending[ident]

    async def _fetch(self, ident: str) -> T | None:
        client = fast_redis()
        if client is not None and not redis_health.usable():
            client = None  # Redis is away: straight to the database, no waiting on it
        if client is not None:
            try:
                raw = await client.execute("GET", self._redis_key(ident))
            except RedisError as exc:
                # Fail open to the source of truth: a Redis outage costs one query per
                # identity per TTL, not an outage of the gateway (logged once, by
                # redis_health, not per request).
                redis_health.failed(exc)
                client = None
            else:
                redis_health.succeeded()
                if raw is not None:
                    data = orjson.loads(raw)
                    return None if data == _MISSING else self._decode(data)
        data = await sync_to_async(self._load_fresh, thread_sensitive=False)(ident)
        if client is not None:
            payload, ttl = ((orjson.dumps(_MISSING), self._negative_ttl) if data is None
                            else (orjson.dumps(data), self._redis_ttl))
            try:
                await client.execute("SET", self._redis_key(ident), payload, "EX", ttl)
            except RedisError as exc:
                redis_health.failed(exc)
        return None if data is None else self._decode(data)

    def _load_fresh(self, ident: str) -> dict[str, Any] | None:
        from django.db import close_old_connections

        close_old_connections()  # see billing.usage.write_events: threads outside requests
        return self._load(ident)

    def _evict(self, now: float) -> None:
        for ident in [i for i, (exp, _) in self._local.items() if exp <= now]:
            del self._local[ident]

    def invalidate(self, idents: list[str]) -> None:
        """Forget these identities everywhere (sync; called after a commit)."""
        for ident in idents:
            self._local.pop(ident, None)
        client = sync_redis()
        if client is not None and idents:
            try:
                client.delete(*(self._redis_key(i) for i in idents))
            except Exception:  # the change is saved; a stale copy expires with redis_ttl
                log.exception("could not invalidate %s snapshots in Redis", self.name)
