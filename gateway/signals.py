"""Drop the cached route table after any committed change to upstreams or credentials;
resolve a credential's operator alert when it is active again (``gateway.opsalerts``)."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver

from gateway import opsalerts
from gateway.models import AlertKind, Credential, ModelRule, OperatorAlert, Upstream
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
        if opsalerts.enabled():  # a credential the upstream refused is back: resolved
            label = str(instance)
            transaction.on_commit(
                lambda: opsalerts.credential_changed(credential_id, label, False))


@receiver(post_delete, sender=Upstream)
@receiver(post_delete, sender=Credential)
def _alert_subject_deleted(sender: type, instance: Any, **kwargs: Any) -> None:
    """An upstream or credential deleted takes its alert state with it (nothing to resolve)."""
    kind = AlertKind.UPSTREAM_DOWN if sender is Upstream else AlertKind.CREDENTIAL_DISABLED
    OperatorAlert.objects.filter(kind=kind, subject=str(instance.pk)).delete()
