"""The shared state of background runs (``gateway.stored.background``): each run's status,
cancel flag, lease and events, readable and changeable from any process.

With Redis (any process may take the POST, run it, stream it, cancel it or reap it)::

    bg:{id}          hash: ``status`` (queued | in_progress | a terminal status), ``seq``
                     (the last event's sequence_number), ``cancel`` (1 once asked)
    bg:{id}:events   stream: one entry per event, entry id ``0-<seq + 1>``, field ``e`` = the
                     event as JSON, so ``starting_after=N`` is a range read from ``0-<N + 2>``
    bg:leases        zset: id -> unix ms until which the run counts as alive (queued: until
                     GATEWAY_BACKGROUND_QUEUE_SECONDS; in progress: renewed by the runner's
                     heartbeat for GATEWAY_CONCURRENCY_LEASE_SECONDS); past it, ``reap``
                     fails the run
    resp:{id}        the response document of ``gateway.stored.store``, rewritten with each
                     status, so ``GET /v1/responses/{id}`` shows the status from any process

Without Redis (the embedded default: one process) the same state lives in this process.

Every status change is one atomic step that names the statuses it may leave (``move``), so
the runner, a cancel and the reaper never both end a run: whoever moved it to a terminal
status writes its last event and its final record; the others find it ended.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson
from django.conf import settings

from gateway.stored import store
from gateway.stored.records import StoredRecord
from portal.infra import rediskeys
from portal.infra.redis import fast_redis

TERMINAL = frozenset({"completed", "failed", "incomplete", "cancelled"})


state_key = rediskeys.background_run
events_key = rediskeys.background_events
leases_key = rediskeys.background_leases


def now_ms() -> int:
    return int(time.time() * 1000)


def keep_seconds() -> int:
    """How long a run's state and events outlive its last change in Redis (its record is in
    the database by then; the events too)."""
    return max(60, int(settings.GATEWAY_STORE_CACHE_SECONDS))


def doc_seconds(record: StoredRecord) -> int:
    return max(1, min(int(record.expires_at - time.time()), keep_seconds()))


# KEYS: 1 state, 2 events, 3 leases, 4 doc. ARGV: 1 id, 2 lease deadline (ms), 3 TTL,
# 4 doc, 5 doc TTL, 6 the admission (JSON), 7.. the first events (sequence numbers 0, 1, ...).
_CREATE_LUA = """
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'status', 'queued', 'seq', #ARGV - 7, 'admission', ARGV[6])
for i = 7, #ARGV do redis.call('XADD', KEYS[2], '0-' .. (i - 6), 'e', ARGV[i]) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('SET', KEYS[4], ARGV[4], 'EX', ARGV[5])
return 1
"""
# KEYS: 1 state, 2 events. ARGV: 1 the first event's sequence number, 2.. the events.
# Only a run in progress takes events (one that was reaped or cancelled meanwhile does not).
_APPEND_LUA = """
if redis.call('HGET', KEYS[1], 'status') ~= 'in_progress' then return 0 end
local seq = tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('XADD', KEYS[2], '0-' .. (seq + i - 1), 'e', ARGV[i]) end
redis.call('HSET', KEYS[1], 'seq', seq + #ARGV - 2)
return 1
"""
# KEYS: 1 state, 2 leases, 3 doc, 4 events. ARGV: 1 id, 2 the statuses it may leave
# (space-separated), 3 the new status, 4 the new lease deadline ('' ends the lease), 5 the
# new doc ('' keeps it), 6 its TTL, 7 '' or ms: only if the lease ran out before then (the
# reaper), 8 the state's TTL, 9 '' or the type of an event to append, 10 that event's other
# fields as a JSON object (its sequence number is the next one, spliced in here).
# Returns {1, the last sequence number} or {0, the status it found}.
_MOVE_LUA = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {0, ''} end
local allowed = false
for s in string.gmatch(ARGV[2], '%S+') do if s == status then allowed = true end end
if not allowed then return {0, status} end
if ARGV[7] ~= '' then
  local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if score and tonumber(score) >= tonumber(ARGV[7]) then return {0, status} end
end
redis.call('HSET', KEYS[1], 'status', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[8])
if ARGV[4] == '' then redis.call('ZREM', KEYS[2], ARGV[1])
else redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1]) end
if ARGV[5] ~= '' then redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[6]) end
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '-1')
if ARGV[9] ~= '' then
  seq = seq + 1
  local body = '{"type":"' .. ARGV[9] .. '","sequence_number":' .. seq
  if ARGV[10] ~= '{}' then body = body .. ',' .. string.sub(ARGV[10], 2)
  else body = body .. '}' end
  redis.call('XADD', KEYS[4], '0-' .. (seq + 1), 'e', body)
  redis.call('HSET', KEYS[1], 'seq', seq)
end
redis.call('EXPIRE', KEYS[4], ARGV[8])
return {1, seq}
"""
# KEYS: 1 state, 2 leases, 3 events, 4 the response's tombstone, 5 its doc. ARGV: 1 id, 2 the
# new lease deadline, 3 TTL. 'run', 'cancel' (asked, or the response was deleted) or 'stop' (the run
# is no longer in progress: reaped, or cancelled before it started).
_BEAT_LUA = """
local st = redis.call('HMGET', KEYS[1], 'status', 'cancel')
if st[1] ~= 'in_progress' then return 'stop' end
redis.call('ZADD', KEYS[2], 'XX', ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[3])
redis.call('EXPIRE', KEYS[5], ARGV[3])
if st[2] == '1' or redis.call('EXISTS', KEYS[4]) == 1 then return 'cancel' end
return 'run'
"""
# KEYS: 1 state. The status it found ('' for none); a run in progress is flagged.
_CANCEL_LUA = """
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'in_progress' then redis.call('HSET', KEYS[1], 'cancel', '1') end
return st or ''
"""
# KEYS: 1 state, 2 events. ARGV: 1 the first entry id, 2 the most entries.
# {the status ('' for none), the entries (nil when there is no log)}.
_READ_LUA = """
local status = redis.call('HGET', KEYS[1], 'status') or ''
if redis.call('EXISTS', KEYS[2]) == 0 then return {status, false} end
return {status, redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])}
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


class RedisRuns:
    """The shared state in Redis (every process sees the same runs)."""

    @staticmethod
    def _client() -> Any:
        client = fast_redis()
        assert client is not None
        return client

    async def create(self, record: StoredRecord, events: list[dict[str, Any]],
                     deadline_ms: int, admission: dict[str, Any]) -> None:
        """A queued run: its record, its first events, its lease until ``deadline_ms`` and
        the admission whose slot and reservation it holds (renewed by ``queued``'s caller
        until a worker starts it)."""
        rid = record.id
        await self._client().evalsha(
            _CREATE_LUA, [state_key(rid), events_key(rid), leases_key(), store.doc_key(rid)],
            [rid, deadline_ms, keep_seconds(), record.encode(), doc_seconds(record),
             orjson.dumps(admission), *(orjson.dumps(e) for e in events)])

    async def move(self, rid: str, from_: tuple[str, ...], to: str, *,
                   record: StoredRecord | None = None, deadline_ms: int | None = None,
                   stale_before: int | None = None,
                   event: tuple[str, dict[str, Any]] | None = None) -> int | None:
        """Change the status if it is one of ``from_`` (and, with ``stale_before``, only if
        the lease ran out before then); with ``event``, append it (type, other fields) as
        the next event. The last sequence number, or None when the run was elsewhere."""
        done, value = await self._client().evalsha(
            _MOVE_LUA,
            [state_key(rid), leases_key(), store.doc_key(rid), events_key(rid)],
            [rid, " ".join(from_), to, "" if deadline_ms is None else deadline_ms,
             record.encode() if record is not None else "",
             doc_seconds(record) if record is not None else 1,
             "" if stale_before is None else stale_before, keep_seconds(),
             event[0] if event is not None else "",
             orjson.dumps(event[1]) if event is not None else "{}"])
        if done:
            wake(rid)
        return int(value) if done else None

    async def append(self, rid: str, first_seq: int, events: list[dict[str, Any]]) -> bool:
        if not events:
            return True
        taken = bool(await self._client().evalsha(
            _APPEND_LUA, [state_key(rid), events_key(rid)],
            [first_seq, *(orjson.dumps(e) for e in events)]))
        wake(rid)
        return taken

    async def beat(self, rid: str, deadline_ms: int) -> str:
        return _text(await self._client().evalsha(
            _BEAT_LUA, [state_key(rid), leases_key(), events_key(rid),
                        store.tombstone_key(rid), store.doc_key(rid)],
            [rid, deadline_ms, keep_seconds()]))

    async def cancel(self, rid: str) -> str:
        return _text(await self._client().evalsha(_CANCEL_LUA, [state_key(rid)], []))

    async def status(self, rid: str) -> str:
        return _text(await self._client().execute("HGET", state_key(rid), "status"))

    async def read(self, rid: str, after: int,
                   limit: int = 1000) -> tuple[str, list[dict[str, Any]] | None]:
        """(the run's status, its events after sequence number ``after``: None when it has
        no log here)."""
        status, entries = await self._client().evalsha(
            _READ_LUA, [state_key(rid), events_key(rid)], [f"0-{after + 2}", limit])
        if entries is None:
            return _text(status), None
        return _text(status), [orjson.loads(fields[1]) for _, fields in entries]

    async def stale(self, before_ms: int, limit: int = 100) -> list[str]:
        ids = await self._client().execute("ZRANGEBYSCORE", leases_key(), "-inf", before_ms,
                                           "LIMIT", 0, limit)
        return [_text(i) for i in ids]

    async def queued(self, after_ms: int, limit: int = 1000) -> list[dict[str, Any]]:
        """The admissions of the runs still waiting for a worker (their leases live)."""
        client = self._client()
        ids = await client.execute("ZRANGEBYSCORE", leases_key(), after_ms, "+inf",
                                   "LIMIT", 0, limit)
        states = await asyncio.gather(*(
            client.execute("HMGET", state_key(_text(i)), "status", "admission") for i in ids))
        return [orjson.loads(admission) for status, admission in states
                if status == b"queued" and admission]


@dataclass(slots=True)
class LocalRun:
    status: str
    events: list[dict[str, Any]]
    deadline_ms: int
    cancel: bool = False


class LocalRuns:
    """Without Redis: the runs of this process (the only one there is), in a dict. The
    response document is the store's pending record (``store.local``)."""

    def __init__(self) -> None:
        self.runs: dict[str, LocalRun] = {}

    async def create(self, record: StoredRecord, events: list[dict[str, Any]],
                     deadline_ms: int, admission: dict[str, Any]) -> None:
        self.runs[record.id] = LocalRun("queued", list(events), deadline_ms)
        store.local.pending[record.id] = record

    async def move(self, rid: str, from_: tuple[str, ...], to: str, *,
                   record: StoredRecord | None = None, deadline_ms: int | None = None,
                   stale_before: int | None = None,
                   event: tuple[str, dict[str, Any]] | None = None) -> int | None:
        run = self.runs.get(rid)
        if run is None or run.status not in from_:
            return None
        if stale_before is not None and run.deadline_ms >= stale_before:
            return None
        run.status = to
        if deadline_ms is not None:
            run.deadline_ms = deadline_ms
        if record is not None:
            store.local.pending[rid] = record
        if event is not None:
            run.events.append({"type": event[0], "sequence_number": len(run.events),
                               **event[1]})
        wake(rid)
        if to in TERMINAL:
            self._forget_later(rid)
        return len(run.events) - 1

    async def append(self, rid: str, first_seq: int, events: list[dict[str, Any]]) -> bool:
        run = self.runs.get(rid)
        if run is None or run.status != "in_progress":
            return False
        run.events.extend(events)
        wake(rid)
        return True

    async def beat(self, rid: str, deadline_ms: int) -> str:
        run = self.runs.get(rid)
        if run is None or run.status != "in_progress":
            return "stop"
        run.deadline_ms = deadline_ms
        return "cancel" if run.cancel or store.local.is_deleted(rid, time.time()) else "run"

    async def cancel(self, rid: str) -> str:
        run = self.runs.get(rid)
        if run is None:
            return ""
        if run.status == "in_progress":
            run.cancel = True
        return run.status

    async def status(self, rid: str) -> str:
        run = self.runs.get(rid)
        return run.status if run is not None else ""

    async def read(self, rid: str, after: int,
                   limit: int = 1000) -> tuple[str, list[dict[str, Any]] | None]:
        run = self.runs.get(rid)
        if run is None:
            return "", None
        return run.status, run.events[after + 1: after + 1 + limit]

    async def stale(self, before_ms: int, limit: int = 100) -> list[str]:
        return [rid for rid, run in self.runs.items()
                if run.status not in TERMINAL and run.deadline_ms < before_ms][:limit]

    async def queued(self, after_ms: int, limit: int = 1000) -> list[dict[str, Any]]:
        return []  # one process: the POST's own lease keeper holds them until they run

    def _forget_later(self, rid: str) -> None:
        """An ended run's events stay a while for streams still reading them; its record
        (with the events) answers after that."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.call_later(keep_seconds(), self.runs.pop, rid, None)


# Streams following a run, woken at once by news from a runner in the same process (with
# Redis, a runner elsewhere is noticed by polling: ``background.FOLLOW_POLL``).
_waiters: dict[str, list[asyncio.Future[None]]] = {}


def wake(rid: str) -> None:
    for waiter in _waiters.pop(rid, ()):
        if not waiter.done():
            waiter.set_result(None)


async def wait(rid: str, seconds: float) -> None:
    """Until a runner in this process has news of ``rid``, or ``seconds`` have passed."""
    waiter = asyncio.get_running_loop().create_future()
    _waiters.setdefault(rid, []).append(waiter)
    try:
        await asyncio.wait_for(waiter, seconds)
    except TimeoutError:
        pass
    finally:
        left = _waiters.get(rid)
        if left is not None and waiter in left:
            left.remove(waiter)
            if not left:
                del _waiters[rid]


_local = LocalRuns()
_redis = RedisRuns()


def runs() -> RedisRuns | LocalRuns:
    """Where runs live: Redis when configured, else this process."""
    return _redis if settings.REDIS_URL else _local
