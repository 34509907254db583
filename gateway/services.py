"""Writes for upstreams and credentials (admin, CLI)."""

from __future__ import annotations

from django.db import transaction

from gateway.models import Credential, Upstream, UpstreamKind
from keys.fields import split_items
from keys.models import Group, Status
from keys.services import ApplicationError


@transaction.atomic
def upstream_create(
    *,
    name: str,
    kind: str,
    base_url: str,
    models: list[str] | str,
    api_keys: list[str] | None = None,
    priority: int = 0,
    weight: int = 1,
    model_map: dict[str, str] | None = None,
    groups: list[str] | str | None = None,
    timeout_connect: float | None = None,
    timeout_first_byte: float | None = None,
    timeout_idle: float | None = None,
    proxy_url: str = "",
) -> Upstream:
    if kind not in UpstreamKind.values:
        kinds = ", ".join(UpstreamKind.values)
        raise ApplicationError(f"Unknown kind {kind!r}; use one of {kinds}.")
    if Upstream.objects.filter(name=name).exists():
        raise ApplicationError(f"An upstream named {name!r} already exists.")
    group_names = split_items(groups)
    found = list(Group.objects.filter(name__in=group_names))
    missing = set(group_names) - {g.name for g in found}
    if missing:
        raise ApplicationError(f"No group named {', '.join(sorted(missing))}.")
    upstream = Upstream(
        name=name, kind=kind, base_url=base_url, served_models=split_items(models),
        priority=priority, weight=weight, model_map=model_map or {},
        timeout_connect=timeout_connect, timeout_first_byte=timeout_first_byte,
        timeout_idle=timeout_idle, proxy_url=proxy_url,
    )
    upstream.full_clean()
    upstream.save()
    upstream.groups.set(found)
    for index, secret in enumerate(api_keys or []):
        credential_add(upstream=upstream, secret=secret, name=f"key {index + 1}")
    return upstream


def credential_add(*, upstream: Upstream, secret: str, name: str = "") -> Credential:
    if not secret.strip():
        raise ApplicationError("A credential needs a non-empty secret.")
    credential = Credential(upstream=upstream, name=name)
    credential.set_secret(secret.strip())
    credential.save()
    return credential


def upstream_set_status(*, upstream: Upstream, active: bool) -> None:
    """An operator's enable/disable; enabling also clears the health probe's disable."""
    upstream.status = Status.ACTIVE if active else Status.DISABLED
    if active:
        upstream.auto_disabled = False
        upstream.health_failures = 0
    upstream.save(update_fields=["status", "auto_disabled", "health_failures", "updated_at"])
