"""Drop the cached route table after any committed change to upstreams or credentials."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver

from gateway.models import Credential, ModelRule, Upstream
from gateway.routing import route_tables
from gateway.rules import rule_sets


@receiver([post_save, post_delete], sender=Upstream)
@receiver([post_save, post_delete], sender=Credential)
@receiver(m2m_changed, sender=Upstream.groups.through)
def _routes_changed(sender: type, instance: Any, **kwargs: Any) -> None:
    transaction.on_commit(lambda: route_tables.invalidate(["all"]))


@receiver([post_save, post_delete], sender=ModelRule)
def _rules_changed(sender: type, instance: Any, **kwargs: Any) -> None:
    transaction.on_commit(lambda: rule_sets.invalidate(["all"]))


@receiver(post_save, sender=Credential)
def _credential_saved(sender: type, instance: Credential, **kwargs: Any) -> None:
    """An active credential (re-enabled by an operator, or a new secret) is usable at once,
    whatever cool-down it was in (a 401 cools a credential for an hour as it is disabled)."""
    from keys.limits import limiter
    from keys.models import Status

    if instance.status == Status.ACTIVE and not kwargs.get("created"):
        credential_id = instance.pk
        transaction.on_commit(lambda: limiter().uncool(credential_id))
