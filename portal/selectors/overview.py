"""The operations overview on the admin index (staff only): traffic, errors by class,
spend, upstream health and top tenants, for the last hour and today.

The last hour is read from the raw usage log through its ``created_at`` index (one hour
of rows); today from the per-tenant daily rollups (refreshed every few minutes by
``billing.rollup_usage``; a row per tenant and model), so the page stays fast on a large
log."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Count, Q, Sum
from django.utils import timezone

from billing.models import UsageLog, UsageRollupTenant
from billing.rollups import local_today
from portal.infra.dbrouter import analytics

log = logging.getLogger(__name__)

UPSTREAM_CODES = ("upstream_error", "upstream_unavailable", "upstream_timeout")
TOP = 5


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

    @property
    def error_rate(self) -> float:
        return 100.0 * self.errors / self.requests if self.requests else 0.0


@analytics()
def last_hour(now: datetime | None = None) -> Window:
    since = (now or timezone.now()) - timedelta(hours=1)
    rows = UsageLog.objects.filter(created_at__gte=since)
    upstream = Q(error_code__in=UPSTREAM_CODES)
    totals = rows.aggregate(
        requests=Count("id"),
        errors=Count("id", filter=Q(status_code__gte=400)),
        client_errors=Count("id", filter=Q(status_code__gte=400, status_code__lt=500)
                            & ~upstream),
        upstream_errors=Count("id", filter=upstream),
        server_errors=Count("id", filter=Q(status_code__gte=500) & ~upstream),
        spend=Sum("cost"),
    )
    top = list(rows.filter(tenant__isnull=False).values("tenant_id", "tenant__name")
               .annotate(requests=Count("id"), spend=Sum("cost"))
               .order_by("-spend", "-requests")[:TOP])
    return Window(requests=totals["requests"], errors=totals["errors"],
                  client_errors=totals["client_errors"], server_errors=totals["server_errors"],
                  upstream_errors=totals["upstream_errors"],
                  spend=totals["spend"] or Decimal(0), top_tenants=top)


@analytics()
def today() -> Window:
    rows = UsageRollupTenant.objects.filter(date=local_today())
    totals = rows.aggregate(requests=Sum("requests"), errors=Sum("errors"), spend=Sum("cost"))
    top = list(rows.filter(tenant__isnull=False).values("tenant_id", "tenant__name")
               .annotate(requests=Sum("requests"), spend=Sum("cost"))
               .order_by("-spend", "-requests")[:TOP])
    return Window(requests=totals["requests"] or 0, errors=totals["errors"] or 0,
                  spend=totals["spend"] or Decimal(0), top_tenants=top, classes_known=False)


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
    return {"hour": last_hour(), "today": today(), "upstreams": upstreams()}
