"""The tenant API's one error shape and the handlers that produce it.

Every error is ``{"error": {"code": "...", "message": "...", "details": ...}}``:

- ``code``: a stable, machine-readable name (``not_found``, ``read_only_token``, ...);
- ``message``: a sentence for a person (in the request's language where the portal's
  rules word it);
- ``details``: optional, e.g. the fields that failed validation.

Statuses: 400 a request that cannot be read (malformed JSON, a bad cursor, no tenant
chosen when the caller has several), 401 no or bad credentials, 403 the role, the token's
scope or the API key does not allow it (or CSRF failed), 404 no such object *in the
caller's tenant* (another tenant's ids are 404, never 403), 409 the change conflicts with
the current state (last owner, code already redeemed, invitation no longer pending), 422
the input is well-formed but not valid.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI, Schema
from ninja.errors import AuthenticationError, HttpError, ValidationError

from billing.redemption import RedemptionError
from keys.membership import MembershipError, NotAllowed
from keys.services import ApplicationError


class ApiError(Exception):
    """An error answered with ``status`` and the error shape."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def not_found(what: str = "object") -> ApiError:
    return ApiError(404, "not_found", f"No such {what} in this tenant.")


class ErrorBody(Schema):
    code: str
    message: str
    details: Any = None


class ErrorOut(Schema):
    error: ErrorBody


ERROR_STATUSES = (400, 401, 403, 404, 422)
ERRORS: dict[int, Any] = {status: ErrorOut for status in ERROR_STATUSES}
ERRORS_409: dict[int, Any] = {**ERRORS, 409: ErrorOut}

HTTP_CODES = {400: "bad_request", 401: "unauthenticated", 403: "forbidden",
              404: "not_found", 405: "method_not_allowed", 409: "conflict",
              422: "validation_error", 429: "rate_limited"}
REDEMPTION_STATUS = {"invalid": 422, "redeemed": 409, "expired": 409}


def _validation_details(errors: list[Any]) -> list[dict[str, Any]]:
    """Pydantic's errors without their non-JSON parts (``ctx`` may hold exceptions)."""
    out = []
    for error in errors:
        if isinstance(error, dict):
            out.append({"loc": [str(p) for p in error.get("loc", ())],
                        "msg": str(error.get("msg", "")), "type": str(error.get("type", ""))})
        else:
            out.append({"loc": [], "msg": str(error), "type": "error"})
    return out


def as_api_error(exc: Exception) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ValidationError):
        return ApiError(422, "validation_error", "The request is not valid; see details.",
                        _validation_details(exc.errors))
    if isinstance(exc, AuthenticationError):
        return ApiError(401, "unauthenticated", "Authenticate with 'Authorization: Bearer "
                        "tp_pat_…' (a personal access token), the portal's session, or a "
                        "Turnpike API key.")
    if isinstance(exc, HttpError):
        status = exc.status_code
        message = str(exc.message) if hasattr(exc, "message") else str(exc)
        code = HTTP_CODES.get(status, "error")
        if status == 403 and "CSRF" in message:
            code, message = "csrf_failed", ("CSRF check failed: send the csrftoken cookie's "
                                            "value in the X-CSRFToken header.")
        return ApiError(status, code, message)
    if isinstance(exc, Http404):
        return not_found()
    if isinstance(exc, RedemptionError):
        return ApiError(REDEMPTION_STATUS.get(exc.reason, 422),
                        f"redemption_code_{exc.reason}", str(exc))
    if isinstance(exc, NotAllowed | PermissionDenied):
        return ApiError(403, "forbidden", str(exc) or "Your role in this tenant does not "
                        "allow this.")
    if isinstance(exc, MembershipError):
        return ApiError(409, "conflict", str(exc))
    if isinstance(exc, ApplicationError):
        return ApiError(422, "invalid_request", str(exc))
    raise exc  # not ours: a real 500


def respond(api: NinjaAPI, request: HttpRequest, error: ApiError) -> HttpResponse:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.details is not None:
        body["details"] = error.details
    response = api.create_response(request, {"error": body}, status=error.status)
    if error.status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="turnpike"'
    return response


def install(api: NinjaAPI) -> None:
    def handle(request: HttpRequest, exc: Exception) -> HttpResponse:
        return respond(api, request, as_api_error(exc))

    for exc_class in (ApiError, ValidationError, HttpError, Http404, PermissionDenied,
                      ApplicationError):
        api.add_exception_handler(exc_class, handle)
