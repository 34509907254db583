"""Writes for tenants and keys (used by the admin, the CLI and, later, the portal APIs)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from keys.fields import split_items
from keys.models import ApiKey, Group, Status, Tenant
from keys.secrets import (
    DISPLAY_PREFIX_LENGTH,
    KEY_PREFIX,
    display_prefix,
    generate_secret,
    hash_secret,
    masked,
)

# How many candidates an ambiguous key prefix names before "and N more".
_CANDIDATES_SHOWN = 10


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


def tenant_create(*, name: str, group: Group | None = None) -> Tenant:
    """A new tenant; unlike ``tenant_get_or_create`` an existing name is an error (an
    operator who asked to create one must not silently get someone else's)."""
    name = name.strip()
    if not name:
        raise ApplicationError(_("A tenant needs a name."))
    if Tenant.objects.filter(name=name).exists():
        raise ApplicationError(f"A tenant named {name!r} already exists.")
    tenant = Tenant(name=name, group=group)
    tenant.full_clean()
    tenant.save()
    return tenant


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
    rotated_from: ApiKey | None = None,
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
        status=Status.ACTIVE, rotated_from=rotated_from,
    )
    key_set_secret(key=key, secret=secret)
    if ApiKey.objects.filter(secret_hash=key.secret_hash).exists():
        raise ApplicationError(_("A key with this secret already exists."))
    key.full_clean()
    key.save()
    return CreatedKey(key=key, secret=secret)


def key_find(reference: str, *, tenant: str | None = None) -> ApiKey:
    """The one key an operator means by ``reference``: a start of its display prefix with
    at least one character after the scheme (``sk-tp-ab12``, ``sk-tp-a``), its masked form
    as ``key list`` shows it (``sk-tp-ab12…wxyz``; ``...`` works too), or the full secret
    (a leaked key, as found). Nothing else is guessed: no match and several matches are
    both errors, the latter naming the candidates, so a command that disables a key never
    picks one at random. Errors never echo more of a secret than its masked form."""
    ref = reference.strip()
    keys = ApiKey.objects.select_related("tenant", "group").order_by("id")
    where = ""
    if tenant is not None:
        keys = keys.filter(tenant__name=tenant)
        where = f" in tenant {tenant!r}"
    last4 = ""
    for ellipsis in ("…", "..."):
        if ellipsis in ref:
            ref, last4 = (part.strip() for part in ref.split(ellipsis, 1))
            break
    shown = masked(display_prefix(ref), ref[-4:]) if len(ref) > DISPLAY_PREFIX_LENGTH else ref
    if last4:
        shown = masked(ref[:DISPLAY_PREFIX_LENGTH], last4)
    if not ref.startswith(KEY_PREFIX) or len(ref) == len(KEY_PREFIX):
        raise ApplicationError(
            f"{shown!r} is not a key prefix: give the start of the key as 'key list' shows "
            f"it ({KEY_PREFIX}ab12, or {KEY_PREFIX}ab12…wxyz), or the full secret.")
    if last4:
        if len(ref) != DISPLAY_PREFIX_LENGTH or len(last4) != 4:
            raise ApplicationError(
                f"{shown!r} is not a masked key: it is the {DISPLAY_PREFIX_LENGTH}-character "
                f"display prefix, '…', and the last four characters ({KEY_PREFIX}ab12…wxyz).")
        keys = keys.filter(prefix=ref, last4=last4)
    elif len(ref) > DISPLAY_PREFIX_LENGTH:  # longer than any display prefix: a full secret
        keys = keys.filter(secret_hash=hash_secret(ref))
    else:
        keys = keys.filter(prefix__startswith=ref)
    matches = list(keys[: _CANDIDATES_SHOWN + 1])
    if not matches:
        raise ApplicationError(f"No key matches {shown!r}{where}.")
    if len(matches) > 1:
        total = keys.count()
        names = ", ".join(f"{k.masked} ({k.tenant.name}/{k.name}, id {k.pk})"
                          for k in matches[:_CANDIDATES_SHOWN])
        more = f" and {total - _CANDIDATES_SHOWN} more" if total > _CANDIDATES_SHOWN else ""
        raise ApplicationError(f"{shown!r} matches {total} keys{where}: {names}{more}. Give "
                               "more of the prefix, the masked form, or --tenant.")
    return matches[0]


def key_set_status(*, key: ApiKey, active: bool) -> bool:
    """Enable or disable a key; True if that changed it. Saved through the model (not a bulk
    update) so ``keys.signals`` evicts its snapshot on commit and every gateway process
    sees the change within GATEWAY_SNAPSHOT_TTL."""
    status = Status.ACTIVE if active else Status.DISABLED
    if key.status == status:
        return False
    key.status = status
    key.save(update_fields=["status"])
    return True


# Fields of a key that ``key_update`` may change (the secret, tenant and counters never).
KEY_SETTINGS = ("name", "group", "allowed_models", "denied_models", "allowed_ips", "rpm",
                "rpd", "tpm", "concurrency", "max_tokens", "quota", "expires_at")


@transaction.atomic
def key_update(*, key: ApiKey, **changes: object) -> list[str]:
    """Change a key's settings (names in ``KEY_SETTINGS``); returns the fields that changed.
    Saved through the model, so ``keys.signals`` evicts the snapshot on commit (and moves
    the key's quota account when the quota changes): the gateway applies the change within
    GATEWAY_SNAPSHOT_TTL."""
    unknown = set(changes) - set(KEY_SETTINGS)
    if unknown:
        raise ApplicationError(f"Not a key setting: {', '.join(sorted(unknown))}.")
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
        expires_at=expires_at, rotated_from=key,
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
    GATEWAY_SNAPSHOT_TTL."""
    key.delete()
