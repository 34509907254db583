"""Balance, ledger, redemption codes and the tenant's settings.

Reads are ``portal.selectors.balance`` (the balance page's), redemption is
``billing.redemption.redeem`` (the portal's and the old ``/api/redeem``'s), settings go
through ``keys.membership.tenant_settings_update`` (owners only).
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

from django.http import HttpRequest
from django.utils import timezone
from ninja import Field, Query, Router, Schema

from billing import redemption
from billing.models import LedgerEntry
from keys import membership as rules
from keys.models import MAX_CAPTURE_DAYS, MAX_RETENTION_DAYS, Tenant, capture_window_error
from portal.selectors import balance as selectors
from portal.tenant_api.auth import caller_of
from portal.tenant_api.common import NO_NUL, currency, money
from portal.tenant_api.errors import ERRORS, ERRORS_409, ApiError

router = Router(tags=["billing"])

MAX_PAGE = 500
RESPONSE_STORAGE_HELP = ("on: /v1/responses answers are stored (previous_response_id, GET "
                         "/v1/responses/{id}); off: zero data retention. A key may override "
                         "it.")
CAPTURE_HELP = ("Body capture for debugging: until this time the request and response "
                "bodies of the tenant's keys (those that inherit) are kept, credentials "
                "redacted, and shown to owners on each request's page; null: off. At most "
                f"{MAX_CAPTURE_DAYS} days ahead.")
Kind = Literal["topup", "charge", "refund", "adjustment", "redemption"]
assert set(Kind.__args__) == set(LedgerEntry.Kind.values)  # type: ignore[attr-defined]


class BalanceOut(Schema):
    tenant_id: int
    tenant: str
    balance: str = Field(description="Decimal text, exact.")
    available: str = Field(description="The balance less what requests in flight have "
                           "reserved.")
    currency: str
    low_balance_threshold: str | None


class LedgerEntryOut(Schema):
    id: int
    kind: str
    amount: str = Field(description="Decimal text; positive adds to the balance.")
    reference: str
    note: str
    created_by: str | None
    created_at: datetime


class LedgerPage(Schema):
    items: list[LedgerEntryOut]
    next_cursor: str | None = Field(description="Cursor of the next (older) page.")


class LedgerFilter(Schema):
    kind: Kind | None = None
    date_from: date | None = Field(None, description="First local day (TIME_ZONE).")
    date_to: date | None = Field(None, description="Last local day, included.")
    cursor: str | None = Field(None, max_length=200, pattern=NO_NUL)
    limit: int = Field(selectors.PAGE_SIZE, ge=1, le=MAX_PAGE)


class RedeemIn(Schema):
    code: str = Field(min_length=1, max_length=200, description="tp-rc-XXXX-… (case, spaces "
                      "and dashes do not matter).")


class RedeemOut(BalanceOut):
    entry: LedgerEntryOut


class TenantOut(Schema):
    id: int
    name: str
    group: str | None
    role: str | None
    members_can_create_keys: bool
    low_balance_threshold: str | None
    response_storage: Literal["on", "off"] = Field(description=RESPONSE_STORAGE_HELP)
    response_retention_days: int = Field(description="Days a stored response is kept.")
    capture_bodies_until: datetime | None = Field(description=CAPTURE_HELP)


class TenantPatch(Schema):
    members_can_create_keys: bool | None = None
    low_balance_threshold: Decimal | None = Field(None, ge=0, lt=10**12, max_digits=18,
                                                  decimal_places=6)
    response_storage: Literal["on", "off"] | None = Field(None,
                                                          description=RESPONSE_STORAGE_HELP)
    response_retention_days: int | None = Field(None, ge=1, le=MAX_RETENTION_DAYS)
    capture_bodies_until: datetime | None = Field(
        None, description=CAPTURE_HELP + " Owners only; null switches capture off; left out: "
        "unchanged.")


def balance_out(tenant: Tenant) -> dict[str, Any]:
    tenant.refresh_from_db(fields=["balance", "low_balance_threshold"])
    available = selectors.available(tenant)
    return {"tenant_id": tenant.pk, "tenant": tenant.name, "balance": money(tenant.balance),
            "available": money(tenant.balance if available is None else available),
            "currency": currency(), "low_balance_threshold": money(tenant.low_balance_threshold)}


def entry_out(entry: LedgerEntry) -> dict[str, Any]:
    return {"id": entry.pk, "kind": entry.kind, "amount": money(entry.amount),
            "reference": entry.reference, "note": entry.note,
            "created_by": entry.created_by.email if entry.created_by_id and entry.created_by
            else None, "created_at": entry.created_at}


@router.get("/balance", response={200: BalanceOut, **ERRORS},
            summary="The tenant's balance and what is available now (API keys too)")
def balance(request: HttpRequest) -> dict[str, Any]:
    return balance_out(caller_of(request).tenant)


@router.get("/ledger", response={200: LedgerPage, **ERRORS},
            summary="The ledger, newest first, filtered and in keyset pages")
def ledger(request: HttpRequest, filters: Query[LedgerFilter]) -> dict[str, Any]:
    caller = caller_of(request)
    caller.require()
    if filters.date_from and filters.date_to and filters.date_from > filters.date_to:
        raise ApiError(422, "validation_error", "date_to is before date_from.")
    if filters.cursor and selectors.decode_cursor(filters.cursor) is None:
        raise ApiError(400, "bad_cursor", "This cursor is not valid; start again without one.")
    flt = selectors.LedgerFilter(kind=filters.kind or "", date_from=filters.date_from,
                                 date_to=filters.date_to)
    rows, next_cursor = selectors.ledger_page(caller.tenant, flt, filters.cursor,
                                              size=filters.limit)
    return {"items": [entry_out(e) for e in rows], "next_cursor": next_cursor}


@router.post("/redeem", response={200: RedeemOut, **ERRORS_409},
             summary="Redeem a code: its amount is added to the balance")
def redeem(request: HttpRequest, payload: RedeemIn) -> dict[str, Any]:
    caller = caller_of(request)
    caller.require("redeem")
    entry = redemption.redeem(code=payload.code, tenant=caller.tenant, user=caller.user)
    return {**balance_out(caller.tenant), "entry": entry_out(entry)}


def tenant_out(caller: Any) -> dict[str, Any]:
    tenant = caller.tenant
    tenant.refresh_from_db()
    return {"id": tenant.pk, "name": tenant.name,
            "group": tenant.group.name if tenant.group_id else None, "role": caller.role,
            "members_can_create_keys": tenant.members_can_create_keys,
            "low_balance_threshold": money(tenant.low_balance_threshold),
            "response_storage": tenant.response_storage,
            "response_retention_days": tenant.response_retention_days,
            "capture_bodies_until": tenant.capture_bodies_until}


@router.get("/tenant", response={200: TenantOut, **ERRORS},
            summary="The tenant and its settings", tags=["tenant"])
def tenant_detail(request: HttpRequest) -> dict[str, Any]:
    caller = caller_of(request)
    caller.require()
    return tenant_out(caller)


@router.patch("/tenant", response={200: TenantOut, **ERRORS},
              summary="Change the tenant's settings (owners)", tags=["tenant"])
def tenant_update(request: HttpRequest, payload: TenantPatch) -> dict[str, Any]:
    caller = caller_of(request)
    actor = caller.require("manage_tenant")
    tenant = caller.tenant
    changes = payload.model_dump(exclude_unset=True)
    until = changes.get("capture_bodies_until")
    if until is not None:
        if timezone.is_naive(until):  # no offset given: the server's time zone, as forms do
            until = changes["capture_bodies_until"] = timezone.make_aware(until)
        error = capture_window_error(until) or (
            "A body capture window must end in the future (null: capture off)."
            if until <= timezone.now() else None)
        if error:
            raise ApiError(422, "validation_error", error,
                           {"capture_bodies_until": [error]})
    flag = changes.get("members_can_create_keys")
    rules.tenant_settings_update(
        tenant=tenant, actor=actor,
        members_can_create_keys=tenant.members_can_create_keys if flag is None else flag,
        low_balance_threshold=changes.get("low_balance_threshold",
                                          tenant.low_balance_threshold),
        response_storage=changes.get("response_storage"),
        response_retention_days=changes.get("response_retention_days"),
        capture_bodies_until=changes.get("capture_bodies_until", rules.UNCHANGED))
    return tenant_out(caller)
