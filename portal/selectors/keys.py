"""Reads for the Keys pages: one page of a tenant's keys with their figures, one key, the
groups a tenant may pick and the models a group may call.

Figures of a page of keys cost three queries whatever the tenant's size, each limited to
the page's keys (at most ``PAGE_SIZE``):
  - today: since local midnight, the hourly rollups of the hours they hold
    (``UsageRollupHourly``, index (key, hour); the hour not over yet up to how far the
    minute task rolled it) and only the raw ``UsageLog`` rows after them (normally the
    last five or six minutes; index (key, created_at)), as the operations overview reads
    its hours (``billing.rollups.hourly_sources``): live, without reading every request
    the key made today;
  - this month: the ``UsageRollup`` rows of the month's earlier days, plus today's raw
    figure (the day before's rollup is redone every 10 minutes, so the first minutes after
    midnight may miss yesterday's last ones);
  - last used: per key the newest ``UsageLog.created_at``, one index probe per key
    (a correlated ``LIMIT 1`` subquery on (key, created_at), not a scan of its rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.core.paginator import Page, Paginator
from django.db.models import Count, OuterRef, Q, Subquery, Sum
from django.shortcuts import get_object_or_404
from django.utils import timezone

from billing import rollups
from billing.models import UsageLog, UsageRollup, UsageRollupHourly
from billing.rollups import day_bounds, local_today
from keys.models import ApiKey, Group, Status, Tenant
from keys.patterns import matches_any
from portal.infra.dbrouter import analytics

PAGE_SIZE = 50


@dataclass
class Figures:
    requests: int = 0
    cost: Decimal = Decimal("0")


@dataclass
class KeyRow:
    key: ApiKey
    today: Figures = field(default_factory=Figures)
    month: Figures = field(default_factory=Figures)
    last_used: datetime | None = None

    @property
    def state(self) -> str:
        """active, disabled or expired: what the badge says."""
        if self.key.status != Status.ACTIVE:
            return "disabled"
        if self.key.is_expired:
            return "expired"
        return "active"

    @property
    def quota_fraction(self) -> float | None:
        key = self.key
        if key.quota is None:
            return None
        if key.quota <= 0:
            return 1.0
        return float(min(key.quota_used / key.quota, Decimal(1)))


def tenant_keys(tenant: Tenant) -> Any:
    return ApiKey.objects.filter(tenant=tenant).select_related("group", "created_by")


def key_get(tenant: Tenant, pk: int) -> ApiKey:
    """One key of this tenant; another tenant's id is a 404."""
    return get_object_or_404(tenant_keys(tenant).select_related("tenant__group", "rotated_from"),
                             pk=pk)


def key_page(tenant: Tenant, number: Any = 1, *, search: str = "",
             status: str = "") -> tuple[Page, list[KeyRow]]:
    keys = tenant_keys(tenant).order_by("-id")  # newest first, by the primary key's index
    if search:
        prefix = search.split("…")[0].split("...")[0].strip()  # a pasted masked key works
        keys = keys.filter(Q(name__icontains=search) | Q(prefix__startswith=prefix)
                           if prefix else Q(name__icontains=search))
    if status == "active":
        keys = keys.filter(status=Status.ACTIVE)
    elif status == "disabled":
        keys = keys.filter(status=Status.DISABLED)
    page = Paginator(keys, PAGE_SIZE).get_page(number)
    rows = [KeyRow(key=k) for k in page.object_list]
    fill_figures(rows)
    return page, rows


@analytics()
def fill_figures(rows: list[KeyRow], now: datetime | None = None) -> None:
    """Today's and this month's requests and spend, and the last use, of these keys (all
    of one tenant: the rollup query uses the (key, date) index). Analytic reads: from the
    read replica when one is configured (a key created a moment ago shows no figures until
    the replica has it)."""
    if not rows:
        return
    by_id = {row.key.pk: row for row in rows}
    ids = list(by_id)
    moment = now or timezone.now()
    today = local_today(moment)
    start_today = day_bounds(today)[0]
    figures = rollups.read_settled(lambda partial: _today(ids, start_today, moment, partial))
    for key_id, (requests, cost) in figures.items():
        by_id[key_id].today = Figures(requests, cost)
        by_id[key_id].month = Figures(requests, cost)
    # By key only (the keys are the page's, fetched by tenant; a key's rollups are its
    # tenant's): with tenant_id too, PostgreSQL ANDs the (key, date) index with the tenant
    # index, a bitmap of every rollup row of the tenant (36 ms for 10k busy keys, not 1.5).
    for r in (UsageRollup.objects.filter(date__gte=today.replace(day=1), date__lt=today,
                                         key_id__in=ids).order_by()
              .values("key_id").annotate(n=Sum("requests"), cost=Sum("cost"))):
        row = by_id[r["key_id"]]
        row.month = Figures(row.month.requests + (r["n"] or 0),
                            row.month.cost + (r["cost"] or Decimal("0")))
    newest = UsageLog.objects.filter(key_id=OuterRef("pk")).order_by("-created_at")
    for pk, last in (ApiKey.objects.filter(pk__in=ids)
                     .annotate(last=Subquery(newest.values("created_at")[:1]))
                     .values_list("pk", "last")):
        by_id[pk].last_used = last


def _today(ids: list[int], start: datetime, now: datetime,
           partial: rollups.Extent | None) -> dict[int, tuple[int, Decimal]]:
    """Requests and cost per key since ``start``: hourly rollups where they hold the rows,
    raw rows for the rest (``rollups.hourly_sources``)."""
    rolled, raw = rollups.hourly_sources(start, now, partial)
    out: dict[int, tuple[int, Decimal]] = {}

    def add(rows: Any) -> None:
        for r in rows:
            n, cost = out.get(r["key_id"], (0, Decimal("0")))
            out[r["key_id"]] = (n + int(r["n"] or 0), cost + (r["cost"] or Decimal("0")))

    if rolled:
        add(UsageRollupHourly.objects.filter(key_id__in=ids, hour__in=rolled).order_by()
            .values("key_id").annotate(n=Sum("requests"), cost=Sum("cost")))
    add(UsageLog.objects.filter(raw, key_id__in=ids).order_by()
        .values("key_id").annotate(n=Count("id"), cost=Sum("cost")))
    return out


def key_successor(key: ApiKey) -> ApiKey | None:
    """The key that replaced this one by rotation, if any (of the same tenant)."""
    return (ApiKey.objects.filter(rotated_from=key, tenant_id=key.tenant_id)
            .order_by("-id").first())


def key_row(key: ApiKey) -> KeyRow:
    row = KeyRow(key=key)
    fill_figures([row])
    return row


# --- groups and models ------------------------------------------------------------------

def effective_group(tenant: Tenant, group: Group | None) -> Group | None:
    """The group a key's limits come from: its own, else its tenant's."""
    return group or tenant.group


def usable_groups(tenant: Tenant, include: Group | None = None) -> list[Group]:
    """Groups a key of this tenant may name: the tenant's own group and the groups its keys
    already use (a group is a plan the operator assigns; the portal never widens it).
    ``include``: a key's current group, kept choosable when editing it."""
    ids = set(ApiKey.objects.filter(tenant=tenant, group__isnull=False).order_by()
              .values_list("group_id", flat=True).distinct())
    if tenant.group_id:
        ids.add(tenant.group_id)
    if include is not None:
        ids.add(include.pk)
    return list(Group.objects.filter(pk__in=ids).order_by("name"))


def route_table() -> Any:
    """The gateway's route table, read from the database (sync; the portal never touches
    the gateway's hot-path cache) and without credentials: only models and groups."""
    from gateway.routing import build_route_table, decode_route_table

    data = build_route_table("portal")
    for upstream in data["upstreams"]:
        upstream["credentials"] = []
    return decode_route_table(data)


def callable_models(group: Group | None, table: Any = None) -> list[str]:
    """Concrete model names a key of this group can call: what the upstreams open to the
    group serve, narrowed by the group's allow-list when it has one."""
    table = table if table is not None else route_table()
    listed = table.listed_models(group.pk if group else None,
                                 bool(group and group.dedicated_upstreams))
    allowed = list(group.allowed_models or []) if group else []
    names = [m for m in listed if not allowed or matches_any(allowed, m)]
    return sorted(names)
