"""Writes for tenants and keys (used by the admin, the CLI and, later, the portal APIs)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from keys.fields import split_items
from keys.models import ApiKey, Group, Status, Tenant
from keys.secrets import KEY_PREFIX, display_prefix, generate_secret, hash_secret


class ApplicationError(Exception):
    """A request that breaks a business rule; the message is shown to the user."""


@dataclass(frozen=True)
class CreatedKey:
    key: ApiKey
    secret: str  # shown once, never stored


def tenant_get_or_create(*, name: str, group: Group | None = None) -> tuple[Tenant, bool]:
    name = name.strip()
    if not name:
        raise ApplicationError("A tenant needs a name.")
    return Tenant.objects.get_or_create(name=name, defaults={"group": group})


def key_set_secret(*, key: ApiKey, secret: str) -> None:
    """Fill the stored parts of a key from its secret (hash, prefix, last four)."""
    if not secret.startswith(KEY_PREFIX) or len(secret) < len(KEY_PREFIX) + 16:
        raise ApplicationError(f"A key secret must start with {KEY_PREFIX!r} and be long enough.")
    key.secret_hash = hash_secret(secret)
    key.prefix = display_prefix(secret)
    key.last4 = secret[-4:]


@transaction.atomic
def key_create(
    *,
    tenant: Tenant,
    name: str,
    created_by: AbstractBaseUser | None = None,
    group: Group | None = None,
    models: list[str] | str | None = None,
    denied_models: list[str] | str | None = None,
    allowed_ips: list[str] | str | None = None,
    rpm: int | None = None,
    rpd: int | None = None,
    tpm: int | None = None,
    concurrency: int | None = None,
    max_tokens: int | None = None,
    quota: Decimal | None = None,
    expires_at: datetime | None = None,
    secret: str | None = None,
) -> CreatedKey:
    """Create a key. ``secret`` is for imports and fixtures; normally one is generated."""
    name = name.strip()
    if not name:
        raise ApplicationError("A key needs a name.")
    secret = secret or generate_secret()
    key = ApiKey(
        tenant=tenant, name=name, created_by=created_by, group=group,
        allowed_models=split_items(models), denied_models=split_items(denied_models),
        allowed_ips=split_items(allowed_ips), rpm=rpm, rpd=rpd, tpm=tpm,
        concurrency=concurrency, max_tokens=max_tokens, quota=quota, expires_at=expires_at,
        status=Status.ACTIVE,
    )
    key_set_secret(key=key, secret=secret)
    if ApiKey.objects.filter(secret_hash=key.secret_hash).exists():
        raise ApplicationError("A key with this secret already exists.")
    key.full_clean()
    key.save()
    return CreatedKey(key=key, secret=secret)
