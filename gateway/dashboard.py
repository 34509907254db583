"""The OpenAI-style billing endpoints chat clients call to show a balance, answered the way
the reference gateways (one-api, new-api) answer them:

    GET /v1/dashboard/billing/subscription   {"object": "billing_subscription",
                                              "has_payment_method": true, "soft_limit_usd",
                                              "hard_limit_usd", "system_hard_limit_usd",
                                              "access_until"}
    GET /v1/dashboard/billing/usage          {"object": "list", "total_usage"}  (cents)
        ?start_date=YYYY-MM-DD&end_date=YYYY-MM-DD   (local days, end exclusive)

A key with a quota answers for itself (limit: its quota; used: what it spent), any other
key for its tenant (limit: balance plus everything charged so far; used: what was
charged), so ``hard_limit_usd - total_usage / 100`` without dates is what is left. The
``_usd`` fields are in the tenant's currency (BILLING_CURRENCY), as charged.

Not the hot path: authenticated like any /v1 request (the key snapshot, no SQL), then a
few indexed reads in a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

import orjson
from asgiref.sync import sync_to_async

from gateway.context import RelayContext
from gateway.errors import InvalidRequest
from gateway.respond import Send, send_json
from keys.snapshots import KeySnapshot


@dataclass(frozen=True, slots=True)
class Account:
    limit: Decimal  # everything granted: what is left plus what was used
    used: Decimal  # everything used so far


def _date_param(params: dict[str, list[str]], name: str) -> date | None:
    values = params.get(name)
    if not values or not values[-1].strip():
        return None
    text = values[-1].strip()
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a date as YYYY-MM-DD, not {text[:40]!r}.",
                             param=name) from None


def _scope(key: KeySnapshot) -> dict[str, int]:
    return {"key_id": key.key_id} if key.has_quota else {"tenant_id": key.tenant_id}


def account(key: KeySnapshot) -> Account:
    """The key's quota and what it used, or (a key without a quota) the tenant's balance
    and everything charged to it, from the database (sync)."""
    from django.db import close_old_connections
    from django.db.models import Sum

    from billing.models import LedgerEntry
    from keys.models import ApiKey, Tenant

    close_old_connections()
    if key.has_quota:
        row = ApiKey.objects.filter(pk=key.key_id).values_list("quota", "quota_used").first()
        if row is not None and row[0] is not None:
            return Account(limit=row[0], used=row[1])
    balance = Tenant.objects.filter(pk=key.tenant_id).values_list("balance",
                                                                  flat=True).first()
    charged = (LedgerEntry.objects.filter(tenant_id=key.tenant_id,
                                          kind=LedgerEntry.Kind.CHARGE)
               .order_by().aggregate(total=Sum("amount"))["total"]) or Decimal(0)
    used = -charged
    return Account(limit=(balance or Decimal(0)) + used, used=used)


def spent(scope: dict[str, int], start: date | None, end: date | None) -> Decimal:
    """What the scope (a key, or a tenant) was charged on the local days [start, end) (an
    open end when None), from the daily rollups for the days they cover and the raw usage
    rows for the rest, as the dashboard reads them (sync)."""
    from django.db import close_old_connections
    from django.db.models import Sum

    from billing.models import RollupState, UsageLog, UsageRollup
    from billing.rollups import day_bounds, local_date

    close_old_connections()

    def raw(lo: date | None, hi: date | None) -> Decimal:
        rows = UsageLog.objects.filter(**scope)
        if lo is not None:
            rows = rows.filter(created_at__gte=day_bounds(lo)[0])
        if hi is not None:
            rows = rows.filter(created_at__lt=day_bounds(hi)[0])
        return rows.order_by().aggregate(total=Sum("cost"))["total"] or Decimal(0)

    daily = RollupState.objects.filter(name="daily").first()
    if daily is not None:
        since, through = local_date(daily.since), local_date(daily.through)
        r0 = max(start, since) if start is not None else since
        r1 = min(end, through) if end is not None else through
        if r1 > r0:
            rolled = (UsageRollup.objects.filter(**scope, date__gte=r0, date__lt=r1)
                      .order_by().aggregate(total=Sum("cost"))["total"]) or Decimal(0)
            return rolled + raw(start, r0) + raw(r1, end)
    return raw(start, end)


async def subscription(ctx: RelayContext, key: KeySnapshot, send: Send) -> None:
    acct = await sync_to_async(account, thread_sensitive=False)(key)
    limit = float(acct.limit)
    body = {"object": "billing_subscription", "has_payment_method": True,
            "soft_limit_usd": limit, "hard_limit_usd": limit, "system_hard_limit_usd": limit,
            "access_until": int(key.expires_at) if key.expires_at else 0}
    await send_json(ctx, send, 200, orjson.dumps(body))


async def usage(ctx: RelayContext, key: KeySnapshot, scope: dict[str, Any],
                send: Send) -> None:
    params = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    start, end = _date_param(params, "start_date"), _date_param(params, "end_date")
    if start is not None and end is not None and end < start:
        raise InvalidRequest("'end_date' must not be before 'start_date'.", param="end_date")
    if start is None and end is None:
        used = (await sync_to_async(account, thread_sensitive=False)(key)).used
    else:
        used = await sync_to_async(spent, thread_sensitive=False)(_scope(key), start, end)
    body = {"object": "list", "total_usage": float(used * 100)}
    await send_json(ctx, send, 200, orjson.dumps(body))
