"""The tenant API, ``/api/v1/...`` (django-ninja): everything the portal does, for scripts.

One router per resource (``me``, ``keys``, ``usage``, ``billing``, ``members``, ``models``,
``audit``),
authentication and the tenant choice in ``auth``, the one error shape in ``errors``. The
OpenAPI schema is at ``/api/v1/openapi.json``, its docs (Swagger UI, served from the
installed django-ninja's static files: no CDN) at ``/api/v1/docs``.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI

from portal.tenant_api import audit, billing, errors, keys, me, members, models, usage
from portal.tenant_api.auth import TENANT_HEADER, TENANT_QUERY, BearerAuth, PortalSession

DESCRIPTION = f"""
Everything the Turnpike portal does, for scripts: keys, usage, balance and ledger,
redemption codes, members and invitations, models and prices.

**Authentication** (one of):

- `Authorization: Bearer tp_pat_…`: a personal access token, made in the portal under
  *Access tokens*. A read-only token gets 403 `read_only_token` on any change.
- The portal's session cookie (a logged-in browser); changes need the `X-CSRFToken` header.
- `Authorization: Bearer sk-tp-…`: a Turnpike API key. It may read only `GET /balance`,
  `GET /key` (itself: quota and spend) and its own usage (`/usage/*`); anything else is
  403 `api_key_not_allowed`.

**Tenant**: a token bound to a tenant acts for it. Otherwise name one of your tenants (id or
name) in the `{TENANT_HEADER}` header or the `?{TENANT_QUERY}=` parameter; without it a user
with one tenant acts for it (a session user: the tenant chosen in the portal), and one with
several gets 400 `tenant_required`. A tenant you are not a member of is 404
`tenant_not_found`, and so is every object of another tenant.

**Errors** all have one shape: `{{"error": {{"code": "...", "message": "...", "details": ...}}}}`.
400 unreadable request (bad JSON, bad cursor, no tenant chosen), 401 no or bad
credentials, 403 not allowed (role, read-only token, API key, CSRF), 404 not found in your
tenant, 409 conflicts with the current state (last owner, code already used), 422 invalid
input (`details` names the fields).

Money is exact decimal text (`"12.500000"`) in the billing currency. `/api/balance`,
`/api/redeem` and `/api/ledger` (API-key authentication) are the deprecated forerunners of
`GET /balance`, `POST /redeem` and `GET /ledger` here.
"""

api = NinjaAPI(
    title="Turnpike tenant API",
    version="1",
    description=DESCRIPTION,
    urls_namespace="tenant-api-v1",
    auth=[BearerAuth(), PortalSession()],
)
errors.install(api)
for module in (me, keys, usage, billing, members, models, audit):
    api.add_router("/", module.router)


def unknown_url(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Any other path under /api/v1/: a 404 in the API's error shape, not a portal page."""
    return errors.respond(api, request, errors.ApiError(
        404, "unknown_url", f"No such API path: {request.path!r}. See /api/v1/docs."))
