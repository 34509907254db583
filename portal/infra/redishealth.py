"""Whether this process can reach Redis right now, and what to do when it cannot.

Every hot-path user of Redis reports here: ``failed(exc)`` after a Redis error,
``succeeded()`` after a call that worked. While Redis is away, ``usable()`` says whether to
try it (once a second, so an outage costs one failed attempt per second, not one per
request: a hanging Redis would otherwise hold every request for the reply timeout). The
outage is logged once when it starts and once when it ends, never per request.

What the gateway does meanwhile is ``GATEWAY_REDIS_FAILURE``: ``closed`` (the default)
refuses requests that need the shared limits with a 503 and Retry-After; ``open`` serves
them with this process's own limiter and puts the shared accounts right when Redis returns
(the ``on_recovery`` callbacks).

While an outage lasts, a probe on the event loop that saw it begin pings Redis once per
RETRY_SECONDS, so the end of the outage (and with it the recovery callbacks, the metric and
the operator alert) does not wait for the next request: an idle fail-open process pays
what it owes the shared accounts within about a second of Redis coming back.

``on_change`` listeners (the operator alerts) hear of each outage's start and end, once
each, synchronously: they must return at once (hand any work to a thread).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from django.conf import settings

from portal.infra import metrics

log = logging.getLogger("turnpike.redis")

RETRY_SECONDS = 1.0
PROBE_TIMEOUT = 2.0


class RedisHealth:
    def __init__(self) -> None:
        self.down_since: float | None = None
        self._retry_at = 0.0
        self._recovery: list[Callable[[], Awaitable[None]]] = []
        self._listeners: list[Callable[[bool, str], None]] = []
        self._probe: asyncio.Task[None] | None = None

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def usable(self) -> bool:
        """Try Redis? Always while it is up; once per RETRY_SECONDS while it is down."""
        if self.down_since is None:
            return True
        now = time.monotonic()
        if now >= self._retry_at:
            self._retry_at = now + RETRY_SECONDS
            return True
        return False

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._retry_at = now + RETRY_SECONDS
        if self.down_since is None:
            self.down_since = now
            metrics.redis_lost()
            log.error("Redis is unreachable (%s: %s); GATEWAY_REDIS_FAILURE=%s: %s",
                      type(exc).__name__, exc, settings.GATEWAY_REDIS_FAILURE,
                      "refusing requests with 503 until it returns"
                      if settings.GATEWAY_REDIS_FAILURE == "closed"
                      else "serving with this process's own limits until it returns")
            self._tell(True, f"{type(exc).__name__}: {exc}")
        self._start_probe()

    def _start_probe(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # a sync caller (a worker thread): the loop's own users will notice
        probe = self._probe
        if probe is not None and not probe.done() and probe.get_loop() is loop:
            return
        self._probe = loop.create_task(self._probing(), name="redis-health-probe")

    async def _probing(self) -> None:
        """Ping Redis once per RETRY_SECONDS until it answers (or the outage is over)."""
        from portal.infra.redis import fast_redis

        while self.down_since is not None:
            await asyncio.sleep(RETRY_SECONDS)
            if self.down_since is None:
                return
            client = fast_redis()
            if client is None:
                return
            try:
                await asyncio.wait_for(client.execute("PING"), PROBE_TIMEOUT)
            except Exception as exc:
                if isinstance(exc, TimeoutError) or is_outage(exc):
                    self._retry_at = time.monotonic() + RETRY_SECONDS
                    continue
                log.warning("Redis health probe: %s: %s", type(exc).__name__, exc)
                continue
            self.succeeded()

    def succeeded(self) -> None:
        if self.down_since is None:
            return
        outage = time.monotonic() - self.down_since
        self.down_since = None
        metrics.redis_back()
        log.warning("Redis is reachable again after %.1f s", outage)
        self._tell(False, f"after {outage:.1f} s")
        for callback in self._recovery:
            task = asyncio.get_running_loop().create_task(callback())
            _background.add(task)
            task.add_done_callback(_background.discard)

    def on_recovery(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._recovery.append(callback)

    def on_change(self, listener: Callable[[bool, str], None]) -> None:
        """``listener(down, detail)`` at the start (down) and the end of each outage."""
        if listener not in self._listeners:
            self._listeners.append(listener)

    def _tell(self, down: bool, detail: str) -> None:
        for listener in self._listeners:
            try:
                listener(down, detail)
            except Exception:
                log.exception("a Redis health listener failed")


# Replies Redis gives while it cannot serve yet (starting, failing over): an outage too.
# TRYAGAIN (a Redis Cluster slot being moved) reaches here only once the cluster client has
# sent the command again for REDIS_CLUSTER_TRYAGAIN_SECONDS (portal.infra.fastredis).
_OUTAGE_REPLIES = ("LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "READONLY")


def is_outage(exc: BaseException) -> bool:
    """A Redis error that means "unreachable or not serving", not "this call was wrong"."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if isinstance(exc, (RedisConnectionError, RedisTimeoutError, ConnectionError)):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(_OUTAGE_REPLIES)


_background: set[asyncio.Task[None]] = set()
redis_health = RedisHealth()
