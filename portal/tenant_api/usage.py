"""Usage: the summaries the dashboard shows (totals; by day, by hour, by model, by key) and
the request log with the portal's filters and keyset (cursor) pages, its totals and one
request's detail.

Summaries come from ``portal.selectors.dashboard.overview`` (rollups plus the newest raw
rows: exact, about nine queries whatever the table's size); the log from
``portal.selectors.usage`` (the same filter form, cursor and pages as /portal/usage/). An
API key reads only its own usage: its ``key`` filter is forced to itself.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from django.http import HttpRequest
from ninja import Field, Query, Router, Schema

from billing import usagerow
from keys.models import ApiKey
from portal.selectors import keys as key_selectors
from portal.selectors import usage as sel
from portal.selectors.dashboard import Overview, overview
from portal.tenant_api.auth import Caller, caller_of
from portal.tenant_api.common import NO_NUL, CountsOut, TotalsOut, money, totals_out
from portal.tenant_api.errors import ERRORS, ApiError, not_found

router = Router(tags=["usage"])

MAX_PAGE = 500


# --- summaries ----------------------------------------------------------------------------

class KeyScope(Schema):
    key: int | None = Field(None, ge=1, description="Only this key's usage (its id).")


def _key_scope(caller: Caller, key_id: int | None) -> ApiKey | None:
    """The key a read is limited to: an API key always reads itself; anyone else the key
    asked for (of their tenant: another tenant's id is a 404), or the whole tenant."""
    if caller.api_key is not None:
        if key_id is not None and key_id != caller.api_key.pk:
            raise ApiError(403, "api_key_not_allowed", "An API key may read only its own "
                           "usage.")
        return caller.api_key
    caller.require()
    return key_selectors.key_get(caller.tenant, key_id) if key_id is not None else None


def _overview(request: HttpRequest, scope: KeyScope) -> Overview:
    caller = caller_of(request)
    return overview(caller.tenant, _key_scope(caller, scope.key))


class SummaryOut(Schema):
    key_id: int | None
    today: TotalsOut
    month: TotalsOut
    last_30_days: TotalsOut


class DayOut(TotalsOut):
    date: dt.date


class HourOut(TotalsOut):
    hour: dt.datetime = Field(description="Start of the hour (local time zone).")


class ModelUsageOut(TotalsOut):
    model: str


class KeyUsageOut(TotalsOut):
    key_id: int | None = Field(description="Null: requests of keys since deleted.")
    name: str
    masked: str


@router.get("/usage/summary", response={200: SummaryOut, **ERRORS},
            summary="Totals today, this month and over the last 30 days")
def usage_summary(request: HttpRequest, scope: Query[KeyScope]) -> dict[str, Any]:
    ov = _overview(request, scope)
    return {"key_id": ov.key.pk if ov.key else None, "today": totals_out(ov.today_totals),
            "month": totals_out(ov.month_totals), "last_30_days": totals_out(ov.days_totals)}


@router.get("/usage/daily", response={200: list[DayOut], **ERRORS},
            summary="Usage per local day, the last 30 days (oldest first)")
def usage_daily(request: HttpRequest, scope: Query[KeyScope]) -> list[dict[str, Any]]:
    ov = _overview(request, scope)
    return [{"date": d, **totals_out(ov.by_day[d])} for d in ov.days]


@router.get("/usage/hourly", response={200: list[HourOut], **ERRORS},
            summary="Usage per hour of today (local time), oldest first")
def usage_hourly(request: HttpRequest, scope: Query[KeyScope]) -> list[dict[str, Any]]:
    ov = _overview(request, scope)
    return [{"hour": h, **totals_out(t)} for h, t in sorted(ov.by_hour.items())]


@router.get("/usage/models", response={200: list[ModelUsageOut], **ERRORS},
            summary="Usage per model over the last 30 days, most expensive first")
def usage_models(request: HttpRequest, scope: Query[KeyScope]) -> list[dict[str, Any]]:
    ov = _overview(request, scope)
    ranked = sorted(ov.by_model.items(), key=lambda kv: (kv[1].cost, kv[1].requests),
                    reverse=True)
    return [{"model": m, **totals_out(t)} for m, t in ranked]


@router.get("/usage/keys", response={200: list[KeyUsageOut], **ERRORS},
            summary="Usage per key over the last 30 days, most expensive first")
def usage_keys(request: HttpRequest,
               limit: int = Query(100, ge=1, le=MAX_PAGE)) -> list[dict[str, Any]]:  # noqa: B008
    caller = caller_of(request)
    if caller.api_key is not None:  # only itself
        ov = overview(caller.tenant, caller.api_key)
        key = caller.api_key
        return [{"key_id": key.pk, "name": key.name, "masked": key.masked,
                 **totals_out(ov.days_totals)}]
    caller.require()
    ov = overview(caller.tenant)
    ranked = sorted(ov.by_key.items(), key=lambda kv: (kv[1].cost, kv[1].requests),
                    reverse=True)[:limit]
    names = {k.pk: (k.name, k.masked) for k in ApiKey.objects.filter(
        tenant=caller.tenant, pk__in=[i for i, _ in ranked if i]).only(
        "pk", "name", "prefix", "last4")}
    return [{"key_id": key_id if key_id in names else None,
             "name": names.get(key_id, ("", ""))[0], "masked": names.get(key_id, ("", ""))[1],
             **totals_out(t)} for key_id, t in ranked]


# --- the request log ----------------------------------------------------------------------

class LogFilter(Schema):
    key: str | None = Field(None, max_length=64, pattern=NO_NUL,
                            description="A key's id or display prefix.")
    model: str | None = Field(None, max_length=200, pattern=NO_NUL)
    endpoint: Literal[sel.ENDPOINTS] | None = None  # type: ignore[valid-type]
    status: Literal["success", "client_error", "upstream_error"] | None = Field(
        None, description="success: below 400 and no upstream failure; client_error: 4xx "
                    "other than upstream failures; "
                    "upstream_error: 5xx, or an upstream failure whatever the status (a "
                    "stream the upstream broke off after its 200, error code "
                    "upstream_stream_cut).")
    error_code: str | None = Field(None, max_length=64, pattern=NO_NUL)
    stream: bool | None = None
    date_from: dt.date | None = Field(None, description="First local day (TIME_ZONE).")
    date_to: dt.date | None = Field(None, description="Last local day, included.")


class LogRowOut(Schema):
    request_id: str
    created_at: dt.datetime
    key: str = Field(description="The key, masked.")
    key_name: str | None
    model: str
    endpoint: str
    status_code: int
    status_class: str
    error_code: str
    stream: bool
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost: str
    latency_ms: int
    ttfb_ms: int | None
    estimated: bool


class LogPage(Schema):
    items: list[LogRowOut]
    older: str | None = Field(description="Cursor of the next (older) page; null: none.")
    newer: str | None = Field(description="Cursor of the previous (newer) page.")


class LogTotalsOut(CountsOut):
    capped: bool = Field(description="The figures are those of the newest `cap` rows.")
    cap: int


def _filtered(caller: Caller, filters: LogFilter) -> tuple[Any, dict[str, Any]]:
    """The caller's rows matching the filters, through the portal's filter form."""
    values = filters.model_dump(exclude_none=True)
    if caller.api_key is not None:
        wanted = values.get("key")
        if wanted and wanted not in (str(caller.api_key.pk), caller.api_key.prefix):
            raise ApiError(403, "api_key_not_allowed", "An API key may read only its own "
                           "usage.")
        values["key"] = str(caller.api_key.pk)
    else:
        caller.require()
    if "stream" in values:
        values["stream"] = "yes" if values["stream"] else "no"
    for name in ("date_from", "date_to"):
        if name in values:
            values[name] = values[name].isoformat()
    form = sel.UsageFilterForm(values, tenant=caller.tenant)
    if not form.is_valid():
        if "key" in form.errors:
            raise not_found("key")
        raise ApiError(422, "validation_error", "The filters are not valid; see details.",
                       {f: [str(m) for m in msgs] for f, msgs in form.errors.items()})
    return sel.filtered(caller.tenant, form.cleaned_data), form.cleaned_data


def _row(row: dict[str, Any]) -> dict[str, Any]:
    return {"request_id": row["request_id"], "created_at": row["created_at"],
            "key": row["key_masked"], "key_name": row.get("key__name"),
            "model": row["model"], "endpoint": row["endpoint"],
            "status_code": row["status_code"], "status_class": row["status_class"],
            "error_code": row["error_code"], "stream": row["stream"],
            "input_tokens": row["input_tokens"], "cached_tokens": row["cached_tokens"],
            "output_tokens": row["output_tokens"],
            "reasoning_tokens": row["reasoning_tokens"], "cost": money(row["cost"]),
            "latency_ms": row["latency_ms"], "ttfb_ms": row["ttfb_ms"],
            "estimated": row["estimated"]}


@router.get("/usage/log", response={200: LogPage, **ERRORS},
            summary="The request log, newest first, in keyset pages")
def usage_log(request: HttpRequest, filters: Query[LogFilter],
              cursor: str | None = Query(None, max_length=200,  # noqa: B008
                                         description="`older` or `newer` of a page."),
              limit: int = Query(sel.PAGE_SIZE, ge=1, le=MAX_PAGE)  # noqa: B008
              ) -> dict[str, Any]:
    rows, data = _filtered(caller_of(request), filters)
    position = None
    if cursor:
        try:
            position = sel.Cursor.decode(cursor)
        except sel.BadCursor:
            raise ApiError(400, "bad_cursor", "This cursor is not valid; start again "
                           "without one.") from None
    page = sel.page(rows, position, size=limit, windowed=sel.needs_windows(data))
    return {"items": [_row(r) for r in page.rows], "older": page.older, "newer": page.newer}


@router.get("/usage/log/totals", response={200: LogTotalsOut, **ERRORS},
            summary="Requests, tokens and cost of the filtered log (the newest 100,000 rows "
            "at most)")
def usage_log_totals(request: HttpRequest, filters: Query[LogFilter]) -> dict[str, Any]:
    rows, _ = _filtered(caller_of(request), filters)
    totals = sel.totals(rows)
    return {**totals, "cost": money(totals["cost"])}


class CostLineOut(Schema):
    part: str
    tokens: int
    per_million: str
    cost: str


class LogDetailOut(LogRowOut):
    client_ip: str | None
    user_agent: str
    multiplier: str
    per_request: str
    breakdown: list[CostLineOut]
    total_at_current_prices: str


@router.get("/usage/log/{request_id}", response={200: LogDetailOut, **ERRORS},
            summary="One request, with its cost broken down at today's prices")
def usage_detail(request: HttpRequest, request_id: str) -> dict[str, Any]:
    caller = caller_of(request)
    log = sel.request_detail(caller.tenant, request_id)
    if log is None or (caller.api_key is not None and log.key_id != caller.api_key.pk):
        raise not_found("request")
    if caller.api_key is None:
        caller.require()
    breakdown = sel.cost_breakdown(log)
    row = {f: getattr(log, f) for f in usagerow.MEMBER_FIELDS}
    row.update(key_masked=log.key.masked if log.key else (
        f"{log.key_prefix}…" if log.key_prefix else ""),
        key__name=log.key.name if log.key else None,
        status_class=sel.status_class(log.status_code, log.error_code))
    return {**_row(row), "client_ip": log.client_ip, "user_agent": log.user_agent or "",
            "multiplier": money(breakdown["multiplier"]),
            "per_request": money(breakdown["per_request"]),
            "breakdown": [{"part": part, "tokens": line["tokens"],
                           "per_million": money(line["per_million"]),
                           "cost": money(line["cost"])}
                          for part, _label, line in breakdown["lines"]],
            "total_at_current_prices": money(breakdown["total"])}
