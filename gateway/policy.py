"""The key policy, checked in the reference gateways' order (README, "Key policy"):

    1 key present and known       401 missing_api_key / invalid_api_key  ┐ keys.authn, asked by
    2 key and tenant active, IP   403 api_key_disabled / tenant_disabled │ pipeline.authenticate
                                      / ip_not_allowed                   │
    3 not expired                 401 api_key_expired                    ┘
    4 model allowed               403 model_not_allowed                  (pipeline.resolve_model)
    5 balance / key quota         429 quota_exceeded         ┐
    6 requests per minute         429 rate_limit_rpm         │ admit(): one limiter call
    7 requests per day (+ TPM)    429 rate_limit_rpd / _tpm  │ that takes every counter
    8 requests in flight          429 concurrent_limit       ┘ only when all pass
    9 max_tokens cap              400 max_tokens_exceeded

Check 9 needs no counter, but a request that fails it must still report an earlier failing
check first, so it is decided locally and the limiter then runs in check-only mode.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from redis.exceptions import NoScriptError

from billing import pricing
from billing.usage import UsageEvent, encode_row, journal_started, record_usage
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    RateLimited,
    ServiceUnavailable,
)
from gateway.wire.usage import Usage
from keys import limits
from keys.limits import Admission, Decision, Limiter
from keys.snapshots import KeySnapshot
from portal.infra import rediskeys
from portal.infra.hotsettings import hot
from portal.infra.metrics import redis_roundtrip
from portal.infra.redishealth import is_outage, redis_health

log = logging.getLogger(__name__)


class QuotaExceeded(RateLimited):
    type = "insufficient_quota"
    code = "quota_exceeded"


REFUSALS: dict[int, tuple[str, str]] = {
    limits.QUOTA: ("quota_exceeded",
                   "Quota exceeded: the tenant's balance or this key's quota is used up."),
    limits.RPM: ("rate_limit_rpm", "Rate limit exceeded: too many requests per minute."),
    limits.RPD: ("rate_limit_rpd", "Rate limit exceeded: too many requests today."),
    limits.TPM: ("rate_limit_tpm", "Rate limit exceeded: too many tokens per minute."),
    limits.CONCURRENCY: ("concurrent_limit",
                         "Too many requests in flight for this key; wait for one to finish."),
}


# --- checks 5-9 ----------------------------------------------------------------------

def requested_max_tokens(payload: dict[str, Any]) -> int | None:
    """The largest output cap the request asks for, over every name clients use."""
    values = [payload.get(name) for name in ("max_tokens", "max_output_tokens",
                                             "max_completion_tokens")]
    caps = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    return max(caps) if caps else None


@dataclass(slots=True)
class Ticket:
    """An admitted request: what it reserved, and what settling it needs."""

    admission: Admission
    price: pricing.Price
    multiplier: Decimal
    headers: list[tuple[bytes, bytes]]
    limiter: Limiter  # the backend that admitted it (the shared one, or this process's own
    #                   while Redis is unreachable and GATEWAY_REDIS_FAILURE=open)
    binding: str | None = None  # the session's sticky route when admitted
    # credentials cooling down when admitted: id -> unix ms the cool-down ends
    cooled: Mapping[int, int] = field(default_factory=dict)


def _format_reset(ms: int) -> str:
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s"


async def admit(key: KeySnapshot, request_id: str, model: str, payload: dict[str, Any],
                body_size: int, session: str | None = None) -> Ticket:
    table = await pricing.aget_price_table()
    price = table.lookup(model)
    multiplier = Decimal(key.price_multiplier)
    asked = requested_max_tokens(payload)
    over_cap = bool(key.max_tokens and asked is not None and asked > key.max_tokens)
    reserve = 0
    if not price.is_free:
        estimate = pricing.estimate(
            price,
            input_tokens=math.ceil(body_size / hot.BILLING_BYTES_PER_TOKEN),
            max_output_tokens=asked or hot.BILLING_DEFAULT_MAX_OUTPUT_TOKENS,
            multiplier=multiplier,
        )
        reserve = pricing.to_micro(estimate, round_up=True)
    admission = Admission(
        key_id=key.key_id, tenant_id=key.tenant_id, request_id=request_id, rpm=key.rpm,
        rpd=key.rpd, tpm=key.tpm, concurrency=key.concurrency, reserve=reserve,
        key_quota=key.has_quota, commit=not over_cap, session=session,
    )
    decision, lim = await _decide(admission)
    if decision.code != limits.OK:
        code, message = REFUSALS[decision.code]
        error_class = QuotaExceeded if decision.code == limits.QUOTA else RateLimited
        raise error_class(message, code=code, type=None if decision.code == limits.QUOTA
                          else "invalid_request_error",
                          retry_after=decision.retry_after_ms / 1000)
    if over_cap:
        raise InvalidRequest(
            f"max_tokens/max_output_tokens of {asked} is over this key's limit of "
            f"{key.max_tokens}.", code="max_tokens_exceeded", param="max_tokens")
    headers: list[tuple[bytes, bytes]] = []
    if key.rpm:
        headers = [
            (b"x-ratelimit-limit-requests", str(key.rpm).encode()),
            (b"x-ratelimit-remaining-requests", str(max(0, key.rpm - decision.rpm_used)).encode()),
            (b"x-ratelimit-reset-requests", _format_reset(decision.rpm_reset_ms).encode()),
        ]
    ticket = Ticket(admission=admission, price=price, multiplier=multiplier, headers=headers,
                    limiter=lim, binding=decision.binding, cooled=decision.cooled)
    if (admission.concurrency or admission.reserve) and lim is not limits.fallback_limiter():
        leases.hold(admission)
    return ticket


async def _decide(admission: Admission) -> tuple[Decision, Limiter]:
    """Admit on the shared limiter; while Redis is unreachable, follow
    GATEWAY_REDIS_FAILURE (503, or this process's own limiter)."""
    lim = limits.limiter()
    if not hot.REDIS_URL:
        return await _admit_with_accounts(lim, admission), lim
    if redis_health.usable():
        try:
            decision = await lim.admit(admission)
            if decision.code in _NO_ACCOUNT:
                decision = await _admit_with_accounts(lim, admission, decision)
        except Exception as exc:
            if not is_outage(exc):
                raise
            redis_health.failed(exc)
        else:
            redis_health.succeeded()
            return decision, lim
    if settings.GATEWAY_REDIS_FAILURE != "open":
        raise ServiceUnavailable(
            "Turnpike cannot reach its limits store (Redis) right now, so it cannot admit "
            "requests; try again shortly.", code="limits_unavailable", retry_after=2)
    local = limits.fallback_limiter()
    return await _admit_with_accounts(local, admission), local


_NO_ACCOUNT = (limits.NO_TENANT_ACCOUNT, limits.NO_KEY_ACCOUNT)


async def _admit_with_accounts(lim: Limiter, admission: Admission,
                               first: Decision | None = None) -> Decision:
    """Admit, loading the tenant's balance or the key's quota into the limiter when it
    has none yet (``first``: the first admit's decision, when already made)."""
    for attempt in range(3):
        decision = first if attempt == 0 and first is not None else await lim.admit(admission)
        if decision.code == limits.NO_TENANT_ACCOUNT:
            avail = await sync_to_async(_tenant_available, thread_sensitive=False)(
                admission.tenant_id)
            await lim.init_account("tenant", admission.tenant_id, avail)
        elif decision.code == limits.NO_KEY_ACCOUNT:
            avail = await sync_to_async(_key_available, thread_sensitive=False)(
                admission.key_id)
            await lim.init_account("key", admission.key_id, avail,
                                   tenant_id=admission.tenant_id)
        else:
            return decision
    raise GatewayError("Could not load the tenant's balance into the limiter.")


def _tenant_available(tenant_id: int) -> int:
    from django.db import close_old_connections

    from keys.models import Tenant

    close_old_connections()
    balance = Tenant.objects.filter(pk=tenant_id).values_list("balance", flat=True).first()
    return pricing.to_micro(balance or Decimal(0))


def _key_available(key_id: int) -> int:
    from django.db import close_old_connections

    from keys.models import ApiKey

    close_old_connections()
    row = ApiKey.objects.filter(pk=key_id).values_list("quota", "quota_used").first()
    if row is None or row[0] is None:
        return 0
    return pricing.to_micro(row[0] - row[1])


# --- settling -------------------------------------------------------------------------

def charge(ticket: Ticket, usage: Usage | None, served: bool) -> Decimal:
    """What the request costs: nothing unless the upstream served it."""
    if not served:
        return Decimal(0)
    usage = usage or Usage()
    return pricing.cost(
        ticket.price, input_tokens=usage.input_tokens, cached_tokens=usage.cached_tokens,
        output_tokens=usage.output_tokens, reasoning_tokens=usage.reasoning_tokens,
        multiplier=ticket.multiplier,
    )


_settling: set[asyncio.Future[None]] = set()


def settling() -> set[asyncio.Future[None]]:
    """The settlements running now (a draining process waits for them: portal.drain)."""
    return set(_settling)


def _settle_task(ticket: Ticket, cost: Decimal, usage: Usage | None, binding: str | None,
                 event: UsageEvent) -> asyncio.Future[None]:
    """The settlement under way, as a future done once it is over. On the shared limiter
    with its connection up (the usual case) the script is written at once and its reply
    finishes the work in a callback (``_sent``); otherwise the work runs as a task."""
    done = _send_settle(ticket, cost, usage, binding, event)
    if done is None:
        done = asyncio.get_running_loop().create_task(
            _settle(ticket, cost, usage, binding, event))
    _settling.add(done)
    done.add_done_callback(_settling.discard)
    return done


def settle(ticket: Ticket, cost: Decimal, usage: Usage | None, binding: str | None,
           event: UsageEvent) -> Awaitable[None]:
    """Free the slot, close the reservation (refund or charge), count TPM tokens, bind the
    session to the route that served it and journal the usage row; await the result to
    wait for it: a client that has its whole answer finds its slot free on any process.
    The work is under way when this returns, and shielded: cancelling the request cannot
    cut it short."""
    return asyncio.shield(_settle_task(ticket, cost, usage, binding, event))


def settle_later(ticket: Ticket, cost: Decimal, usage: Usage | None, binding: str | None,
                 event: UsageEvent) -> None:
    """Settle without waiting (the request is already over: nobody reads an answer)."""
    _settle_task(ticket, cost, usage, binding, event)


def _figures(ticket: Ticket, cost: Decimal, usage: Usage | None,
             binding: str | None) -> tuple[int, int, int, str | None]:
    """(micro-units charged, refund, TPM tokens, binding to keep) of a settlement."""
    a = ticket.admission
    micro = pricing.to_micro(cost)
    tokens = (usage.input_tokens + usage.output_tokens) if usage else 0
    return micro, a.reserve - micro, tokens, binding if a.session else None


def _send_settle(ticket: Ticket, cost: Decimal, usage: Usage | None, binding: str | None,
                 event: UsageEvent) -> asyncio.Future[None] | None:
    """``_settle`` on the shared limiter without a task: the script is queued now and
    ``_sent`` does what follows its reply. None (nothing done) when the limiter is not the
    shared one or cannot send at once (no ready connection, a cluster client)."""
    lim = ticket.limiter
    if type(lim) is not limits.RedisLimiter or not hot.REDIS_URL:
        return None
    a = ticket.admission
    try:
        _, refund, tokens, binding = _figures(ticket, cost, usage, binding)
        row = encode_row(event)
        started = time.perf_counter()
        reply = lim.send_settle(a, refund, tokens, binding, row)
    except Exception:  # the task's path raises it where it always did (settle_later runs
        return None    # in the request's finally: nothing may escape from here)
    if reply is None:
        return None
    leases.release(a)
    done: asyncio.Future[None] = reply.get_loop().create_future()
    reply.add_done_callback(lambda reply: _sent(reply, done, started, lim, a, refund, tokens,
                                                binding, row, event))
    return done


def _sent(reply: asyncio.Future[Any], done: asyncio.Future[None], started: float,
          lim: Limiter, a: Admission, refund: int, tokens: int, binding: str | None,
          row: bytes, event: UsageEvent) -> None:
    if reply.cancelled():  # as the task would have been
        done.cancel()
        return
    exc = reply.exception()
    if isinstance(exc, NoScriptError):  # the script is not loaded yet: the usual path does
        task = asyncio.get_running_loop().create_task(
            _settle_shared(lim, a, refund, tokens, binding, row, event))
        task.add_done_callback(lambda _: _finish(done))
        return
    try:
        if exc is None:
            redis_roundtrip("settle", started)
        _settled(exc, lim, a, refund, tokens, binding, row, event)
    finally:
        done.set_result(None)


def _finish(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


async def _settle(ticket: Ticket, cost: Decimal, usage: Usage | None, binding: str | None,
                  event: UsageEvent) -> None:
    a = ticket.admission
    leases.release(a)
    micro, refund, tokens, binding = _figures(ticket, cost, usage, binding)
    lim = ticket.limiter
    if hot.REDIS_URL and lim is not limits.fallback_limiter():
        await _settle_shared(lim, a, refund, tokens, binding, encode_row(event), event)
        return
    try:
        await lim.settle(a, refund, tokens, binding)
    except Exception:
        log.exception("settling %s failed", a.request_id)
    if lim is limits.fallback_limiter():
        outage_charges.add(a, micro)
    record_usage(event)


async def _settle_shared(lim: Limiter, a: Admission, refund: int, tokens: int,
                         binding: str | None, row: bytes, event: UsageEvent) -> None:
    try:
        await lim.settle(a, refund, tokens, binding, row)
    except Exception as exc:
        _settled(exc, lim, a, refund, tokens, binding, row, event)
    else:
        _settled(None, lim, a, refund, tokens, binding, row, event)


def _settled(exc: BaseException | None, lim: Limiter, a: Admission, refund: int, tokens: int,
             binding: str | None, row: bytes, event: UsageEvent) -> None:
    """After the shared limiter's settle: its health, and on an outage the charge kept
    for later and the row written from here."""
    if exc is None:
        redis_health.succeeded()
        journal_started()
        return
    if not is_outage(exc):
        log.error("settling %s failed", a.request_id, exc_info=exc)
        return
    redis_health.failed(exc)
    # Whether Redis ran the script before the connection broke is unknown: send it
    # again when Redis answers (settling twice changes nothing), and write the row
    # from here meanwhile (a row written twice is stored once).
    outage_charges.resettle(lim, a, refund, tokens, binding, row)
    record_usage(event)


class OutageCharges:
    """What the shared accounts must still learn once Redis answers again: the costs of
    requests admitted by this process's own limiter during the outage (GATEWAY_REDIS_FAILURE
    =open; the database is charged by their usage rows as usual), and settlements whose
    reply was lost, sent again. This puts the shared accounts back in line with the
    database."""

    def __init__(self) -> None:
        # (kind, id, tenant id) -> micro-units
        self._due: dict[tuple[str, int, int], int] = {}
        self._settles: list[tuple[Limiter, Admission, int, int, str | None, bytes]] = []

    def add(self, a: Admission, micro: int) -> None:
        if not micro:
            return
        accounts = [("tenant", a.tenant_id, a.tenant_id)]
        if a.key_quota:
            accounts.append(("key", a.key_id, a.tenant_id))
        for account in accounts:
            self._due[account] = self._due.get(account, 0) + micro
        self._soon()

    def resettle(self, lim: Limiter, a: Admission, refund: int, tokens: int,
                 binding: str | None, row: bytes) -> None:
        self._settles.append((lim, a, refund, tokens, binding, row))

    def _soon(self) -> None:
        if not redis_health.down:
            task = asyncio.get_running_loop().create_task(self.apply())
            _settling.add(task)
            task.add_done_callback(_settling.discard)

    async def apply(self) -> None:
        from portal.infra.redis import fast_redis

        client = fast_redis()
        if client is None:
            return
        settles, self._settles = self._settles, []
        for index, (lim, a, refund, tokens, binding, row) in enumerate(settles):
            try:
                await lim.settle(a, refund, tokens, binding, row)
            except Exception:
                self._settles[:0] = settles[index:]
                log.warning("could not settle %d requests yet", len(settles) - index)
                return
        journal_started()
        due, self._due = self._due, {}
        try:
            for (kind, ident, tenant_id), micro in due.items():
                await client.execute("EVAL", _ADJUST_LUA, 1,
                                     rediskeys.account(kind, ident, tenant=tenant_id), -micro)
        except Exception:
            for account, micro in due.items():  # try again on the next recovery
                self._due[account] = self._due.get(account, 0) + micro
            log.warning("could not put %d shared accounts back in line yet", len(due))
            return
        limits.fallback_limiter().forget_accounts()
        if due or settles:
            log.warning("after the Redis outage: %d settlements sent again, %d shared "
                        "accounts charged for requests served meanwhile", len(settles),
                        len(due))


_ADJUST_LUA = ("if redis.call('EXISTS', KEYS[1]) == 1 then "
               "return redis.call('HINCRBY', KEYS[1], 'avail', ARGV[1]) end return nil")
outage_charges = OutageCharges()
redis_health.on_recovery(outage_charges.apply)


class LeaseKeeper:
    """Renews the concurrency slots and balance reservations of this process's running
    requests, so a long stream keeps them while a crashed process's expire after
    limits.lease_ms() (its reservations are then given back by the admit script)."""

    def __init__(self) -> None:
        self._held: dict[str, Admission] = {}  # concurrency slots and reservations
        self._task: asyncio.Task[None] | None = None

    def hold(self, a: Admission) -> None:
        self._held[a.request_id] = a
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def release(self, a: Admission) -> None:
        self._held.pop(a.request_id, None)

    async def _run(self) -> None:
        while self._held:
            await asyncio.sleep(limits.lease_ms() / 3000)
            held = list(self._held.values())
            if held:
                try:
                    await limits.limiter().renew(held)
                except Exception as exc:
                    if not is_outage(exc):
                        log.exception("renewing %d leases failed", len(held))


leases = LeaseKeeper()
