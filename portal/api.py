"""The first tenant API (django-ninja), mounted at /api/; docs at /api/docs. Deprecated:
its three endpoints are kept as they are for existing scripts, and the tenant API at
``/api/v1/`` (``portal.tenant_api``) does all they do and more (``GET /api/v1/balance``,
``POST /api/v1/redeem``, ``GET /api/v1/ledger``, with the same API key or a personal access
token).

Authentication is a Turnpike API key, the same one a client sends to /v1
(``Authorization: Bearer sk-tp-…``), checked by ``keys.authn`` as /v1 checks it, so a
script can check its balance and top it up with a redemption code.

Every error has one body shape, ``{"message": "...", "extra": {"code": "...", ...}}``,
written by ``error_response``: 400 for a bad request or a code that cannot be redeemed,
401 for a missing, unknown or expired key, 403 for a disabled key or tenant or a client
address the key does not allow.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from ninja import Field, NinjaAPI, Query, Schema
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import HttpBearer

from billing.models import LedgerEntry
from billing.redemption import RedemptionError, redeem
from keys import authn
from keys.models import ApiKey, Tenant
from keys.services import ApplicationError

MAX_LEDGER_LIMIT = 500


class ApiError(Exception):
    """An error answered as ``{"message", "extra"}`` with ``status``."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


# --- authentication ---------------------------------------------------------------------

class TurnpikeKey(HttpBearer):
    """A Turnpike API key, checked by ``keys.authn`` as ``/v1`` checks it (the same
    headers, order and codes); ``request.auth`` is the ``ApiKey`` (its tenant loaded)."""

    def __call__(self, request: HttpRequest) -> ApiKey:
        return self.authenticate(request, authn.secret_from_django(request.headers))

    def authenticate(self, request: HttpRequest, token: str | None) -> ApiKey:
        try:
            return authn.authenticate_secret(token, request.META.get("REMOTE_ADDR"))
        except authn.KeyRefused as refused:
            raise ApiError(refused.status, refused.message, code=refused.code) from None


api = NinjaAPI(
    title="Turnpike tenant API",
    version="1.0.0",
    description="**Deprecated**: use the tenant API at /api/v1/ (docs: /api/v1/docs), whose "
    "`GET /balance`, `POST /redeem` and `GET /ledger` replace these. "
    "Balance, redemption codes and the ledger of the tenant that owns the API "
    "key. Authenticate with the key you use for /v1: `Authorization: Bearer sk-tp-…`. "
    'Errors: `{"message": "...", "extra": {"code": "..."}}`.',
    urls_namespace="tenant-api",
    auth=TurnpikeKey(),
)


# --- errors: one handler, one body shape -------------------------------------------------

HTTP_ERROR_CODES = {400: "invalid_request", 401: "authentication_error",
                    403: "permission_denied", 404: "not_found", 429: "rate_limited"}


def error_response(request: HttpRequest, exc: Exception) -> HttpResponse:
    extra: dict[str, Any] = {}
    if isinstance(exc, ApiError):
        status, message, extra = exc.status, exc.message, exc.extra
    elif isinstance(exc, RedemptionError):
        status, message = 400, str(exc)
        extra = {"code": f"redemption_code_{exc.reason}"}
    elif isinstance(exc, ApplicationError):
        status, message, extra = 400, str(exc), {"code": "invalid_request"}
    elif isinstance(exc, ValidationError):
        status, message = 400, "The request is not valid; see extra.errors."
        extra = {"code": "invalid_request", "errors": exc.errors}
    elif isinstance(exc, AuthenticationError):
        status, message, extra = 401, "Authentication failed.", {"code": "invalid_api_key"}
    elif isinstance(exc, HttpError):  # e.g. a body that is not JSON
        status, message = exc.status_code, str(exc)
        extra = {"code": HTTP_ERROR_CODES.get(status, "error")}
    else:  # Http404
        status, message, extra = 404, "Not found.", {"code": "not_found"}
    response = api.create_response(request, {"message": message, "extra": extra},
                                   status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="turnpike"'
    return response


for _exc in (ApiError, ApplicationError, ValidationError, HttpError, Http404):
    api.add_exception_handler(_exc, error_response)


# --- schemas ------------------------------------------------------------------------------

class ErrorOut(Schema):
    message: str
    extra: dict[str, Any] = Field(default_factory=dict,
                                  description="`code`, a stable name of the error, and details.")


class BalanceOut(Schema):
    tenant: str
    balance: str = Field(description="Decimal as text (exact), e.g. \"12.500000\".")
    currency: str


class LedgerEntryOut(Schema):
    id: int
    kind: str = Field(description="topup, charge, refund, adjustment or redemption.")
    amount: str = Field(description="Decimal as text; positive adds to the balance.")
    reference: str
    note: str
    created_at: datetime


class RedeemIn(Schema):
    code: str = Field(min_length=1, max_length=200,
                      description="A redemption code, e.g. tp-rc-XXXX-XXXX-XXXX-XXXX-XXXX-XXXX "
                      "(case, spaces and dashes do not matter).")


class RedeemOut(BalanceOut):
    entry: LedgerEntryOut


class LedgerOut(Schema):
    tenant: str
    currency: str
    entries: list[LedgerEntryOut]


AUTH_ERRORS: dict[int, Any] = {401: ErrorOut, 403: ErrorOut}


def _currency() -> str:
    return getattr(settings, "BILLING_CURRENCY", "USD") or "USD"


def _money(value: Decimal) -> str:
    return str(value)


def _balance(tenant: Tenant) -> dict[str, Any]:
    return {"tenant": tenant.name, "balance": _money(tenant.balance), "currency": _currency()}


def _entry(entry: LedgerEntry) -> dict[str, Any]:
    return {"id": entry.pk, "kind": entry.kind, "amount": _money(entry.amount),
            "reference": entry.reference, "note": entry.note, "created_at": entry.created_at}


# --- endpoints ----------------------------------------------------------------------------

@api.get("/balance", response={200: BalanceOut, **AUTH_ERRORS}, tags=["billing"],
         summary="The tenant's balance (deprecated: GET /api/v1/balance)", deprecated=True)
def balance(request: HttpRequest) -> dict[str, Any]:
    tenant = request.auth.tenant  # type: ignore[attr-defined]
    tenant.refresh_from_db(fields=["balance"])
    return _balance(tenant)


@api.post("/redeem", response={200: RedeemOut, 400: ErrorOut, **AUTH_ERRORS},
          tags=["billing"], deprecated=True,
          summary="Redeem a code: add its amount to the balance (deprecated: POST "
          "/api/v1/redeem)")
def redeem_code(request: HttpRequest, payload: RedeemIn) -> dict[str, Any]:
    tenant = request.auth.tenant  # type: ignore[attr-defined]
    entry = redeem(code=payload.code, tenant=tenant)  # RedemptionError: 400
    return {**_balance(tenant), "entry": _entry(entry)}


@api.get("/ledger", response={200: LedgerOut, 400: ErrorOut, **AUTH_ERRORS},
         tags=["billing"], deprecated=True,
         summary="The tenant's latest ledger entries, newest first (deprecated: GET "
         "/api/v1/ledger)")
def ledger(request: HttpRequest,
           limit: int = Query(50, ge=1, le=MAX_LEDGER_LIMIT)) -> dict[str, Any]:  # noqa: B008
    tenant = request.auth.tenant  # type: ignore[attr-defined]
    entries = LedgerEntry.objects.filter(tenant=tenant).order_by("-created_at", "-id")[:limit]
    return {"tenant": tenant.name, "currency": _currency(),
            "entries": [_entry(e) for e in entries]}
