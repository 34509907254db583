"""Writes for tenants and keys (used by the admin, the CLI and, later, the portal APIs)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

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
        raise ApplicationError(_("A tenant needs a name."))
    return Tenant.objects.get_or_create(name=name, defaults={"group": group})


def tenant_create(*, name: str, group: Group | None = None, response_storage: str = "on",
                  response_retention_days: int = 30,
                  capture_bodies_until: datetime | None = None) -> Tenant:
    """A new tenant; unlike ``tenant_get_or_create`` an existing name is an error (an
    operator who asked to create one must not silently get someone else's)."""
    name = name.strip()
    if not name:
        raise ApplicationError(_("A tenant needs a name."))
    if Tenant.objects.filter(name=name).exists():
        raise ApplicationError(f"A tenant named {name!r} already exists.")
    tenant = Tenant(name=name, group=group, response_storage=response_storage,
                    response_retention_days=response_retention_days,
                    capture_bodies_until=capture_bodies_until)
    tenant.full_clean()
    tenant.save()
    return tenant


# Fields of a tenant that ``tenant_update`` may change.
TENANT_SETTINGS = ("response_storage", "response_retention_days", "capture_bodies_until")


@transaction.atomic
def tenant_update(*, tenant: Tenant, **changes: object) -> list[str]:
    """Change a tenant's settings (names in ``TENANT_SETTINGS``); returns the fields that
    changed. Saved through the model, so ``keys.signals`` evicts the snapshots of all its
    keys on commit (their ``store_days``): the gateway applies it within
    GATEWAY_SNAPSHOT_TTL. A new retention period applies to responses stored from then on;
    a new ``capture_bodies_until`` (None: off) to requests from then on."""
    unknown = set(changes) - set(TENANT_SETTINGS)
    if unknown:
        raise ApplicationError(f"Not a tenant setting: {', '.join(sorted(unknown))}.")
    changed = [name for name, value in changes.items() if getattr(tenant, name) != value]
    for name in changed:
        setattr(tenant, name, changes[name])
    if changed:
        tenant.full_clean()
        tenant.save(update_fields=changed)
    return changed


def tenant_set_status(*, tenant: Tenant, active: bool) -> bool:
    """Enable or disable a tenant (a disabled tenant's keys are all refused on /v1); True
    if that changed it. Saved through the model, as the admin's action does, so
    ``keys.signals`` evicts the snapshots of all its keys on commit."""
    return _set_status(tenant, active)


def _set_status(obj: Tenant | ApiKey, active: bool) -> bool:
    status = Status.ACTIVE if active else Status.DISABLED
    if obj.status == status:
        return False
    obj.status = status
    obj.save(update_fields=["status"])  # through the model: the signals evict snapshots
    return True


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
    created_by: User | None = None,
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
    rotated_from: ApiKey | None = None,
    response_storage: str = "inherit",
    capture_bodies: str = "inherit",
    capture_bodies_until: datetime | None = None,
) -> CreatedKey:
    """Create a key. ``secret`` is for imports and fixtures; normally one is generated.
    ``rotated_from``: the key this one replaces (see ``key_rotate``)."""
    name = name.strip()
    if not name:
        raise ApplicationError(_("A key needs a name."))
    secret = secret or generate_secret()
    key = ApiKey(
        tenant=tenant, name=name, created_by=created_by, group=group,
        allowed_models=split_items(models), denied_models=split_items(denied_models),
        allowed_ips=split_items(allowed_ips), rpm=rpm, rpd=rpd, tpm=tpm,
        concurrency=concurrency, max_tokens=max_tokens, quota=quota, expires_at=expires_at,
        status=Status.ACTIVE, rotated_from=rotated_from, response_storage=response_storage,
        capture_bodies=capture_bodies, capture_bodies_until=capture_bodies_until,
    )
    key_set_secret(key=key, secret=secret)
    if ApiKey.objects.filter(secret_hash=key.secret_hash).exists():
        raise ApplicationError(_("A key with this secret already exists."))
    key.full_clean()
    key.save()
    return CreatedKey(key=key, secret=secret)


def key_set_status(*, key: ApiKey, active: bool) -> bool:
    """Enable or disable a key; True if that changed it. Saved through the model (not a bulk
    update) so ``keys.signals`` evicts its snapshot on commit and every gateway process
    sees the change within GATEWAY_SNAPSHOT_TTL."""
    return _set_status(key, active)


# Fields of a key that ``key_update`` may change (the secret, tenant and counters never).
KEY_SETTINGS = ("name", "group", "allowed_models", "denied_models", "allowed_ips", "rpm",
                "rpd", "tpm", "concurrency", "max_tokens", "quota", "expires_at",
                "response_storage", "capture_bodies", "capture_bodies_until")


@transaction.atomic
def key_update(*, key: ApiKey, **changes: object) -> list[str]:
    """Change a key's settings (names in ``KEY_SETTINGS``); returns the fields that changed.
    Saved through the model, so ``keys.signals`` evicts the snapshot on commit (and moves
    the key's quota account when the quota changes): the gateway applies the change within
    GATEWAY_SNAPSHOT_TTL."""
    unknown = set(changes) - set(KEY_SETTINGS)
    if unknown:
        raise ApplicationError(f"Not a key setting: {', '.join(sorted(unknown))}.")
    if changes.get("capture_bodies", "on") != "on":
        changes.setdefault("capture_bodies_until", None)  # only "on" keeps a window
    changed = []
    for name, value in changes.items():
        if name in ("allowed_models", "denied_models", "allowed_ips"):
            value = split_items(value)  # type: ignore[arg-type]
        if name == "name":
            value = str(value).strip()
            if not value:
                raise ApplicationError(_("A key needs a name."))
        if getattr(key, name) != value:
            setattr(key, name, value)
            changed.append(name)
    if changed:
        key.full_clean()
        key.save(update_fields=changed)
    return changed


@transaction.atomic
def key_rotate(*, key: ApiKey, grace: timedelta = timedelta(0)) -> CreatedKey:
    """Replace a key by a new one with the same settings and a new secret. The old key
    stops working at ``now + grace`` (its ``expires_at``; never later than it already
    would): ``grace=0`` revokes it at once (401 ``api_key_expired``), a grace period lets
    clients move over. The new key's ``rotated_from`` names the old one; its quota counts
    from zero (the old key's spend stays on the old key), and its owner (``created_by``) is
the old key's, so a member who may change the old key may change the new one."""
    if grace < timedelta(0):
        raise ApplicationError(_("A grace period cannot be negative."))
    now = timezone.now()
    expires_at = key.expires_at if key.expires_at and key.expires_at > now else None
    made = key_create(
        tenant=key.tenant, name=key.name, created_by=key.created_by,
        group=key.group, models=key.allowed_models, denied_models=key.denied_models,
        allowed_ips=key.allowed_ips, rpm=key.rpm, rpd=key.rpd, tpm=key.tpm,
        concurrency=key.concurrency, max_tokens=key.max_tokens, quota=key.quota,
        expires_at=expires_at, rotated_from=key, response_storage=key.response_storage,
        capture_bodies=key.capture_bodies, capture_bodies_until=key.capture_bodies_until,
    )
    if key.status != Status.ACTIVE:
        made.key.status = key.status
        made.key.save(update_fields=["status"])
    ends = now + grace
    if key.expires_at is None or key.expires_at > ends:
        key.expires_at = ends
        key.save(update_fields=["expires_at"])
    return made


@transaction.atomic
def key_delete(*, key: ApiKey) -> None:
    """Delete a key for good. Its usage rows and rollups stay (their key becomes empty);
    ``keys.signals`` evicts its snapshot on commit, so the gateway answers 401 within
    GATEWAY_SNAPSHOT_TTL.

    The key's row is locked first: a usage writer inserting a row for this key holds a
    share lock on it until it commits, so the lock waits for that row to be committed (and
    then emptied with the others) and holds back any later one (whose writer then keeps the
    row without the link). Without it, a row committed between the emptying and the delete
    failed the delete with a foreign-key error."""
    list(ApiKey.objects.select_for_update().filter(pk=key.pk).values_list("pk", flat=True))
    key.delete()
