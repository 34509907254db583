"""Rate limits, concurrency and quota reservations, checked and taken in one step.

Two backends with the same answers:

* ``RedisLimiter`` (REDIS_URL set): two Lua scripts, ``lua/admit.lua`` (checks 5-8 of the
  key policy in order and takes every counter only if all pass: one round trip) and
  ``lua/settle.lua`` (frees the concurrency slot, refunds the unused reservation, counts
  tokens for TPM). Every gateway process shares the counters, so limits are exact across
  processes.
* ``MemoryLimiter`` (embedded default): the same algorithm on dicts, for one process.

Counters: RPM is a sliding log of the last 60 s (exact), RPD a counter per local calendar
day (resets at midnight in settings.TIME_ZONE), TPM six 10 s buckets, concurrency a set
of leases that expire on their own when a process dies (``lease_ms()``; running requests
renew theirs). Quotas are "accounts" holding the available amount in integer micro-units:
the tenant's balance and, when the key has a quota, the key's remaining quota. An account
is loaded from the database the first time it is needed (``init_account``) and is then
kept in step by the limiter itself (reservations, refunds) and by ``adjust_account``
(top-ups, quota edits).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from django.conf import settings

from portal.infra import rediskeys
from portal.infra.hotsettings import hot
from portal.infra.metrics import redis_roundtrip
from portal.infra.redis import fast_redis, sync_redis

# A limiter's clock: unix seconds, ``time.time`` unless a test passes its own. Every "now"
# the limiter uses comes from it, the Lua scripts' too (they take now from their caller, never
# Redis TIME), so a test moves time forward instead of sleeping; the call stays one round trip.
Clock = Callable[[], float]


def lease_ms() -> int:
    """How long a concurrency slot outlives a silent process (running requests renew it)."""
    return int(hot.GATEWAY_CONCURRENCY_LEASE_SECONDS * 1000)

if TYPE_CHECKING:
    from portal.infra.fastredis import ClusterFastRedis, FastRedis

LUA_DIR = Path(__file__).with_name("lua")

# The largest amount (micro-units) a reservation or a charge may be: 10^9 currency units.
# The Lua scripts refuse anything outside 0..MAX_MICRO the same way.
MAX_MICRO = 10**15

# Decision codes, in check order.
OK, NO_TENANT_ACCOUNT, NO_KEY_ACCOUNT = 0, -1, -2
QUOTA, RPM, RPD, TPM, CONCURRENCY = 5, 6, 7, 9, 8


@dataclass(frozen=True, slots=True)
class Admission:
    key_id: int
    tenant_id: int
    request_id: str
    rpm: int
    rpd: int
    tpm: int
    concurrency: int
    reserve: int  # micro-units
    key_quota: bool
    commit: bool = True
    session: str | None = None  # an explicit session (prompt_cache_key / session_id)


@dataclass(frozen=True, slots=True)
class Decision:
    code: int
    retry_after_ms: int = 0  # for refusals
    rpm_used: int = 0  # for admissions: requests in the RPM window, this one included
    rpm_reset_ms: int = 0
    binding: str | None = None  # the session's sticky route, if any
    # credentials cooling down: id -> unix ms their cool-down ends
    cooled: Mapping[int, int] = field(default_factory=dict)


class Limiter(Protocol):
    async def admit(self, a: Admission) -> Decision: ...
    async def settle(self, a: Admission, refund: int, tokens: int,
                     binding: str | None = None, row: bytes = b"") -> None: ...
    async def cool(self, ident: int, seconds: float) -> None: ...
    async def hit_credential(self, ident: int, rpm: int) -> bool: ...
    async def init_account(self, kind: str, ident: int, avail: int,
                           tenant_id: int | None = None) -> None: ...
    async def renew(self, leases: list[Admission]) -> None: ...
    # ``tenant_id``: a key account's tenant (its Redis name carries the tenant's hash tag).
    def adjust_account(self, kind: str, ident: int, delta: int,
                       tenant_id: int | None = None) -> None: ...
    def drop_account(self, kind: str, ident: int, tenant_id: int | None = None) -> None: ...
    def cooldowns(self) -> dict[int, float]: ...
    def uncool(self, ident: int) -> None: ...
    def available(self, kind: str, ident: int, tenant_id: int | None = None) -> int | None: ...


_day_cache: tuple[int, str, str, int] = (-1, "", "", 0)


def local_day_and_seconds_left(now: float | None = None) -> tuple[str, int]:
    """The local calendar day (settings.TIME_ZONE) and whole seconds until it ends.
    Cached per second: time-zone arithmetic is a visible cost at thousands of requests/s."""
    global _day_cache
    moment = now if now is not None else time.time()
    second = int(moment)
    cached_second, zone, day, left = _day_cache
    if cached_second == second and zone == (hot.TIME_ZONE or "UTC"):
        return day, left
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    zone_name = settings.TIME_ZONE or "UTC"  # the settings' own default
    tz = ZoneInfo(zone_name)
    current = datetime.fromtimestamp(moment, tz)
    midnight = (current + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    day = current.strftime("%Y%m%d")
    left = max(1, int((midnight - current).total_seconds()) + 1)
    _day_cache = (second, zone_name, day, left)
    return day, left


def reservation_member(a: Admission) -> str:
    """How a reservation is named in its zset: everything needed to give it back (the
    admit and settle scripts build the same string)."""
    return f"{a.request_id}|{a.reserve}|{a.key_id}|{int(a.key_quota)}"


def sticky_ttl() -> int:
    return int(hot.GATEWAY_STICKY_SECONDS)


class KeyNames:
    """The Redis names the admit and settle scripts take for one API key (rediskeys'
    names, built once per key rather than ~20 times a request). The day's RPD counter and
    a session's binding are named per request."""

    __slots__ = ("rpm", "tpm", "concurrency", "tenant_account", "key_account", "no_sticky",
                 "cooldowns", "reservations", "reclaimed", "key_account_prefix", "journal",
                 "tenant_unposted", "key_unposted")

    def __init__(self, k: int, t: int) -> None:
        self.rpm = rediskeys.rpm(k, tenant=t)
        self.tpm = rediskeys.tpm(k, tenant=t)
        self.concurrency = rediskeys.concurrency(k, tenant=t)
        self.tenant_account = rediskeys.account("tenant", t)
        self.key_account = rediskeys.account("key", k, tenant=t)
        self.no_sticky = rediskeys.sticky(k, None, tenant=t)
        self.cooldowns = rediskeys.cooldowns(rediskeys.group_of(t))
        self.reservations = rediskeys.reservations(t)
        self.reclaimed = rediskeys.reclaimed(t)
        self.key_account_prefix = rediskeys.account_prefix("key", tenant=t)
        self.journal = rediskeys.journal(rediskeys.group_of(t))
        self.tenant_unposted = rediskeys.unposted("tenant", t)
        self.key_unposted = rediskeys.unposted("key", k, tenant=t)


_key_names: dict[tuple[int, int, str], KeyNames] = {}
MAX_KEY_NAMES = 50_000  # keys' names held; all forgotten at once beyond that


def key_names(k: int, t: int) -> KeyNames:
    prefix = rediskeys.prefix()
    names = _key_names.get((k, t, prefix))
    if names is None:
        if len(_key_names) >= MAX_KEY_NAMES:
            _key_names.clear()
        names = _key_names[(k, t, prefix)] = KeyNames(k, t)
    return names


class RedisLimiter:
    """The shared backend: the Lua scripts run through the hot path's pipelined client
    (portal.infra.fastredis), so concurrent requests' calls share round trips."""

    def __init__(self, clock: Clock = time.time) -> None:
        self._clock = clock
        self._admit_src = (LUA_DIR / "admit.lua").read_text()
        self._settle_src = (LUA_DIR / "settle.lua").read_text()
        self._init_src = (LUA_DIR / "init_account.lua").read_text()

    @staticmethod
    def _client() -> FastRedis | ClusterFastRedis:
        client = fast_redis()
        assert client is not None
        return client

    async def admit(self, a: Admission) -> Decision:
        now = self._clock()
        day, seconds_left = local_day_and_seconds_left(now)
        k, t = a.key_id, a.tenant_id
        n = key_names(k, t)
        keys = [n.rpm, rediskeys.rpd(k, day, tenant=t), n.tpm, n.concurrency, n.tenant_account,
                n.key_account,
                rediskeys.sticky(k, a.session, tenant=t) if a.session else n.no_sticky,
                n.cooldowns, n.reservations, n.reclaimed]
        args = [int(now * 1000), a.request_id, a.rpm, a.rpd, seconds_left, a.tpm,
                a.concurrency, lease_ms(), a.reserve, int(a.key_quota), int(a.commit), k,
                n.key_account_prefix]
        started = time.perf_counter()
        result = await self._client().evalsha(self._admit_src, keys, args)
        redis_roundtrip("admit", started)
        code, x, y = result[:3]
        if code == OK:
            binding = result[3].decode() if a.session and result[3] else None
            flat = result[4]
            cooled = {int(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}
            return Decision(OK, rpm_used=int(x), rpm_reset_ms=int(y), binding=binding,
                            cooled=cooled)
        return Decision(int(code), retry_after_ms=int(x))

    async def settle(self, a: Admission, refund: int, tokens: int,
                     binding: str | None = None, row: bytes = b"") -> None:
        keys, args = self._settle_call(a, refund, tokens, binding, row)
        started = time.perf_counter()
        await self._client().evalsha(self._settle_src, keys, args)
        redis_roundtrip("settle", started)

    def _settle_call(self, a: Admission, refund: int, tokens: int, binding: str | None,
                     row: bytes) -> tuple[list[Any], list[Any]]:
        k, t = a.key_id, a.tenant_id
        n = key_names(k, t)
        keys = [n.concurrency, n.tenant_account, n.key_account, n.tpm,
                rediskeys.sticky(k, a.session, tenant=t) if a.session else n.no_sticky,
                n.reservations, n.journal, n.tenant_unposted, n.key_unposted, n.reclaimed]
        args = [a.request_id, a.reserve, a.reserve - refund, int(a.key_quota),
                tokens if a.tpm else 0, int(self._clock() * 1000),
                binding if a.session and binding else "", sticky_ttl(), k, row]
        return keys, args

    def send_settle(self, a: Admission, refund: int, tokens: int, binding: str | None,
                    row: bytes) -> asyncio.Future[Any] | None:
        """``settle`` without a coroutine: the script queued now on a ready connection and
        its reply's future returned (a NoScriptError in it: not loaded, send it with
        ``settle``). None, with nothing sent, when the client cannot send at once."""
        client = self._client()
        send = getattr(client, "send_evalsha", None)
        if send is None:
            return None
        keys, args = self._settle_call(a, refund, tokens, binding, row)
        reply: asyncio.Future[Any] | None = send(self._settle_src, keys, args)
        return reply

    async def renew(self, leases: list[Admission]) -> None:
        """Extend the concurrency slots and reservations of requests still running."""
        lease = lease_ms()
        expiry = int(self._clock() * 1000) + lease
        client = self._client()
        calls = []
        for a in leases:
            if a.concurrency:
                name = rediskeys.concurrency(a.key_id, tenant=a.tenant_id)
                calls += [client.execute("ZADD", name, "XX", expiry, a.request_id),
                          client.execute("PEXPIRE", name, lease * 2)]
            if a.reserve:
                calls.append(client.execute("ZADD", rediskeys.reservations(a.tenant_id), "XX", "CH",
                                            expiry, reservation_member(a)))
        await asyncio.gather(*calls)

    async def cool(self, ident: int, seconds: float) -> None:
        """Every group holds the cool-down (each admit reads its own group's copy)."""
        until = int((self._clock() + seconds) * 1000)
        client = self._client()
        await asyncio.gather(*(client.execute("HSET", name, str(ident), until)
                               for name in rediskeys.all_cooldowns()))

    async def hit_credential(self, ident: int, rpm: int) -> bool:
        """Count a request on a credential with a known upstream RPM; False once this minute
        is used up (fixed one-minute windows: enough to stay under the upstream's limit)."""
        key = rediskeys.credential_rpm(ident, int(self._clock() // 60))
        client = self._client()
        count, _ = await asyncio.gather(client.execute("INCR", key),
                                        client.execute("EXPIRE", key, 120))
        return int(count) <= rpm

    async def init_account(self, kind: str, ident: int, avail: int,
                           tenant_id: int | None = None) -> None:
        """Load an account with the database's amount, less what requests in flight hold
        and what settled requests cost before their rows were written: an account dropped
        (or lost) while requests ran comes back exact. ``tenant_id``: a key's tenant."""
        owner = ident if kind == "tenant" else tenant_id
        if owner is None:
            raise ValueError("a key account is loaded with its tenant")
        keys = [rediskeys.account(kind, ident, tenant=owner),
                rediskeys.unposted(kind, ident, tenant=owner), rediskeys.reservations(owner)]
        if not settings.REDIS_CLUSTER:  # costs of rows journalled under the old names too
            keys.append(rediskeys.legacy_unposted(kind, ident))
        await self._client().evalsha(self._init_src, keys,
                                     [avail, "" if kind == "tenant" else ident])

    def adjust_account(self, kind: str, ident: int, delta: int,
                       tenant_id: int | None = None) -> None:
        client = sync_redis()
        assert client is not None
        # Only an account already loaded is adjusted; a missing one loads the new value
        # from the database when next needed.
        client.eval(
            "if redis.call('EXISTS', KEYS[1]) == 1 then "
            "return redis.call('HINCRBY', KEYS[1], 'avail', ARGV[1]) end return nil",
            1, rediskeys.account(kind, ident, tenant=tenant_id), delta,
        )

    def drop_account(self, kind: str, ident: int, tenant_id: int | None = None) -> None:
        client = sync_redis()
        assert client is not None
        client.delete(rediskeys.account(kind, ident, tenant=tenant_id))

    def available(self, kind: str, ident: int, tenant_id: int | None = None) -> int | None:
        """The account's available micro-units, None if not loaded (sync; for the CLI).
        ``tenant_id``: a key account's tenant."""
        client = sync_redis()
        assert client is not None
        value = client.hget(rediskeys.account(kind, ident, tenant=tenant_id), "avail")
        return None if value is None else int(value)

    def uncool(self, ident: int) -> None:
        """End a cool-down now (sync; an operator re-enabled the credential)."""
        client = sync_redis()
        assert client is not None
        pipe = client.pipeline(transaction=False)
        for name in rediskeys.all_cooldowns():
            pipe.hdel(name, str(ident))
        pipe.execute()

    def cooldowns(self) -> dict[int, float]:
        """Credential id -> unix time its cool-down ends (sync; for the admin)."""
        client = sync_redis()
        assert client is not None
        now = self._clock()
        # Every group holds every cool-down; a group's admits drop the ended ones from its
        # copy, so group 0's is as current as any.
        return {int(k): int(v) / 1000
                for k, v in client.hgetall(rediskeys.cooldowns(0)).items()
                if int(v) / 1000 > now}


class MemoryLimiter:
    """The same algorithm for one process. A lock makes it safe to adjust accounts from the
    admin's worker threads while the event loop admits requests."""

    def __init__(self, clock: Clock = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._rpm: dict[int, deque[tuple[float, str]]] = {}
        self._rpd: dict[tuple[int, str], int] = {}
        self._tpm: dict[int, dict[int, int]] = {}
        self._conc: dict[int, dict[str, float]] = {}
        self._accounts: dict[tuple[str, int], int] = {}
        self._sticky: dict[tuple[int, str], tuple[str, float]] = {}
        self._cool: dict[int, float] = {}
        self._crpm: dict[tuple[int, int], int] = {}

    async def admit(self, a: Admission) -> Decision:
        with self._lock:
            return self._admit(a, self._clock() * 1000)

    # Over the complexity limit (C901) on purpose: mirrors lua/admit.lua check by check, in its
    # order, so the two stay comparable.
    def _admit(self, a: Admission, now: float) -> Decision:  # noqa: C901
        if not 0 <= a.reserve <= MAX_MICRO:
            raise ValueError(f"impossible reservation {a.reserve}")
        tenant = self._accounts.get(("tenant", a.tenant_id))
        if tenant is None:
            return Decision(NO_TENANT_ACCOUNT)
        key_avail = self._accounts.get(("key", a.key_id)) if a.key_quota else None
        if a.key_quota and key_avail is None:
            return Decision(NO_KEY_ACCOUNT)
        if tenant < a.reserve or (key_avail is not None and key_avail < a.reserve):
            return Decision(QUOTA, retry_after_ms=60_000)
        window = self._rpm.setdefault(a.key_id, deque())
        while window and window[0][0] <= now - 60_000:
            window.popleft()
        reset = int(window[0][0] + 60_000 - now) if window else 0
        if a.rpm and len(window) >= a.rpm:
            return Decision(RPM, retry_after_ms=reset)
        day, seconds_left = local_day_and_seconds_left(now / 1000)
        if a.rpd and self._rpd.get((a.key_id, day), 0) >= a.rpd:
            return Decision(RPD, retry_after_ms=seconds_left * 1000)
        if a.tpm:
            bucket = int(now // 10_000)
            live = {b: n for b, n in self._tpm.get(a.key_id, {}).items() if b > bucket - 6}
            self._tpm[a.key_id] = live
            if sum(live.values()) >= a.tpm:
                return Decision(TPM, retry_after_ms=int((min(live) + 6) * 10_000 - now))
        leases = self._conc.setdefault(a.key_id, {})
        for request_id in [r for r, expiry in leases.items() if expiry <= now]:
            del leases[request_id]
        if a.concurrency and len(leases) >= a.concurrency:
            return Decision(CONCURRENCY, retry_after_ms=1000)
        if not a.commit:
            binding, cooled = self._routing_state(a, now)
            return Decision(OK, rpm_used=len(window), rpm_reset_ms=reset, binding=binding,
                            cooled=cooled)
        if a.reserve:
            self._accounts[("tenant", a.tenant_id)] = tenant - a.reserve
            if key_avail is not None:
                self._accounts[("key", a.key_id)] = key_avail - a.reserve
        if a.rpm:
            window.append((now, a.request_id))
            reset = reset or 60_000
        if a.rpd:
            self._rpd = {k: v for k, v in self._rpd.items() if k[1] >= day}
            self._rpd[(a.key_id, day)] = self._rpd.get((a.key_id, day), 0) + 1
        if a.concurrency:
            leases[a.request_id] = now + lease_ms()
        binding, cooled = self._routing_state(a, now)
        return Decision(OK, rpm_used=len(window), rpm_reset_ms=reset, binding=binding,
                        cooled=cooled)

    def _routing_state(self, a: Admission, now: float) -> tuple[str | None, dict[int, int]]:
        binding = None
        if a.session:
            entry = self._sticky.get((a.key_id, a.session))
            if entry is not None and entry[1] > now:
                binding = entry[0]
        for ident in [i for i, until in self._cool.items() if until <= now]:
            del self._cool[ident]
        return binding, {i: int(u) for i, u in self._cool.items()}

    async def settle(self, a: Admission, refund: int, tokens: int,
                     binding: str | None = None, row: bytes = b"") -> None:
        if not 0 <= a.reserve - refund <= MAX_MICRO:
            raise ValueError(f"impossible settlement: reserve {a.reserve}, refund {refund}")
        with self._lock:
            self._conc.get(a.key_id, {}).pop(a.request_id, None)
            if a.session and binding:
                self._sticky[(a.key_id, a.session)] = (
                    binding, self._clock() * 1000 + sticky_ttl() * 1000)
            if refund:
                for account in (("tenant", a.tenant_id), ("key", a.key_id)):
                    if account in self._accounts and (account[0] == "tenant" or a.key_quota):
                        self._accounts[account] += refund
            if tokens and a.tpm:
                bucket = int(self._clock() // 10)
                buckets = self._tpm.setdefault(a.key_id, {})
                buckets[bucket] = buckets.get(bucket, 0) + tokens

    async def init_account(self, kind: str, ident: int, avail: int,
                           tenant_id: int | None = None) -> None:
        with self._lock:
            self._accounts.setdefault((kind, ident), avail)

    async def cool(self, ident: int, seconds: float) -> None:
        with self._lock:
            self._cool[ident] = (self._clock() + seconds) * 1000

    async def hit_credential(self, ident: int, rpm: int) -> bool:
        minute = int(self._clock() // 60)
        with self._lock:
            self._crpm = {k: v for k, v in self._crpm.items() if k[1] >= minute}
            count = self._crpm[(ident, minute)] = self._crpm.get((ident, minute), 0) + 1
        return count <= rpm

    async def renew(self, leases: list[Admission]) -> None:
        expiry = self._clock() * 1000 + lease_ms()
        with self._lock:
            for a in leases:
                if a.request_id in self._conc.get(a.key_id, {}):
                    self._conc[a.key_id][a.request_id] = expiry

    def adjust_account(self, kind: str, ident: int, delta: int,
                       tenant_id: int | None = None) -> None:
        with self._lock:
            if (kind, ident) in self._accounts:
                self._accounts[(kind, ident)] += delta

    def drop_account(self, kind: str, ident: int, tenant_id: int | None = None) -> None:
        with self._lock:
            self._accounts.pop((kind, ident), None)

    def available(self, kind: str, ident: int, tenant_id: int | None = None) -> int | None:
        with self._lock:
            return self._accounts.get((kind, ident))

    def uncool(self, ident: int) -> None:
        with self._lock:
            self._cool.pop(ident, None)

    def forget_accounts(self) -> None:
        """Drop every loaded account (they re-load from the database when next needed)."""
        with self._lock:
            self._accounts.clear()

    def cooldowns(self) -> dict[int, float]:
        now = self._clock() * 1000
        with self._lock:
            return {k: v / 1000 for k, v in self._cool.items() if v > now}


_memory = MemoryLimiter()
_fallback = MemoryLimiter()
_redis: RedisLimiter | None = None


def fallback_limiter() -> MemoryLimiter:
    """This process's own limiter for requests admitted while Redis is unreachable
    (GATEWAY_REDIS_FAILURE=open); its accounts are loaded from the database."""
    return _fallback


def limiter() -> Limiter:
    """The backend for this configuration (Redis when REDIS_URL is set)."""
    global _redis
    if not settings.REDIS_URL:
        return _memory
    if _redis is None:
        _redis = RedisLimiter()
    return _redis
