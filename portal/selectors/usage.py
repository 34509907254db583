"""Reads for the usage log: filters, keyset pages, the CSV export, totals and one request.

Everything starts from ``tenant_rows(tenant)``, so no query here can reach another tenant's
rows. Pages are keyset pages on ``(created_at, id)``, newest first: a cursor names the last
(or first) row shown and the next query starts strictly after it, so a page deep in a 10M
row table costs what the first one does (an index range scan on ``(tenant, created_at)``
that stops after ``PAGE_SIZE + 1`` matching rows), never an OFFSET.

Status classes (the ``status`` filter):
    success         status code below 400
    client_error    4xx: the request was refused (auth, limits, bad input, quota)
    upstream_error  5xx: the upstream failed, timed out or none was available
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from django import forms
from django.conf import settings
from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from billing.models import UsageLog
from billing.pricing import FREE, Price, cost
from billing.rollups import error_class_filters, failed, server_or_upstream
from billing.usagerow import MEMBER_FIELDS, TOKEN_FIELDS, status_class
from gateway.models import CapturedExchange
from keys.models import ApiKey, Tenant
from portal.infra.dbrouter import analytics, analytics_alias
from portal.selectors.filters import LogFilterForm

PAGE_SIZE = 50
EXPORT_CHUNK = 2000
TOTALS_CAP = 100_000  # totals read at most this many (newest) matching rows
KEY_SELECT_LIMIT = 300  # more keys than this: the key filter is a text box (prefix or id)
ENDPOINTS = ("responses", "responses/compact", "chat/completions", "models")


# --- filters ------------------------------------------------------------------------------

class UsageFilterForm(LogFilterForm):
    """The GET form above the log. Every field optional; bad values are form errors."""

    STATUS_CHOICES = [
        ("", _("Any status")),
        ("success", _("Success")),
        ("client_error", _("Client error (4xx)")),
        ("upstream_error", _("Server or upstream error")),
    ]
    STREAM_CHOICES = [("", _("Any")), ("yes", _("Streamed")), ("no", _("Not streamed"))]

    key = forms.CharField(label=_("Key"), required=False, max_length=64)
    model = forms.CharField(label=_("Model"), required=False, max_length=200)
    endpoint = forms.ChoiceField(label=_("Endpoint"), required=False)
    status = forms.ChoiceField(label=_("Status"), required=False, choices=STATUS_CHOICES)
    error_code = forms.CharField(label=_("Error code"), required=False, max_length=64,
                                 help_text=_("Exact code, e.g. rate_limit_exceeded"))
    stream = forms.ChoiceField(label=_("Stream"), required=False, choices=STREAM_CHOICES)
    date_from = forms.DateField(label=_("From"), required=False,
                                widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(label=_("To"), required=False,
                              widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, data: Any, *, tenant: Tenant) -> None:
        super().__init__(data)
        self.tenant = tenant
        self.fields["endpoint"].choices = [("", _("Any endpoint"))] + [
            (e, e) for e in ENDPOINTS]
        keys = list(ApiKey.objects.filter(tenant=tenant).order_by("name", "id")
                    .values_list("id", "name", "prefix", "last4")[:KEY_SELECT_LIMIT + 1])
        if len(keys) <= KEY_SELECT_LIMIT:
            self.fields["key"].widget = forms.Select(choices=[("", _("Any key"))] + [
                (str(pk), f"{name} ({prefix}…{last4})") for pk, name, prefix, last4 in keys])
        else:
            self.fields["key"].help_text = _("Key prefix or id")
        self.fields["model"].widget.attrs["list"] = "usage-models"

    def clean_key(self) -> ApiKey | None:
        value = (self.cleaned_data.get("key") or "").strip()
        if not value:
            return None
        mine = ApiKey.objects.filter(tenant=self.tenant)
        found = (mine.filter(pk=int(value)).first() if value.isdigit()
                 else mine.filter(prefix=value).first())
        if found is None:
            raise forms.ValidationError(_("No key of this tenant matches “%(value)s”."),
                                        params={"value": value})
        return found



def local_day_start(day: dt.date) -> dt.datetime:
    """Midnight of a local date (settings.TIME_ZONE) as an aware datetime."""
    return dt.datetime.combine(day, dt.time.min, tzinfo=ZoneInfo(settings.TIME_ZONE or "UTC"))


def tenant_rows(tenant: Tenant) -> QuerySet[UsageLog]:
    return UsageLog.objects.filter(tenant=tenant)


def filtered(tenant: Tenant, data: dict[str, Any]) -> QuerySet[UsageLog]:
    """The tenant's rows matching the cleaned filter data (unordered)."""
    rows = tenant_rows(tenant)
    if data.get("key"):
        rows = rows.filter(key=data["key"])
    if data.get("model"):
        rows = rows.filter(model=data["model"])
    if data.get("endpoint"):
        rows = rows.filter(endpoint=data["endpoint"])
    status = data.get("status")
    if status:
        rows = rows.filter(_status_filter(status))
    if data.get("error_code"):
        rows = rows.filter(error_code=data["error_code"])
    if data.get("stream") in ("yes", "no"):
        rows = rows.filter(stream=data["stream"] == "yes")
    if data.get("date_from"):
        rows = rows.filter(created_at__gte=local_day_start(data["date_from"]))
    if data.get("date_to"):
        rows = rows.filter(
            created_at__lt=local_day_start(data["date_to"] + dt.timedelta(days=1)))
    return rows


# --- keyset pagination ----------------------------------------------------------------------

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class BadCursor(ValueError):
    pass


@dataclass(frozen=True)
class Cursor:
    """A position between rows: ``older`` pages continue below (created_at, id), ``newer``
    pages above it. Encoded as opaque URL-safe text."""

    direction: str  # "older" | "newer"
    created_at: dt.datetime
    id: int

    def encode(self) -> str:
        micros = (self.created_at - EPOCH) // dt.timedelta(microseconds=1)
        raw = json.dumps([self.direction[0], micros, self.id], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            direction, micros, pk = json.loads(raw)
            if direction not in ("o", "n") or not isinstance(micros, int) \
                    or not isinstance(pk, int):
                raise BadCursor(text)
            when = EPOCH + dt.timedelta(microseconds=micros)
        except (binascii.Error, ValueError, TypeError, OverflowError, OSError) as exc:
            raise BadCursor(text) from exc
        return cls("older" if direction == "o" else "newer", when, pk)


def older_than(rows: QuerySet[UsageLog], created_at: dt.datetime, pk: int) -> QuerySet[UsageLog]:
    """Rows strictly after (created_at, id) in newest-first order. ``created_at <= t`` is the
    index range condition; the OR only breaks ties within one timestamp."""
    return rows.filter(created_at__lte=created_at).filter(
        Q(created_at__lt=created_at) | Q(id__lt=pk))


def newer_than(rows: QuerySet[UsageLog], created_at: dt.datetime, pk: int) -> QuerySet[UsageLog]:
    return rows.filter(created_at__gte=created_at).filter(
        Q(created_at__gt=created_at) | Q(id__gt=pk))


NEWEST_FIRST = ("-created_at", "-id")
OLDEST_FIRST = ("created_at", "id")
# What a member sees of a row (billing.usagerow), and the key's name and masked form.
LIST_COLUMNS = ("id", *MEMBER_FIELDS, "key_prefix", "key__name", "key__prefix", "key__last4")


@dataclass
class Page:
    rows: list[dict[str, Any]]
    older: str | None  # cursor of the next (older) page
    newer: str | None  # cursor of the previous (newer) page
    first: bool  # the newest page (no cursor)


# Widening time windows for pages with filters on columns no index covers (model, endpoint,
# status, error code, stream): each window query is an index range scan of a bounded slice of
# (tenant, created_at), so a filter that matches 1% of the rows finds its page in the first
# window or two instead of the planner choosing to read the whole tenant and sort it.
# Windows nest, so the first one holding a full page gives the same rows as the unbounded
# query (the last step).
WINDOWS = (dt.timedelta(hours=1), dt.timedelta(hours=8), dt.timedelta(days=3),
           dt.timedelta(days=24), None)
UNINDEXED_FILTERS = ("model", "endpoint", "status", "error_code", "stream")


def needs_windows(data: dict[str, Any]) -> bool:
    return any(data.get(name) not in (None, "") for name in UNINDEXED_FILTERS)


def _fetch(base: QuerySet[UsageLog], order: tuple[str, str], limit: int,
           edge: dt.datetime | None, windowed: bool) -> list[dict[str, Any]]:
    newest_first = order == NEWEST_FIRST
    steps = WINDOWS if windowed else (None,)
    anchor = edge or timezone.now()
    for window in steps:
        qs = base
        if window is not None:  # only the far side is bounded: rows stamped later still show
            qs = qs.filter(created_at__gte=anchor - window) if newest_first \
                else qs.filter(created_at__lte=anchor + window)
        got = list(qs.order_by(*order).values(*LIST_COLUMNS)[:limit])
        if len(got) >= limit or window is None:
            return got
    return []  # not reached: the last window is unbounded


@analytics()
def page(rows: QuerySet[UsageLog], cursor: Cursor | None, size: int = PAGE_SIZE,
         windowed: bool = False) -> Page:
    """One keyset page, newest first. Reads ``size + 1`` rows to know whether more follow;
    ``windowed``: through widening time windows (see WINDOWS)."""
    if cursor is None or cursor.direction == "older":
        base = rows if cursor is None else older_than(rows, cursor.created_at, cursor.id)
        got = _fetch(base, NEWEST_FIRST, size + 1, cursor.created_at if cursor else None,
                     windowed)
        more = len(got) > size
        got = got[:size]
        older = Cursor("older", got[-1]["created_at"], got[-1]["id"]).encode() \
            if more and got else None
        newer = Cursor("newer", got[0]["created_at"], got[0]["id"]).encode() \
            if cursor is not None and got else None
        if cursor is not None and not got:  # past the end: offer the way back
            newer = Cursor("newer", cursor.created_at, cursor.id).encode()
        return Page(_masked(got), older, newer, cursor is None)
    got = _fetch(newer_than(rows, cursor.created_at, cursor.id), OLDEST_FIRST, size + 1,
                 cursor.created_at, windowed)
    more = len(got) > size
    got = list(reversed(got[:size]))
    older = Cursor("older", got[-1]["created_at"], got[-1]["id"]).encode() if got else \
        Cursor("older", cursor.created_at, cursor.id).encode()
    newer = Cursor("newer", got[0]["created_at"], got[0]["id"]).encode() if more and got \
        else None
    return Page(_masked(got), older, newer, not more)


def masked_key(row: dict[str, Any]) -> str:
    if row.get("key__prefix"):
        return f"{row['key__prefix']}…{row['key__last4']}"
    return f"{row['key_prefix']}…" if row.get("key_prefix") else ""


def _status_filter(status: str) -> Q:
    """The rows of a status filter choice, by the classes of billing.rollups (what the
    dashboards count)."""
    if status == "success":
        return ~failed()
    if status == "client_error":
        return error_class_filters()["client_errors"]
    return server_or_upstream()


def _masked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for row in rows:
        row["key_masked"] = masked_key(row)
        row["status_class"] = status_class(row["status_code"], row["error_code"])
    return rows


# --- totals ---------------------------------------------------------------------------------

@analytics()
def totals(rows: QuerySet[UsageLog], cap: int = TOTALS_CAP) -> dict[str, Any]:
    """Requests, tokens and cost of the filtered range, reading at most ``cap`` (the newest)
    matching rows: ``capped`` says the figures are those of the newest ``cap`` rows."""
    # One pass: Django aggregates a sliced queryset over a subquery (… ORDER BY … LIMIT n).
    agg = rows.order_by(*NEWEST_FIRST)[:cap].aggregate(
        requests=Count("id"), input_tokens=Sum("input_tokens"),
        cached_tokens=Sum("cached_tokens"), output_tokens=Sum("output_tokens"),
        reasoning_tokens=Sum("reasoning_tokens"), cost=Sum("cost"),
        errors=Count("id", filter=failed()))
    capped = agg["requests"] >= cap  # the newest ``cap`` rows, perhaps of more
    for name in TOKEN_FIELDS:
        agg[name] = agg[name] or 0
    agg["cost"] = agg["cost"] or Decimal(0)
    agg["capped"] = capped
    agg["cap"] = cap
    return agg


@analytics()
def models_seen(tenant: Tenant, limit: int = 200) -> list[str]:
    """Model names for the filter's suggestions, from the per-tenant daily rollups (a row
    per day and model: the per-key ones have a row per key too, ~800k for a tenant with
    10k busy keys, and their DISTINCT took most of a second)."""
    from billing.models import UsageRollupTenant

    return list(UsageRollupTenant.objects.filter(tenant=tenant).exclude(model="")
                .order_by("model").values_list("model", flat=True).distinct()[:limit])


# --- export ---------------------------------------------------------------------------------

EXPORT_HEADER = ["time", "request_id", "key", "key_name", "model", "endpoint", "status",
                 "error_code", "stream", "input_tokens", "cached_tokens", "output_tokens",
                 "reasoning_tokens", "cost", "latency_ms", "ttfb_ms", "estimated",
                 "client_ip"]
EXPORT_COLUMNS = ("id", "created_at", "request_id", "key_prefix", "key__prefix", "key__last4",
                  "key__name", "model", "endpoint", "status_code", "error_code", "stream",
                  "input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens", "cost",
                  "latency_ms", "ttfb_ms", "estimated", "client_ip")


def _csv_fields(got: list[tuple[Any, ...]]) -> list[list[Any]]:
    return [[created.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"), request_id,
             f"{prefix}…{last4}" if prefix else (f"{key_prefix}…" if key_prefix else ""),
             name or "", model, endpoint, status, error, "true" if stream else "false",
             i, c, o, r, format(money, "f"), latency, "" if ttfb is None else ttfb,
             "true" if estimated else "false", ip or ""]
            for (_pk, created, request_id, key_prefix, prefix, last4, name, model, endpoint,
                 status, error, stream, i, c, o, r, money, latency, ttfb, estimated, ip)
            in got]


def export_chunks(rows: QuerySet[UsageLog], chunk: int | None = None, *,
                  floor: dt.datetime | None = None, sliced: bool = False
                  ) -> Iterator[list[list[Any]]]:
    """Every filtered row, newest first, as CSV fields: first the header (alone), then one
    list per keyset chunk of ``chunk`` rows, each read by one short query (no transaction
    held open, no OFFSET), so memory stays constant. No upstream or credential column.

    ``sliced`` (filters no index covers): each query is also bounded below by a time slice
    that moves back (and widens while rows are sparse) as it is used up, down to ``floor``
    (the oldest row that can match), so the whole export is one pass over the tenant's
    (tenant, created_at) range however rare the matches, never a tenant scan per chunk."""
    chunk = chunk or EXPORT_CHUNK
    rows = rows.using(analytics_alias())  # a generator: a context set here would leak
    yield [EXPORT_HEADER]
    cursor: tuple[dt.datetime, int] | None = None
    span = dt.timedelta(hours=1)
    lower = timezone.now() - span if sliced and floor is not None else None
    while True:
        base = rows if cursor is None else older_than(rows, *cursor)
        if lower is not None:
            base = base.filter(created_at__gte=lower)
        got = list(base.order_by(*NEWEST_FIRST).values_list(*EXPORT_COLUMNS)[:chunk])
        if got:
            yield _csv_fields(got)
            cursor = (got[-1][1], got[-1][0])
        if len(got) == chunk:
            continue  # more in this slice (or, unsliced, perhaps more at all)
        if lower is None or floor is None or lower <= floor:
            return  # every row at or after the last lower bound has been written
        # Sparse: under a quarter of a chunk (for a chunk under 4 rows, an empty slice;
        # else a span that never widened would walk the history an hour per query).
        if len(got) < max(chunk // 4, 1):
            span = min(span * 2, dt.timedelta(days=30))
        lower -= span  # rows older than the cursor and newer than ``lower`` come next


def oldest(tenant: Tenant) -> dt.datetime | None:
    """The tenant's oldest row time (the (tenant, created_at) index, one entry)."""
    return tenant_rows(tenant).order_by("created_at").values_list(
        "created_at", flat=True).first()


# --- one request ----------------------------------------------------------------------------

def request_detail(tenant: Tenant, request_id: str) -> UsageLog | None:
    return tenant_rows(tenant).select_related("key", "key__group", "tenant__group") \
        .filter(request_id=request_id).first()


def capture_of(tenant: Tenant, request_id: str) -> CapturedExchange | None:
    """The request's captured bodies (issue 15), if body capture was on for it and they are
    not past their retention: only the tenant's own."""
    return CapturedExchange.objects.filter(tenant=tenant, request_id=request_id).first()


def price_for(model: str) -> Price:
    """The model's price now (the most specific ModelPrice; wildcards allowed): the same
    table the gateway reads, built fresh from the database."""
    from billing.pricing import build_price_table, decode_price_table

    table = decode_price_table(build_price_table(""))
    return table.lookup(model) if model else FREE


def multiplier_for(log: UsageLog) -> Decimal:
    group = (log.key.group if log.key and log.key.group_id else None) or (
        log.tenant.group if log.tenant and log.tenant.group_id else None)
    return group.price_multiplier if group else Decimal(1)


def cost_breakdown(log: UsageLog) -> dict[str, Any]:
    """Each token class at the model's current price × the group multiplier. ``total`` is
    what the breakdown adds up to; ``charged`` is what the request was billed (prices may
    have changed since, and an estimated request is billed on its estimate)."""
    price = price_for(log.model)
    mult = multiplier_for(log)
    cached = min(log.cached_tokens, log.input_tokens)
    reasoning = min(log.reasoning_tokens, log.output_tokens)
    cached_price = price.input if price.cached_input is None else price.cached_input
    reasoning_price = price.output if price.reasoning is None else price.reasoning
    zero = {"input_tokens": 0, "cached_tokens": 0, "output_tokens": 0, "reasoning_tokens": 0}

    def part(tokens: int, per_million: Decimal) -> dict[str, Any]:
        return {"tokens": tokens, "per_million": per_million * mult,
                "cost": cost(Price(input=per_million), **{**zero, "input_tokens": tokens},
                             multiplier=mult)}

    lines = [
        ("input", _("Input (uncached)"), part(log.input_tokens - cached, price.input)),
        ("cached", _("Cached input"), part(cached, cached_price)),
        ("output", _("Output (excluding reasoning)"), part(log.output_tokens - reasoning,
                                                         price.output)),
        ("reasoning", _("Reasoning"), part(reasoning, reasoning_price)),
    ]
    per_request = (price.per_request * mult).quantize(Decimal("0.000001"))
    total = cost(price, input_tokens=log.input_tokens, cached_tokens=log.cached_tokens,
                 output_tokens=log.output_tokens, reasoning_tokens=log.reasoning_tokens,
                 multiplier=mult)
    return {"lines": lines, "per_request": per_request, "multiplier": mult, "total": total,
            "charged": log.cost, "differs": total != log.cost, "free": price.is_free}


def attempts_for(log: UsageLog, *, staff: bool) -> list[dict[str, Any]]:
    """Staff: every upstream tried, with upstream and credential names. Anyone else: nothing
    here (the page shows one line per request: its status and error)."""
    if not staff:
        return []
    from gateway.models import Credential, Upstream

    tried = [a for a in (log.attempts or []) if isinstance(a, dict)]
    upstream_ids = {a.get("upstream_id") for a in tried if a.get("upstream_id")}
    credential_ids = {a.get("credential_id") for a in tried if a.get("credential_id")}
    upstreams = dict(Upstream.objects.filter(id__in=upstream_ids).values_list("id", "name"))
    credentials = dict(Credential.objects.filter(id__in=credential_ids)
                       .values_list("id", "name"))
    return [{
        "number": n,
        "upstream": upstreams.get(a.get("upstream_id")) or a.get("upstream") or "",
        "credential": credentials.get(a.get("credential_id")) or (
            f"#{a['credential_id']}" if a.get("credential_id") else ""),
        "status": a.get("status"), "error": a.get("error") or "", "ms": a.get("ms"),
    } for n, a in enumerate(tried, 1)]


def live_row(log: UsageLog) -> dict[str, Any]:
    """What the live socket may send for a new row (see static/portal/usage.js): the list's
    columns only, never upstream or credential fields."""
    return {
        "request_id": log.request_id, "created_at": log.created_at.isoformat(),
        "key": f"{log.key_prefix}…" if log.key_prefix else "",
        "model": log.model, "endpoint": log.endpoint, "status": log.status_code,
        "error_code": log.error_code, "status_class": status_class(log.status_code,
                                                                  log.error_code),
        "stream": log.stream,
        "input_tokens": log.input_tokens, "cached_tokens": log.cached_tokens,
        "output_tokens": log.output_tokens, "reasoning_tokens": log.reasoning_tokens,
        "cost": format(log.cost, "f"), "latency_ms": log.latency_ms, "ttfb_ms": log.ttfb_ms,
    }
