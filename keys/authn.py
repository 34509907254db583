"""API-key authentication, one owner: which header carries the key, which check comes
first, and what each refusal says. ``/v1`` (``gateway.pipeline.authenticate``), the
deprecated ``/api/`` (``portal.api``) and the tenant API's API-key login
(``portal.tenant_api.auth``) all ask this module; each renders the answer in its own error
envelope.

The presented secret (``secret_from_asgi`` for raw ASGI headers, ``secret_from_django`` for
``request.headers``): ``Authorization: Bearer sk-…`` (a bare ``Authorization: sk-…`` too),
else ``x-api-key``, else ``api-key`` (Azure-style clients). An empty value counts as absent.

The checks, in order; the first that fails answers (``refusal``):

    no key presented            401 missing_api_key
    no key with that secret     401 invalid_api_key
    the key is disabled         403 api_key_disabled
    its tenant is disabled      403 tenant_disabled
    client IP outside the list  403 ip_not_allowed
    the key has expired         401 api_key_expired

They are decided from the key's ``KeySnapshot``: ``/v1`` takes it from the snapshot cache
(no SQL for a known key); the Django side reads the row (one query, always current) and
builds the snapshot with the function the cache uses (``keys.snapshots.snapshot_of``).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from keys.snapshots import KeySnapshot

if TYPE_CHECKING:
    from keys.models import ApiKey

log = logging.getLogger(__name__)
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a key is refused: an HTTP status, a stable code and a sentence for people."""

    status: int
    code: str
    message: str


MISSING = Refusal(401, "missing_api_key", "No API key was provided. Send it as "
                  "'Authorization: Bearer sk-tp-…' (or in an 'x-api-key' header).")
INVALID = Refusal(401, "invalid_api_key",
                  "The API key is not valid. Check it, or create a new one.")
KEY_DISABLED = Refusal(403, "api_key_disabled", "The API key is disabled.")
TENANT_DISABLED = Refusal(403, "tenant_disabled",
                          "The tenant that owns this API key is disabled.")
EXPIRED = Refusal(401, "api_key_expired", "The API key has expired.")
IP_NOT_ALLOWED = "ip_not_allowed"


def ip_not_allowed(client_ip: str | None) -> Refusal:
    return Refusal(403, IP_NOT_ALLOWED, f"This API key may not be used from {client_ip}.")


# --- the presented secret -----------------------------------------------------------------

def _authorization(value: str) -> str:
    """The credential in an Authorization header: after ``Bearer `` (any case), or the
    whole value; '' for nothing."""
    value = value.strip()
    if value[:7].lower() == "bearer ":
        return value[7:].strip()
    if value.lower() == "bearer":
        return ""
    return value


def secret_from_asgi(headers: Mapping[bytes, bytes]) -> str | None:
    """The key a request presents, from ASGI headers (lower-case names; ``/v1``)."""
    auth = headers.get(b"authorization")
    if auth:
        value = _authorization(auth.decode("latin-1"))
        if value:
            return value
    for name in (b"x-api-key", b"api-key"):
        raw = headers.get(name)
        if raw and raw.strip():
            return raw.decode("latin-1").strip()
    return None


def secret_from_django(headers: Mapping[str, str]) -> str | None:
    """The same, from Django's ``request.headers`` (case-insensitive names)."""
    value = _authorization(headers.get("Authorization") or "")
    if value:
        return value
    for name in ("X-Api-Key", "Api-Key"):
        value = (headers.get(name) or "").strip()
        if value:
            return value
    return None


# --- the decision -----------------------------------------------------------------------

@lru_cache(maxsize=1024)
def _networks(entries: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    nets = []
    for entry in entries:
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            log.warning("ignoring malformed IP allow-list entry %r", entry)
    return tuple(nets)


def ip_allowed(allowed: tuple[str, ...], client_ip: str | None) -> bool:
    """Whether ``client_ip`` is inside one of the CIDRs (a bare address is a /32 or /128;
    a malformed entry is skipped). An empty list allows any address; a list and no
    readable client address refuses. An IPv4 client on a dual-stack socket
    (``::ffff:10.1.2.3``) counts as its IPv4 address."""
    if not allowed:
        return True
    try:
        address = ipaddress.ip_address(client_ip or "")
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in net for net in _networks(allowed))


def refusal(key: KeySnapshot | None, client_ip: str | None,
            now: float | None = None) -> Refusal | None:
    """Why this key (None: no key has the presented secret) may not be used from
    ``client_ip`` now; None when it may. The order is the module docstring's."""
    if key is None:
        return INVALID
    if not key.key_active:
        return KEY_DISABLED
    if not key.tenant_active:
        return TENANT_DISABLED
    if key.allowed_ips and not ip_allowed(key.allowed_ips, client_ip):
        return ip_not_allowed(client_ip)
    if key.is_expired(now):
        return EXPIRED
    return None


# --- the Django side ----------------------------------------------------------------------

class KeyRefused(Exception):
    """A refused key, for Django-side callers to render in their own error shape."""

    def __init__(self, refused: Refusal) -> None:
        super().__init__(refused.message)
        self.refusal = refused
        self.status = refused.status
        self.code = refused.code
        self.message = refused.message


def authenticate_secret(secret: str | None, client_ip: str | None) -> ApiKey:
    """The ApiKey (its tenant and group loaded) a presented secret belongs to, checked as
    ``/v1`` checks it, from the database (sync, one query); ``KeyRefused`` otherwise."""
    from keys.models import ApiKey
    from keys.secrets import hash_secret
    from keys.snapshots import SNAPSHOT_RELATED, snapshot_of

    if secret is None:
        raise KeyRefused(MISSING)
    key = (ApiKey.objects.select_related(*SNAPSHOT_RELATED)
           .filter(secret_hash=hash_secret(secret)).first())
    refused = refusal(snapshot_of(key) if key is not None else None, client_ip)
    if refused is not None:
        raise KeyRefused(refused)
    assert key is not None
    return key

