"""Who calls the tenant API, and for which tenant.

Three ways in, tried in this order:

1. ``Authorization: Bearer tp_pat_…``: a personal access token (``keys.tokens``). A
   ``read`` token may only read (any other method: 403 ``read_only_token``).
2. ``Authorization: Bearer sk-tp-…`` (or ``x-api-key``, ``api-key``): a Turnpike API key,
   checked by ``keys.authn`` as ``/v1`` checks it (the same order and codes: disabled key
   or tenant, IP allow-list, expiry). It may read only the tenant's balance and its own
   key: ``GET /balance``, ``GET /key``, its own usage; everything else is 403
   ``api_key_not_allowed``.
3. The portal's session cookie; unsafe methods need the CSRF token (``X-CSRFToken``).

The tenant: a token bound to a tenant acts for it; otherwise the ``X-Turnpike-Tenant``
header or the ``tenant`` query parameter (a tenant's id or name) chooses one of the user's
tenants; without either, a user with one tenant acts for it, a session user for the tenant
chosen in the portal's switcher, and a token user with several gets 400
``tenant_required``. A tenant the caller is not a member of is 404 ``tenant_not_found``.

After authentication ``request.auth`` is a ``Caller``; for a token ``request.user`` is
the token's user and ``request.turnpike_token`` the token (the audit log reads both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from ninja.security import APIKeyCookie, HttpBearer
from ninja.utils import check_csrf

from keys import authn, tokens
from keys.models import AccessToken, ApiKey, Membership, Tenant
from keys.secrets import KEY_PREFIX
from portal import tenancy
from portal.tenant_api.errors import ApiError

TENANT_HEADER = "X-Turnpike-Tenant"
TENANT_QUERY = "tenant"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


@dataclass
class Caller:
    """The authenticated caller of one request."""

    tenant: Tenant
    user: Any = None
    membership: Membership | None = None
    token: AccessToken | None = None
    api_key: ApiKey | None = None
    can_write: bool = False
    method: str = "session"  # token | session | api_key

    @property
    def role(self) -> str | None:
        return self.membership.role if self.membership is not None else None

    def can(self, action: str) -> bool:
        return self.membership is not None and tenancy.can(self.membership, action)

    def require(self, action: str = "view") -> Membership:
        """The caller's membership if its role allows ``action`` (``portal.tenancy.can``);
        403 otherwise, and always for an API key."""
        if self.membership is None:
            raise ApiError(403, "api_key_not_allowed", "An API key may read only the "
                           "tenant's balance and its own key and usage; use a personal "
                           "access token for this.")
        if not tenancy.can(self.membership, action):
            raise ApiError(403, "forbidden", "Your role in this tenant does not allow this.")
        return self.membership


def caller_of(request: HttpRequest) -> Caller:
    return request.auth  # type: ignore[attr-defined]


def _wanted_tenant(request: HttpRequest) -> str:
    return (request.headers.get(TENANT_HEADER) or request.GET.get(TENANT_QUERY) or "").strip()


def _matches(tenant: Tenant, wanted: str) -> bool:
    return tenant.name == wanted or (wanted.isdigit() and tenant.pk == int(wanted))


def _tenant_not_found(wanted: str) -> ApiError:
    return ApiError(404, "tenant_not_found",
                    f"No tenant {wanted!r} among the tenants this caller may use.")


def choose_membership(request: HttpRequest, user: Any, *, bound: Tenant | None = None,
                      session: bool = False) -> Membership:
    mine = tenancy.memberships(user)
    wanted = _wanted_tenant(request)
    if bound is not None:
        found = next((m for m in mine if m.tenant_id == bound.pk), None)
        if found is None:
            raise ApiError(403, "not_a_member", f"The token's user is no longer a member of "
                           f"{bound.name}.")
        if wanted and not _matches(found.tenant, wanted):
            raise _tenant_not_found(wanted)
        return found
    if not mine:
        raise ApiError(403, "no_tenant", "This user is not a member of any tenant.")
    if wanted:
        found = next((m for m in mine if _matches(m.tenant, wanted)), None)
        if found is None:
            raise _tenant_not_found(wanted)
        return found
    if session:
        chosen = tenancy.current_membership(request)
        if chosen is not None:
            return chosen
    if len(mine) == 1:
        return mine[0]
    names = ", ".join(f"{m.tenant.name} (id {m.tenant_id})" for m in mine)
    raise ApiError(400, "tenant_required",
                   f"This user is a member of several tenants ({names}): choose one with the "
                   f"{TENANT_HEADER} header or the ?{TENANT_QUERY}= parameter (its id or "
                   "name), or use a token bound to one tenant.")


def _check_write(request: HttpRequest, caller: Caller) -> Caller:
    if request.method not in SAFE_METHODS and not caller.can_write:
        if caller.api_key is not None:
            caller.require()  # raises api_key_not_allowed
        raise ApiError(403, "read_only_token", "This token is read-only: create a "
                       "read-write token to make changes.")
    return caller


def _token_caller(request: HttpRequest, secret: str) -> Caller:
    token = tokens.authenticate(secret)
    if token is None:
        raise ApiError(401, "invalid_token", "The access token is not valid, has expired or "
                       "was revoked.")
    request.user = token.user
    request.turnpike_token = token  # type: ignore[attr-defined]
    membership = choose_membership(request, token.user, bound=token.tenant)
    return Caller(tenant=membership.tenant, user=token.user, membership=membership,
                  token=token, can_write=token.can_write, method="token")


def _key_caller(request: HttpRequest, secret: str) -> Caller:
    try:
        key = authn.authenticate_secret(secret, request.META.get("REMOTE_ADDR"))
    except authn.KeyRefused as refused:
        raise ApiError(refused.status, refused.code, refused.message) from None
    request.turnpike_api_key = key  # type: ignore[attr-defined]
    return Caller(tenant=key.tenant, api_key=key, method="api_key")


class BearerAuth(HttpBearer):
    """``Authorization: Bearer tp_pat_…`` (personal access token) or ``sk-tp-…`` (API key;
    ``x-api-key`` and ``api-key`` work too: the headers ``keys.authn`` reads)."""

    openapi_description = ("A personal access token (`tp_pat_…`, made in the portal under "
                           "Access tokens) or a Turnpike API key (`sk-tp-…`, read-only: "
                           "balance, its own key and usage).")

    def __call__(self, request: HttpRequest) -> Caller | None:
        secret = authn.secret_from_django(request.headers)
        if not secret:
            return None  # perhaps the session
        if tokens.looks_like_token(secret):
            caller = _token_caller(request, secret)
        elif secret.startswith(KEY_PREFIX):
            caller = _key_caller(request, secret)
        else:
            raise ApiError(401, "invalid_token", "Not a Turnpike credential: send a personal "
                           "access token (tp_pat_…) or an API key (sk-tp-…).")
        return _check_write(request, caller)

    def authenticate(self, request: HttpRequest, token: str) -> Any:  # pragma: no cover
        return None  # __call__ does the work


class PortalSession(APIKeyCookie):
    """The portal's session (logged in at /accounts/login/); unsafe methods need the CSRF
    token in ``X-CSRFToken``."""

    param_name = settings.SESSION_COOKIE_NAME
    openapi_description = "The portal's session cookie; send X-CSRFToken on writes."

    def __call__(self, request: HttpRequest) -> Caller | None:
        if not getattr(request, "user", None) or not request.user.is_authenticated:
            return None
        if request.method not in SAFE_METHODS and check_csrf(request) is not None:
            raise ApiError(403, "csrf_failed", "CSRF check failed: send the csrftoken "
                           "cookie's value in the X-CSRFToken header.")
        membership = choose_membership(request, request.user, session=True)
        return Caller(tenant=membership.tenant, user=request.user, membership=membership,
                      can_write=True, method="session")

    def authenticate(self, request: HttpRequest, key: str | None) -> Any:  # pragma: no cover
        return None
