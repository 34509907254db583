"""The limiter's accounts against the database: drift reports (``billing check``) and the
reconciler (``billing reconcile``, the ``billing.reconcile_accounts`` task).

In Redis each tenant (and each key with a quota) has an account, ``avail``: what requests
may still reserve against; and a hash of "unposted" costs: requests settled whose usage
rows are not yet in the database. Reservations of requests in flight sit in the tenant's
reservations zset, each with a lease its process renews. When everything is in step:

    avail = database amount - reservations in flight - unposted

(database amount: the tenant's balance, or the key's quota minus what it used). Drift is
``avail`` minus the right side. A reservation whose lease ran out belongs to a process that
died; it is given back (by the next admission for that tenant, or the sweep here) and counts
as drift until then.

Two reads a moment apart must agree before anything is called drift: a writer that has just
committed rows but not yet taken them off ``unposted`` makes a difference that is gone a
millisecond later.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from keys import limits
from keys.money import from_micro, to_micro
from portal.infra import rediskeys
from portal.infra.redis import sync_redis

log = logging.getLogger(__name__)

# KEYS: 1 account hash, 2 the tenant's reservations zset, 3 the account's unposted hash.
# ARGV: 1 now ms, 2 key id ('' for the tenant's account).
# Returns {avail or false, unposted, reserved live, reserved stale}.
_READ_LUA = """
local avail = redis.call('HGET', KEYS[1], 'avail')
local unposted = 0
for _, cost in ipairs(redis.call('HVALS', KEYS[3])) do unposted = unposted + cost end
local live, stale = 0, 0
local now = tonumber(ARGV[1])
local all = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = 1, #all, 2 do
  local _, amount, key_id, quota = string.match(all[i], '^(.*)|(%d+)|(%d+)|([01])$')
  if amount and (ARGV[2] == '' or (key_id == ARGV[2] and quota == '1')) then
    if tonumber(all[i + 1]) > now then live = live + amount else stale = stale + amount end
  end
end
return {avail or false, unposted, live, stale}
"""

_RECLAIM_LUA = (Path(limits.__file__).with_name("lua") / "reclaim.lua").read_text()

_ADJUST_LUA = ("if redis.call('EXISTS', KEYS[1]) == 1 then "
               "return redis.call('HINCRBY', KEYS[1], 'avail', ARGV[1]) end return nil")


@dataclass(frozen=True, slots=True)
class Drift:
    kind: str  # "tenant" or "key"
    ident: int
    tenant_id: int
    name: str
    database: Decimal  # the balance, or the key's quota left
    available: Decimal  # the limiter's avail
    reserved: Decimal  # reservations in flight
    unposted: Decimal
    stranded: Decimal  # reservations whose lease ran out
    drift: Decimal  # available - (database - reserved - unposted)

    def describe(self) -> str:
        return (f"{self.kind} {self.name}: limiter has {self.available} available, the "
                f"database says {self.database} less {self.reserved} reserved and "
                f"{self.unposted} not yet written: drift {self.drift:+}"
                + (f" ({self.stranded} held by expired reservations)" if self.stranded else ""))


def _loaded(client: object, kind: str) -> list[int]:
    out = []
    for raw in client.scan_iter(rediskeys.accounts_pattern(kind),  # type: ignore[attr-defined]
                                count=1000):
        ident = rediskeys.account_id(raw, kind)
        if ident is not None:
            out.append(ident)
    return out


def _read_drifts() -> dict[tuple[str, int], Drift]:
    from keys.models import ApiKey, Tenant

    client = sync_redis()
    if client is None:
        return {}
    tenant_ids, key_ids = _loaded(client, "tenant"), _loaded(client, "key")
    tenants = {t.pk: t for t in Tenant.objects.filter(pk__in=tenant_ids)}
    keys = {k.pk: k for k in ApiKey.objects.filter(pk__in=key_ids, quota__isnull=False)}
    now = int(time.time() * 1000)
    out: dict[tuple[str, int], Drift] = {}
    rows: list[tuple[str, int, str, Decimal, str, int]] = [
        ("tenant", t.pk, t.name, t.balance, "", t.pk) for t in tenants.values()]
    rows += [("key", k.pk, f"{k.prefix} ({k.name})", (k.quota or Decimal(0)) - k.quota_used,
              str(k.pk), k.tenant_id) for k in keys.values()]
    for kind, ident, name, database, key_arg, tenant_id in rows:
        avail, unposted, live, stale = client.eval(
            _READ_LUA, 3, rediskeys.account(kind, ident, tenant=tenant_id),
            rediskeys.reservations(tenant_id), rediskeys.unposted(kind, ident, tenant=tenant_id),
            now, key_arg)
        if avail is None:
            continue
        expected = to_micro(database) - int(live) - int(unposted)
        out[(kind, ident)] = Drift(
            kind=kind, ident=ident, tenant_id=tenant_id, name=name, database=database,
            available=from_micro(int(avail)), reserved=from_micro(int(live)),
            unposted=from_micro(int(unposted)), stranded=from_micro(int(stale)),
            drift=from_micro(int(avail) - expected))
    return out


def account_drifts(settle_seconds: float = 0.5) -> list[Drift]:
    """Accounts whose drift is the same non-zero amount in two reads ``settle_seconds``
    apart (sync; empty without Redis)."""
    first = {k: d for k, d in _read_drifts().items() if d.drift}
    if not first:
        return []
    time.sleep(settle_seconds)
    second = _read_drifts()
    return [d for k, d in second.items() if k in first and d.drift == first[k].drift]


def reclaim_expired(now: float | None = None) -> int:
    """Give back every reservation whose lease ran out by ``now`` (unix seconds; the
    limiter's clock, by default the wall clock), for every tenant (sync)."""
    client = sync_redis()
    if client is None:
        return 0
    now_ms = int((time.time() if now is None else now) * 1000)
    total = 0
    for raw in client.scan_iter(rediskeys.reservations_pattern(), count=1000):
        tenant_id = rediskeys.reservations_tenant(raw)
        if tenant_id is not None:
            total += int(client.eval(_RECLAIM_LUA, 3, raw, rediskeys.account("tenant", tenant_id),
                                     rediskeys.reclaimed(tenant_id), now_ms,
                                     rediskeys.account_prefix("key", tenant=tenant_id)))
    if total:
        log.warning("gave back %d reservations of requests whose process stopped", total)
    return total


def reconcile(settle_seconds: float = 0.5) -> list[Drift]:
    """Give back expired reservations, then move every account with a steady drift back in
    line with the database. Returns what was corrected."""
    reclaim_expired()
    drifts = account_drifts(settle_seconds)
    client = sync_redis()
    for d in drifts:
        assert client is not None
        client.eval(_ADJUST_LUA, 1, rediskeys.account(d.kind, d.ident, tenant=d.tenant_id),
                    -to_micro(d.drift))
        log.warning("reconciled %s", d.describe())
    return drifts
