"""Personal access tokens: creating one (the secret is returned once), finding the token a
request presents, revoking. Shared by the tenant API (django-ninja, ``/api/v1``), the
operations API (DRF, ``/api/ops``), the portal's token page and ``manage.py token``.

A token looks like ``tp_pat_`` + 43 base62 characters; only its SHA-256 is stored, as for
API keys (a random 256-bit secret needs no slow hash). ``authenticate`` refuses a revoked or
expired token, one whose user is inactive, and a staff token whose user is no longer staff
(it then works as a plain token, never as staff).
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from keys.models import AccessToken, Membership, Tenant
from keys.secrets import hash_secret
from keys.services import ApplicationError

TOKEN_PREFIX = "tp_pat_"
_ALPHABET = string.ascii_letters + string.digits
_BODY_LENGTH = 43
DISPLAY_PREFIX_LENGTH = len(TOKEN_PREFIX) + 4
# last_used_at is written at most this often per token (a script polling every second
# must not turn every read into a database write).
LAST_USED_RESOLUTION = timedelta(minutes=1)


def looks_like_token(secret: str) -> bool:
    return secret.startswith(TOKEN_PREFIX)


@dataclass(frozen=True)
class NewToken:
    token: AccessToken
    secret: str  # shown once


def token_create(*, user: Any, name: str, scope: str = AccessToken.Scope.READ,
                 tenant: Tenant | None = None, staff: bool = False,
                 expires_at: datetime | None = None) -> NewToken:
    """Create a token for ``user``. A tenant-bound token needs the user to be a member of
    that tenant; a staff token needs a staff user."""
    name = (name or "").strip()
    if not name:
        raise ApplicationError("A token needs a name.")
    if len(name) > 100:
        raise ApplicationError("A token's name has at most 100 characters.")
    if scope not in AccessToken.Scope.values:
        raise ApplicationError(f"Unknown scope {scope!r}: use read or write.")
    if staff and not user.is_staff:
        raise ApplicationError(f"{user.get_username()} is not staff: no staff token.")
    if tenant is not None and not staff and not Membership.objects.filter(
            tenant=tenant, user=user).exists():
        raise ApplicationError(f"{user.get_username()} is not a member of {tenant.name}.")
    if expires_at is not None and expires_at <= timezone.now():
        raise ApplicationError("The expiry date is in the past.")
    secret = TOKEN_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(_BODY_LENGTH))
    token = AccessToken.objects.create(
        user=user, tenant=tenant, name=name, scope=scope, staff=staff, expires_at=expires_at,
        prefix=secret[:DISPLAY_PREFIX_LENGTH], last4=secret[-4:],
        secret_hash=hash_secret(secret))
    return NewToken(token=token, secret=secret)


def authenticate(secret: str | None) -> AccessToken | None:
    """The active token with this secret (its user loaded), or None."""
    if not secret or not looks_like_token(secret):
        return None
    token = (AccessToken.objects.select_related("user", "tenant")
             .filter(secret_hash=hash_secret(secret)).first())
    if token is None or not token.is_active or not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
        AccessToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def is_staff_token(token: AccessToken) -> bool:
    """A staff token whose user is still staff and active."""
    return bool(token.staff and token.user.is_staff and token.user.is_active)


@transaction.atomic
def token_revoke(token: AccessToken) -> AccessToken:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token
