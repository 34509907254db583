"""What is audited, which fields are left out (counters and flags the system moves all the
time), which are masked (secrets and their hashes: never written to the log), and which
tenant an object's entries belong to. The wiring of the audit log to every app's models:
it sits in the top layer with the portal (README, "Layers"), the log itself below them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from auditlog.registry import auditlog

from portal.audit.models import TENANT_OF

HIDDEN = "(hidden)"


def hide(value: str) -> str:
    """A secret or hash: the log says it was set or changed, never what it is."""
    return value if value in ("", "None") else HIDDEN


def hide_url_password(value: str) -> str:
    """A proxy URL may carry ``user:password@``; the password is masked, the rest kept."""
    parts = urlsplit(value)
    if parts.password is None:
        return value
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:{HIDDEN}@{netloc}"))


def _register(model: type, *, exclude: tuple[str, ...] = (),
              tenant: Callable[[Any], int | None] | None = None, **options: object) -> None:
    """Register ``model``; reverse relations (a tenant's keys, ledger, …) are left out, or a
    create entry would list every one of them as a "field". ``tenant``: whose entries its
    objects' are, where that is not their ``tenant_id``."""
    reverse = [f.name for f in model._meta.get_fields()  # type: ignore[attr-defined]
               if f.auto_created and not f.concrete]
    auditlog.register(model, exclude_fields=[*exclude, *reverse], **options)
    if tenant is not None:
        TENANT_OF[model] = tenant


def register() -> None:
    from billing.models import ModelPrice, RedemptionCode
    from gateway.models import Credential, ModelRule, Upstream
    from keys.models import AccessToken, ApiKey, Group, Invitation, Membership, Tenant

    masked = "portal.audit.registry.hide"
    _register(Tenant, exclude=("low_balance_alerted",), tenant=lambda t: t.pk)
    _register(Membership)
    _register(Invitation)
    _register(Group)
    _register(ApiKey, mask_fields=["secret_hash"], mask_callable=masked,
              exclude=("quota_used", "expiry_notified", "quota_notified"))
    _register(AccessToken, mask_fields=["secret_hash"], mask_callable=masked,
              exclude=("last_used_at",))
    _register(Upstream, m2m_fields={"groups"}, mask_fields=["proxy_url"],
              mask_callable="portal.audit.registry.hide_url_password",
              exclude=("health", "health_checked_at", "health_latency_ms", "health_failures",
                       "health_error", "updated_at"))
    _register(Credential, mask_fields=["secret_encrypted"], mask_callable=masked)
    _register(ModelPrice, exclude=("updated_at",))
    _register(ModelRule)
    _register(RedemptionCode, mask_fields=["code_hash"], mask_callable=masked,
              tenant=lambda code: code.redeemed_by_id)
    # LedgerEntry is not registered: balance changes are recorded by billing.services
    # (with the balance before and after), and usage charges not at all (portal.audit.record).
