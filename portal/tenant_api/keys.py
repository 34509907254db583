"""Keys: list, create (the secret returned once), read, update, disable/enable, rotate,
delete; and ``GET /key``, the calling API key itself.

Validation is the portal's ``KeyForm`` (groups the tenant may use, models the group can
call, limits within the group's, IPs, expiry); writes go through ``keys.services``; who may
change a key is ``portal.tenancy.can_change_key``. Another tenant's key id is a 404.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from django.http import HttpRequest, HttpResponse
from ninja import Field, Query, Router, Schema, Status

from keys import services
from keys.models import MAX_CAPTURE_DAYS, ApiKey
from portal.selectors import keys as selectors
from portal.tenancy import can_change_key
from portal.tenant_api.auth import Caller, caller_of
from portal.tenant_api.common import NO_NUL, money
from portal.tenant_api.errors import ERRORS, ApiError
from portal.views.key_forms import KEEP, KeyForm, initial_for

router = Router(tags=["keys"])

MAX_GRACE_SECONDS = 7 * 24 * 3600


class KeyOut(Schema):
    id: int
    name: str
    masked: str = Field(description="The key as Turnpike shows it: sk-tp-ab12…wxyz.")
    state: str = Field(description="active, disabled or expired.")
    group_id: int | None = Field(description="The key's own group; null: the tenant's.")
    group: str | None = Field(description="Name of the group its limits come from.")
    allowed_models: list[str]
    denied_models: list[str]
    allowed_ips: list[str]
    rpm: int | None
    rpd: int | None
    tpm: int | None
    concurrency: int | None
    max_tokens: int | None
    quota: str | None = Field(description="Spending cap (decimal text); null: none.")
    quota_used: str
    quota_remaining: str | None
    expires_at: datetime | None
    response_storage: Literal["inherit", "on", "off"] = Field(
        description="Whether its /v1/responses answers are stored: as the tenant (inherit), "
        "on or off.")
    capture_bodies: Literal["inherit", "on", "off"] = Field(
        description="Body capture for debugging: as the tenant's window (inherit), on until "
        "capture_bodies_until, or off.")
    capture_bodies_until: datetime | None = Field(
        description="When capture_bodies is on: the time capture stops.")
    created_at: datetime
    created_by: str | None = Field(description="Email of the user who created it.")
    rotated_from_id: int | None
    last_used_at: datetime | None
    requests_today: int
    cost_today: str
    requests_month: int
    cost_month: str


class KeyPage(Schema):
    items: list[KeyOut]
    page: int
    pages: int
    count: int


class NewKeyOut(KeyOut):
    secret: str = Field(description="The key's secret. Shown this once: only a hash is kept.")


class RotatedOut(Schema):
    key: NewKeyOut
    old_key: KeyOut


LIMIT = {"ge": 0, "le": 2**31 - 1}


class KeyLimits(Schema):
    rpm: int | None = Field(None, **LIMIT)
    rpd: int | None = Field(None, **LIMIT)
    tpm: int | None = Field(None, **LIMIT)
    concurrency: int | None = Field(None, **LIMIT)
    max_tokens: int | None = Field(None, **LIMIT)
    quota: Decimal | None = Field(None, ge=0, max_digits=18, decimal_places=6)
    expires_at: datetime | None = Field(None, description="Null: never.")
    response_storage: Literal["inherit", "on", "off"] | None = Field(
        None, description="Store its /v1/responses answers: inherit (the tenant's setting; "
        "the default), on or off.")
    capture_bodies: Literal["inherit", "on", "off"] | None = Field(
        None, description="Capture its request and response bodies for debugging (shown to "
        "the tenant's owners): inherit (the tenant's window; the default), on until "
        "capture_bodies_until, or off.")
    capture_bodies_until: datetime | None = Field(
        None, description="With capture_bodies on: when capture stops (in the future, at "
        f"most {MAX_CAPTURE_DAYS} days ahead).")


class KeyIn(KeyLimits):
    name: str = Field(min_length=1, max_length=100)
    group: int | None = Field(None, description="A group id the tenant may use; null: the "
                              "tenant's group.")
    allowed_models: list[str] = Field(default_factory=list)
    denied_models: list[str] = Field(default_factory=list)
    allowed_ips: list[str] = Field(default_factory=list, description="Addresses or CIDRs.")


class KeyPatch(KeyLimits):
    """Only the fields sent change; ``null`` clears a limit (back to the group's) or the
    expiry (never)."""

    name: str | None = Field(None, min_length=1, max_length=100)
    group: int | None = None
    allowed_models: list[str] | None = None
    denied_models: list[str] | None = None
    allowed_ips: list[str] | None = None


class RotateIn(Schema):
    grace_seconds: int = Field(0, ge=0, le=MAX_GRACE_SECONDS, description="How long the old "
                               "key keeps working (0: it stops at once; at most 7 days).")


class KeyFilter(Schema):
    q: str = Field("", max_length=200, pattern=NO_NUL, description="Name, or the start of the key.")
    status: str = Field("", pattern="^(|active|disabled)$")
    page: int = Field(1, ge=1, le=10**6)


def key_out(row: selectors.KeyRow) -> dict[str, Any]:
    key = row.key
    group = selectors.effective_group(key.tenant, key.group)
    remaining = None if key.quota is None else max(key.quota - key.quota_used, Decimal(0))
    return {
        "id": key.pk, "name": key.name, "masked": key.masked, "state": row.state,
        "group_id": key.group_id, "group": group.name if group else None,
        "allowed_models": list(key.allowed_models or []),
        "denied_models": list(key.denied_models or []),
        "allowed_ips": list(key.allowed_ips or []),
        "rpm": key.rpm, "rpd": key.rpd, "tpm": key.tpm, "concurrency": key.concurrency,
        "max_tokens": key.max_tokens, "quota": money(key.quota),
        "quota_used": money(key.quota_used), "quota_remaining": money(remaining),
        "expires_at": key.expires_at, "response_storage": key.response_storage,
        "capture_bodies": key.capture_bodies, "capture_bodies_until": key.capture_bodies_until,
        "created_at": key.created_at,
        "created_by": key.created_by.email if key.created_by_id and key.created_by else None,
        "rotated_from_id": key.rotated_from_id, "last_used_at": row.last_used,
        "requests_today": row.today.requests, "cost_today": money(row.today.cost),
        "requests_month": row.month.requests, "cost_month": money(row.month.cost),
    }


def one_key_out(key: ApiKey) -> dict[str, Any]:
    """The key as stored (fresh from the database) with its figures."""
    return key_out(selectors.key_row(selectors.key_get(key.tenant, key.pk)))


def _form_data(changes: dict[str, Any], key: ApiKey | None) -> dict[str, Any]:
    """The API's fields as the portal's KeyForm data (on top of the key's current values
    for an update)."""
    data: dict[str, Any] = initial_for(key) if key is not None else {"expiry": "never"}
    for name, value in changes.items():
        if name == "group":
            data["group"] = "" if value is None else str(value)
        elif name == "allowed_ips":
            data["allowed_ips"] = "\n".join(value or [])
        elif name == "expires_at":
            data["expiry"] = "never" if value is None else "custom"
            data["expires_at"] = value
        elif name in ("allowed_models", "denied_models"):
            data[name] = list(value or [])
        else:
            data[name] = value
    if key is not None and data.get("expiry") == KEEP and key.expires_at is None:
        data["expiry"] = "never"
    return data


def validated(caller: Caller, changes: dict[str, Any], key: ApiKey | None = None
              ) -> dict[str, Any]:
    form = KeyForm(_form_data(changes, key), tenant=caller.tenant, instance=key)
    if not form.is_valid():
        errors = {("expires_at" if field == "expiry" else
                   "non_field" if field == "__all__" else field): [str(e) for e in messages]
                  for field, messages in form.errors.items()}
        raise ApiError(422, "validation_error", "The key's settings are not valid; see "
                       "details.", errors)
    return form.settings()


def key_for_change(caller: Caller, pk: int) -> ApiKey:
    caller.require()
    key = selectors.key_get(caller.tenant, pk)
    if not can_change_key(caller.membership, key):
        raise ApiError(403, "forbidden", "Your role in this tenant does not allow changing "
                       "this key.")
    return key


@router.get("/keys", response={200: KeyPage, **ERRORS}, summary="The tenant's keys, newest "
            "first, 50 a page")
def key_list(request: HttpRequest, filters: Query[KeyFilter]) -> dict[str, Any]:
    caller = caller_of(request)
    caller.require()
    page, rows = selectors.key_page(caller.tenant, filters.page, search=filters.q,
                                    status=filters.status)
    return {"items": [key_out(r) for r in rows], "page": page.number,
            "pages": page.paginator.num_pages, "count": page.paginator.count}


@router.post("/keys", response={201: NewKeyOut, **ERRORS},
             summary="Create a key; the answer holds its secret, once")
def key_create(request: HttpRequest, response: HttpResponse,
               payload: KeyIn) -> Status[dict[str, Any]]:
    caller = caller_of(request)
    caller.require("own_keys")
    values = validated(caller, payload.model_dump())
    made = services.key_create(tenant=caller.tenant, created_by=caller.user,
                               name=values.pop("name"), models=values.pop("allowed_models"),
                               **values)
    response["Cache-Control"] = "no-store"
    return Status(201, {**one_key_out(made.key), "secret": made.secret})


@router.get("/key", response={200: KeyOut, **ERRORS},
            summary="The calling API key: its settings, quota and spend (API-key callers)")
def calling_key(request: HttpRequest) -> dict[str, Any]:
    caller = caller_of(request)
    if caller.api_key is None:
        raise ApiError(400, "not_an_api_key", "GET /key describes the API key that calls it; "
                       "with a token or the session use GET /keys/{id}.")
    return one_key_out(caller.api_key)


@router.get("/keys/{key_id}", response={200: KeyOut, **ERRORS}, summary="One key")
def key_detail(request: HttpRequest, key_id: int) -> dict[str, Any]:
    caller = caller_of(request)
    caller.require()
    return one_key_out(selectors.key_get(caller.tenant, key_id))


@router.patch("/keys/{key_id}", response={200: KeyOut, **ERRORS},
              summary="Change a key's settings (only the fields sent)")
def key_update(request: HttpRequest, key_id: int, payload: KeyPatch) -> dict[str, Any]:
    key = key_for_change(caller_of(request), key_id)
    values = validated(caller_of(request), payload.model_dump(exclude_unset=True), key)
    services.key_update(key=key, **values)
    return one_key_out(key)


def _set_status(request: HttpRequest, key_id: int, active: bool) -> dict[str, Any]:
    key = key_for_change(caller_of(request), key_id)
    services.key_set_status(key=key, active=active)
    return one_key_out(key)


@router.post("/keys/{key_id}/disable", response={200: KeyOut, **ERRORS},
             summary="Disable a key (/v1 answers 403 api_key_disabled)")
def key_disable(request: HttpRequest, key_id: int) -> dict[str, Any]:
    return _set_status(request, key_id, False)


@router.post("/keys/{key_id}/enable", response={200: KeyOut, **ERRORS},
             summary="Enable a key again")
def key_enable(request: HttpRequest, key_id: int) -> dict[str, Any]:
    return _set_status(request, key_id, True)


@router.post("/keys/{key_id}/rotate", response={200: RotatedOut, **ERRORS},
             summary="Replace a key by a new one with the same settings; the new secret "
             "is in the answer, once")
def key_rotate(request: HttpRequest, response: HttpResponse, key_id: int,
               payload: RotateIn) -> dict[str, Any]:
    key = key_for_change(caller_of(request), key_id)
    made = services.key_rotate(key=key, grace=timedelta(seconds=payload.grace_seconds))
    key.refresh_from_db()
    response["Cache-Control"] = "no-store"
    return {"key": {**one_key_out(made.key), "secret": made.secret},
            "old_key": one_key_out(key)}


@router.delete("/keys/{key_id}", response={204: None, **ERRORS},
               summary="Delete a key for good (its usage stays)")
def key_delete(request: HttpRequest, key_id: int) -> Status[None]:
    key = key_for_change(caller_of(request), key_id)
    services.key_delete(key=key)
    return Status(204, None)

