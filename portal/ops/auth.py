"""Who may call the operations API: staff, and only staff.

Three ways in, tried in this order:

- a staff-scoped personal access token (``Authorization: Bearer tp_pat_…``, made with
  ``manage.py token create --staff`` or in the portal); a read-scope token may only read;
- a DRF token (``rest_framework.authtoken``: ``Authorization: Token …``, or ``Bearer …``),
  made with ``manage.py drf_create_token USERNAME`` or in the admin;
- the session of a staff user logged in to the admin or portal (the browsable API; unsafe
  methods need the CSRF token, as DRF's SessionAuthentication checks).

Anything else is 401 (no or bad credentials) or 403 (credentials of someone who is not
staff, or a token that does not carry staff rights).
"""

from __future__ import annotations

from typing import Any

from rest_framework.authentication import (
    BaseAuthentication,
    TokenAuthentication,
    get_authorization_header,
)
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from keys.models import AccessToken
from keys.tokens import authenticate, is_staff_token, looks_like_token


def _bearer(request: Request) -> str | None:
    parts = get_authorization_header(request).split()
    if len(parts) != 2 or parts[0].lower() != b"bearer":
        return None
    try:
        return parts[1].decode()
    except UnicodeDecodeError:
        return None


class AccessTokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer tp_pat_…``: ``request.user`` is the token's user and
    ``request.auth`` the ``AccessToken``; the token is also left on the Django request as
    ``turnpike_token`` (the audit log reads who acted, and through what, from there)."""

    def authenticate(self, request: Request) -> tuple[Any, AccessToken] | None:
        secret = _bearer(request)
        if secret is None or not looks_like_token(secret):
            return None  # not ours: a DRF token, or no credentials
        token = authenticate(secret)
        if token is None:
            raise AuthenticationFailed("Invalid, expired or revoked personal access token.")
        request._request.turnpike_token = token  # type: ignore[attr-defined]
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="turnpike-ops"'


class BearerTokenAuthentication(TokenAuthentication):
    """A DRF token sent as ``Authorization: Bearer …`` (what most HTTP clients send)."""

    keyword = "Bearer"


class IsOpsStaff(BasePermission):
    """An active staff user; through a personal access token only when the token is a
    staff token (of a user still staff), and only to read when its scope is read."""

    message = "The operations API is for staff only."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not (user and user.is_authenticated and user.is_active):
            return False
        token = request.auth
        if isinstance(token, AccessToken):
            if not is_staff_token(token):
                self.message = ("This personal access token has no staff rights: the "
                                "operations API takes a staff token of a staff user.")
                return False
            if request.method not in SAFE_METHODS and not token.can_write:
                self.message = "This personal access token is read-only."
                return False
            return True
        if not user.is_staff:
            self.message = "The operations API is for staff only."
            return False
        return True
