"""The operations overview on the admin index (staff only): traffic, errors by class,
spend, upstream health and top tenants, for the recent hours and today.

Both windows are read from the per-tenant rollups (a row per tenant and model per hour or
day, whatever the traffic), so the page costs about the same on a busy log as on an empty
one:

- the recent hours (``recent_hours``): the previous UTC hour and the current one so far,
  from ``UsageRollupTenantHourly``: the previous hour whole once the minute task
  (``billing.rollup_usage_hourly``) rolled it after it ended, the current hour as far as
  that task rolled it (``rollups.partial_hour``), and only the raw ``UsageLog`` rows after
  that, normally the last five or six minutes, as the tenant dashboard does. What the
  rollups do not cover (no Celery beat, a task behind) is read raw: right, only slower.
  Whole UTC hours rather than a rolling 60 minutes: a rollup row is an hour.
- today: the per-tenant daily rollups (refreshed every 10 minutes by
  ``billing.rollup_usage``).

Errors by class are counted by the rollups (``billing.rollups.error_class_filters``: the one
definition, also used for the raw rows here)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connections
from django.db.models import Count, QuerySet, Sum
from django.utils import timezone

from billing import rollups
from billing.models import UsageLog, UsageRollupTenant, UsageRollupTenantHourly
from billing.rollups import ERROR_CLASSES, hour_start, local_today, measure_aggregates
from keys.models import Tenant
from portal.infra.dbrouter import analytics, analytics_alias

log = logging.getLogger(__name__)

TOP = 5
HOUR = timedelta(hours=1)
# What a window counts, summed from rollup rows or aggregated from raw rows.
COUNTS = ("requests", "errors", *ERROR_CLASSES)
PARTIAL_TRIES = 3  # reads of the recent hours before giving up the partial hour's rollup
_CENT = Decimal("0.000001")


@dataclass
class Window:
    requests: int = 0
    errors: int = 0
    client_errors: int = 0  # 4xx
    server_errors: int = 0  # 5xx other than upstream failures
    upstream_errors: int = 0  # upstream failed, unreachable or timed out
    spend: Decimal = Decimal(0)
    top_tenants: list[dict[str, Any]] = field(default_factory=list)
    classes_known: bool = True
    since: datetime | None = None  # the recent hours' start (a UTC hour); None for today

    @property
    def error_rate(self) -> float:
        return 100.0 * self.errors / self.requests if self.requests else 0.0

    def add(self, row: dict[str, Any]) -> None:
        """Add an aggregate row of COUNTS and ``spend`` (None where it had no rows)."""
        for name in COUNTS:
            setattr(self, name, getattr(self, name) + int(row[name] or 0))
        self.spend += row["spend"] or Decimal(0)


@analytics()
def recent_hours(now: datetime | None = None) -> Window:
    """The previous UTC hour and the current one up to ``now``, for all tenants.

    The partial hour's rollup (``rollups.partial_hour``) is rewritten every minute, its
    extent with it (one transaction): the extent is read before the figures and again after
    them, and the figures are read again if it moved in between (else a row could be
    counted both in the rollup and raw). After PARTIAL_TRIES moves, the partial hour is read
    raw (hours the watermark says were rolled whole stay read from their rollups)."""
    moment = now or timezone.now()
    return rollups.read_settled(lambda partial: _recent(moment, partial), PARTIAL_TRIES)


def _recent(now: datetime, partial: rollups.Extent | None) -> Window:
    rolled, raw = rollups.hourly_sources(hour_start(now) - HOUR, now, partial)
    window = Window(since=hour_start(now) - HOUR)
    parts: list[QuerySet[Any]] = []
    if rolled:
        hours = UsageRollupTenantHourly.objects.filter(hour__in=rolled).order_by()
        window.add(hours.aggregate(**{n: Sum(n) for n in COUNTS}, spend=Sum("cost")))
        parts.append(hours)
    rows = UsageLog.objects.filter(raw).order_by()
    aggregates = measure_aggregates()
    window.add(rows.aggregate(**{n: aggregates[n] for n in COUNTS}, spend=Sum("cost")))
    parts.append(rows)
    window.top_tenants = _top_tenants(parts)
    return window


def _per_tenant(qs: QuerySet[Any]) -> QuerySet[Any]:
    """Spend and requests per tenant of rollup rows (summed) or raw rows (counted)."""
    requests = Count("id") if qs.model is UsageLog else Sum("requests")
    return (qs.filter(tenant__isnull=False).values("tenant_id")
            .annotate(spend=Sum("cost"), requests=requests))


def _top_tenants(parts: list[QuerySet[Any]]) -> list[dict[str, Any]]:
    """The TOP tenants by spend, then requests, over ``parts`` (rollup and raw rows): one
    statement sums them per tenant and keeps TOP, so no row per tenant with traffic comes
    to Python; then their names. (A tenant deleted meanwhile is left out.)"""
    if not parts:
        return []
    alias = analytics_alias()
    sqls, params = [], []
    for part in parts:  # UNION ALL goes by position: tenant_id, spend, requests
        sql, p = _per_tenant(part).query.get_compiler(using=alias).as_sql()
        sqls.append(sql)
        params.extend(p)
    with connections[alias].cursor() as cursor:
        cursor.execute(f"SELECT tenant_id, SUM(spend), SUM(requests) FROM "
                       f"({' UNION ALL '.join(sqls)}) parts GROUP BY tenant_id "
                       f"ORDER BY 2 DESC, 3 DESC, 1 LIMIT %s", [*params, TOP])
        ranked = cursor.fetchall()
    names = dict(Tenant.objects.filter(pk__in=[r[0] for r in ranked])
                 .values_list("pk", "name"))
    return [{"tenant_id": tenant_id, "tenant__name": names[tenant_id],
             "requests": int(requests), "spend": _money(spend)}
            for tenant_id, spend, requests in ranked if tenant_id in names]


def _money(value: Any) -> Decimal:
    """A sum of costs from a raw cursor: a Decimal on PostgreSQL, a float on SQLite."""
    if isinstance(value, Decimal):
        return value
    return Decimal(str(value or 0)).quantize(_CENT)


@analytics()
def today() -> Window:
    rows = UsageRollupTenant.objects.filter(date=local_today()).order_by()
    window = Window()
    window.add(rows.aggregate(**{n: Sum(n) for n in COUNTS}, spend=Sum("cost")))
    window.top_tenants = _top_tenants([rows])
    return window


def upstreams() -> list[dict[str, Any]]:
    """Every upstream with its health, and its credentials cooling down now."""
    from gateway.models import Credential, Upstream
    from keys import limits

    try:
        cooling = limits.limiter().cooldowns()
    except Exception as exc:  # Redis away: show the table without cool-downs
        log.warning("credential cool-downs unreadable: %s", exc)
        cooling = {}
    creds: dict[int, list[dict[str, Any]]] = {}
    now = time.time()
    if cooling:
        for cred in Credential.objects.filter(pk__in=list(cooling)).only("pk", "name",
                                                                          "upstream_id"):
            creds.setdefault(cred.upstream_id, []).append(
                {"name": cred.name or f"#{cred.pk}", "seconds": max(0, int(cooling[cred.pk]
                                                                          - now))})
    out = []
    for up in Upstream.objects.annotate(credential_count=Count("credentials")).order_by(
            "-priority", "name"):
        out.append({"id": up.pk, "name": up.name, "kind": up.kind, "status": up.status,
                    "health": up.health, "auto_disabled": up.auto_disabled,
                    "latency_ms": up.health_latency_ms, "checked_at": up.health_checked_at,
                    "error": up.health_error, "credentials": up.credential_count,
                    "cooling": creds.get(up.pk, [])})
    return out


def overview() -> dict[str, Any]:
    return {"recent": recent_hours(), "today": today(), "upstreams": upstreams()}
