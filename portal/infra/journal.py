"""Write-behind to the database through Redis: a journal that survives the process that
filled it, and the per-event-loop writer that empties it in batches off the response path.

Used by the usage rows (``billing.usage``), the stored responses
(``gateway.stored.store``) and the captured bodies (``gateway.capture.store``).

``RedisJournal`` is one Redis list of documents (each element one row, as JSON). A writer
claims a batch atomically (moved to a claim list named in a zset with the claim time),
writes it, then releases the claim (and whatever else the release must drop, in the same
script). A writer that dies holding a claim leaves it to be put back by the next writer
after a timeout; writing a batch twice must be harmless (writers skip rows already stored).

``BatchWriter`` is a per-event-loop queue plus the task that drains it (and, with Redis,
the journal) every flush interval, in worker threads, and flushes at shutdown;
``SinkWriter`` is one that follows the GATEWAY_USAGE_* settings, and ``PerLoop`` keeps one
writer per event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings

from portal.infra import rediskeys

log = logging.getLogger(__name__)
T = TypeVar("T")

_CLAIM_LUA = """
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #items == 0 then return items end
redis.call('LTRIM', KEYS[1], #items, -1)
redis.call('RPUSH', KEYS[3], unpack(items))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return items
"""
_UNCLAIM_LUA = """
local items = redis.call('LRANGE', KEYS[3], 0, -1)
for i = #items, 1, -1 do redis.call('LPUSH', KEYS[1], items[i]) end
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[2], ARGV[1])
return #items
"""
# KEYS: 1 claims zset, 2 claim list, then hashes to drop a field from (one per pair).
# ARGV: 1 claim id, then the field of each hash.
_RELEASE_LUA = """
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
for i = 3, #KEYS do redis.call('HDEL', KEYS[i], ARGV[i - 1]) end
return 1
"""
_PENDING_LUA = """
local n = redis.call('LLEN', KEYS[1])
for _, claim in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  n = n + redis.call('LLEN', ARGV[1] .. claim)
end
return n
"""


class RedisJournal:
    """A Redis list of rows waiting for the database, with crash-safe batch claims.

    ``name`` prefixes the claim keys (``<name>:claims``, ``<name>:claim:<id>``); ``key``
    gives the list's own key (for the usage journal, the one the settle script appends to).
    ``group``: which of the usage journal's groups (``rediskeys.journal``); ``claims`` and
    ``claim_prefix`` name the claim keys otherwise than ``rediskeys`` does (the usage
    journal's names before the hash tags). Every key a journal touches shares one hash slot.
    """

    def __init__(self, name: str, key: Callable[[], str], group: int | None = None,
                 claims: Callable[[], str] | None = None,
                 claim_prefix: Callable[[], str] | None = None) -> None:
        self.name = name
        self.key = key
        self.group = group
        self._claims = claims
        self._claim_prefix = claim_prefix

    @classmethod
    def legacy(cls, name: str) -> RedisJournal:
        """The ``name`` journal (``store``, ``capture``) under the names before the hash
        tags: writers drain what an upgraded deployment left there (not on a cluster)."""
        return cls(name, lambda: rediskeys.legacy_store_journal(name)[0],
                   claims=lambda: rediskeys.legacy_store_journal(name)[1],
                   claim_prefix=lambda: rediskeys.legacy_store_journal(name)[2])

    def drain_with_legacy(self, write: Callable[[list[bytes]], int], batch_size: int,
                          what: str, logger: logging.Logger, max_batches: int = 100) -> int:
        """``drain``, then the same journal under its names before the hash tags (without
        a cluster: a cluster starts with the tagged names)."""
        written = self.drain(write, batch_size, what, logger, max_batches)
        if not settings.REDIS_CLUSTER:
            written += RedisJournal.legacy(self.name).drain(write, batch_size, what, logger,
                                                            max_batches)
        return written

    def claims_key(self) -> str:
        if self._claims is not None:
            return self._claims()
        return rediskeys.claims(journal=self.name, group=self.group)

    def claim_list(self, claim_id: str) -> str:
        if self._claim_prefix is not None:
            return self._claim_prefix() + claim_id
        return rediskeys.claim(claim_id, journal=self.name, group=self.group)

    # --- sync (writer threads, tasks, tools) ------------------------------------------

    def claim(self, client: Any, size: int) -> tuple[str, list[bytes]]:
        """Take up to ``size`` rows from the front, atomically: (claim id, rows)."""
        claim_id = uuid.uuid4().hex
        items = client.eval(_CLAIM_LUA, 3, self.key(), self.claims_key(),
                            self.claim_list(claim_id), size, int(time.time() * 1000), claim_id)
        return claim_id, list(items or [])

    def unclaim(self, client: Any, claim_id: str) -> int:
        """Put a claimed batch back at the front (the database could not take it)."""
        return int(client.eval(_UNCLAIM_LUA, 3, self.key(), self.claims_key(),
                               self.claim_list(claim_id), claim_id))

    def release(self, client: Any, claim_id: str,
                hdel: Sequence[tuple[str, str]] = ()) -> None:
        """The batch is written: drop the claim, and each (hash, field) in ``hdel``, in one
        step."""
        keys = [self.claims_key(), self.claim_list(claim_id), *(h for h, _ in hdel)]
        client.eval(_RELEASE_LUA, len(keys), *keys, claim_id, *(f for _, f in hdel))

    def recover(self, client: Any, timeout_seconds: float) -> int:
        """Put back the batches of writers that stopped holding them."""
        return self.put_back(client, client.zrangebyscore(*self.stale_query(timeout_seconds)))

    def stale_query(self, timeout_seconds: float) -> tuple[str, str, int]:
        """ZRANGEBYSCORE's arguments for the claims older than ``timeout_seconds``."""
        return (self.claims_key(), "-inf",
                int(time.time() * 1000) - int(timeout_seconds * 1000))

    def put_back(self, client: Any, stale: Sequence[bytes | str]) -> int:
        """Put back the claims ``stale`` names (``recover``, once they are known)."""
        back = 0
        for raw in stale:
            back += self.unclaim(client, raw.decode() if isinstance(raw, bytes) else raw)
        if back:
            log.warning("%s journal: put back %d rows claimed by a writer that stopped",
                        self.name, back)
        return back

    def push(self, client: Any, rows: Sequence[bytes]) -> None:
        if rows:
            client.rpush(self.key(), *rows)

    def length(self, client: Any) -> int:
        """Rows waiting or claimed by a writer."""
        return int(client.eval(_PENDING_LUA, 2, self.key(), self.claims_key(),
                               self.claim_list("")))

    def spool(self, documents: Callable[[], Sequence[bytes]], count: int, what: str,
              logger: logging.Logger) -> bool:
        """Keep rows the database could not take: push ``documents()`` (made here, so a
        failure to make them counts as a failure to spool). False without Redis, or when it
        fails too (logged on ``logger`` as "could not spool <count> <what> to Redis
        either")."""
        from portal.infra.redis import sync_redis

        client = sync_redis()
        if client is None:
            return False
        try:
            self.push(client, documents())
        except Exception:
            logger.exception("could not spool %d %s to Redis either", count, what)
            return False
        return True

    def drain(self, write: Callable[[list[bytes]], int], batch_size: int, what: str,
              logger: logging.Logger, max_batches: int = 100) -> int:
        """Write journaled rows with ``write`` (sync; returns rows written), a claimed batch
        at a time, after putting back the claims of writers that stopped. A batch the
        database cannot take now (OperationalError, InterfaceError) goes back to the front
        and ends the drain; any other failure of ``write`` propagates with the batch still
        claimed (put back after GATEWAY_USAGE_CLAIM_SECONDS). Returns rows written.

        The usage journal does not use this: its release also drops the rows' unposted
        entries, and it sets aside rows the database refuses (``billing.usage.drain_spool``).
        """
        from django.db import InterfaceError, OperationalError

        from portal.infra.redis import sync_redis

        client = sync_redis()
        if client is None:
            return 0
        self.recover(client, settings.GATEWAY_USAGE_CLAIM_SECONDS)
        written = 0
        for _ in range(max_batches):
            claim_id, items = self.claim(client, batch_size)
            if not items:
                break
            try:
                written += write(items)
            except (OperationalError, InterfaceError):
                self.unclaim(client, claim_id)
                logger.warning("%s journal: database unavailable; %d %s wait", self.name,
                               len(items), what)
                break
            self.release(client, claim_id)
        return written

    # --- async (the serving process) -------------------------------------------------

    async def pending(self) -> int | None:
        """Rows waiting or claimed, not yet in the database (None without Redis, or when
        it does not answer)."""
        from portal.infra.redis import fast_redis

        client = fast_redis()
        if client is None:
            return None
        try:
            return int(await client.execute("EVAL", _PENDING_LUA, 2, self.key(),
                                            self.claims_key(), self.claim_list("")))
        except Exception:
            return None


class BatchWriter(Generic[T]):
    """Per-event-loop queue plus the task that drains it in batches, in worker threads.

    Subclasses say how a batch is written (``write``, sync), what happens to one the
    database refused (``spool``: True when it is safe elsewhere, else it is kept and tried
    again), whether another sink takes batches first (``hand_off``), and whether this
    process also empties a Redis journal on each tick (``drain``)."""

    name = "batch"
    max_queue = 100_000

    def __init__(self) -> None:
        self._queue: list[T] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed: asyncio.Future[None] | None = None
        self._writing = 0

    # --- what a subclass says --------------------------------------------------------

    def batch_size(self) -> int:
        return 500

    def interval(self) -> float:
        return 1.0

    def write(self, batch: list[T]) -> Any:
        raise NotImplementedError

    def spool(self, batch: list[T]) -> bool:
        return False

    async def hand_off(self, batch: list[T]) -> bool:
        return False

    def drains(self) -> bool:
        """Whether each tick also writes the Redis journal."""
        return False

    def drain(self) -> int:
        return 0

    # --- the machinery ---------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Rows queued or being written right now."""
        return len(self._queue) + self._writing

    def add(self, item: T) -> None:
        self._queue.append(item)
        self.start()
        if len(self._queue) >= self.batch_size():
            self._wake.set()

    def wake(self) -> None:
        """Write soon (a journal row was added elsewhere)."""
        self.start()
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
            _flush_at_reactor_shutdown(self)

    async def _run(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval())
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()
            if self.drains():
                try:
                    await sync_to_async(self.drain, thread_sensitive=False)()
                except Exception as exc:
                    from portal.infra.redishealth import is_outage

                    if not is_outage(exc):  # an outage is logged once, by redis_health
                        log.exception("writing the %s journal failed", self.name)

    async def flush(self) -> None:
        while self._queue:
            batch = self._queue[: self.batch_size()]
            del self._queue[: len(batch)]
            self._writing = len(batch)
            try:
                if await self.hand_off(batch):
                    continue
                try:
                    await sync_to_async(self.write, thread_sensitive=False)(batch)
                except Exception:
                    log.exception("%s write failed for %d rows", self.name, len(batch))
                    if await sync_to_async(self.spool, thread_sensitive=False)(batch):
                        continue
                    # Nowhere else to keep them: retry on the next tick (bounded).
                    self._queue[:0] = batch
                    if len(self._queue) > self.max_queue:
                        dropped = len(self._queue) - self.max_queue
                        del self._queue[:dropped]
                        log.error("%s queue over %d rows: dropped the %d oldest", self.name,
                                  self.max_queue, dropped)
                    return
            finally:
                self._writing = 0

    async def close(self) -> None:
        """Flush and stop. Every caller awaits the same flush: the reactor's shutdown
        triggers run at once, and the upstream sessions are closed only after it."""
        if self._closed is None:
            self._closed = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closed)

    async def _close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None and self._task is not asyncio.current_task():
            # Let a write already under way (its worker thread may be writing the journal)
            # finish: returning first would let the loop stop under that thread, which
            # then waits for the loop forever (its live events are sent on the loop).
            await asyncio.wait([self._task])  # _run logs its own failures
        await self.flush()
        if self.drains():
            # The journal's rows are safe in Redis (any writer takes them), but a process
            # that writes it anyway leaves nothing waiting on its way out.
            try:
                await sync_to_async(self.drain, thread_sensitive=False)()
            except Exception:
                log.warning("could not write the %s journal at shutdown; it waits in "
                            "Redis for the next writer", self.name)


class SinkWriter(BatchWriter[T]):
    """A writer on the GATEWAY_USAGE_* settings: it writes every
    GATEWAY_USAGE_FLUSH_INTERVAL, and with Redis, unless GATEWAY_USAGE_SINK=redis (no
    database work in serving processes: ``manage.py usagewriter`` writes the journals), its
    task also writes its Redis journal (``drain``)."""

    def interval(self) -> float:
        return float(settings.GATEWAY_USAGE_FLUSH_INTERVAL)

    def drains(self) -> bool:
        return bool(settings.REDIS_URL) and settings.GATEWAY_USAGE_SINK != "redis"


W = TypeVar("W", bound=BatchWriter[Any])


class PerLoop(Generic[W]):
    """One writer per event loop (gateway processes run one; tests may run several)."""

    def __init__(self, factory: Callable[[], W]) -> None:
        self._factory = factory
        self._writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, W] = (
            weakref.WeakKeyDictionary())

    def get(self) -> W:
        loop = asyncio.get_running_loop()
        writer = self._writers.get(loop)
        if writer is None:
            writer = self._writers[loop] = self._factory()
        return writer

    def existing(self) -> W | None:
        return self._writers.get(asyncio.get_running_loop())

    def pending(self) -> int:
        """Rows this event loop's writer holds in memory or is writing now (0 without one)."""
        existing = self.existing()
        return existing.pending if existing is not None else 0

    async def close(self) -> None:
        """Flush this event loop's writer and stop it, if it has one (shutdown)."""
        existing = self.existing()
        if existing is not None:
            await existing.close()


def _flush_at_reactor_shutdown(writer: BatchWriter[Any]) -> None:
    """Under daphne (Twisted on asyncio) flush the queue before the reactor stops."""
    from portal.infra.shutdown import before_reactor_shutdown

    before_reactor_shutdown(writer.close)
