"""Writes for upstreams and credentials (admin, CLI)."""

from __future__ import annotations

from django.db import transaction

from gateway.models import Credential, Upstream, UpstreamKind
from keys.fields import split_items
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
) -> Upstream:
    if kind not in UpstreamKind.values:
        kinds = ", ".join(UpstreamKind.values)
        raise ApplicationError(f"Unknown kind {kind!r}; use one of {kinds}.")
    if Upstream.objects.filter(name=name).exists():
        raise ApplicationError(f"An upstream named {name!r} already exists.")
    upstream = Upstream(
        name=name, kind=kind, base_url=base_url.rstrip("/"), served_models=split_items(models),
        priority=priority, weight=weight,
    )
    upstream.full_clean()
    upstream.save()
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
