"""The audit log: one row per create, change or delete of an audited object.

``AuditEntry`` is django-auditlog's log entry (``AUDITLOG_LOGENTRY_MODEL``) with what
Turnpike adds: the surface the change came from, what kind of actor made it (a user's
session, a personal access token, the command line, the system), a readable label for
that actor, the token used, and the tenant the object belongs to (indexed with the time,
so a tenant's entries are one index range scan, newest first).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from auditlog.models import AbstractLogEntry, LogEntryManager
from django.db import models, router, transaction

from portal.audit.context import ActorKind, Surface, resolve

log = logging.getLogger("turnpike.audit")


# The tenant of an audited model's objects where it is not their ``tenant_id`` (a tenant is
# its own; a redemption code is its redeemer's). Filled by portal.audit.registry, which
# names every audited model: the log itself imports none of the apps it records.
TENANT_OF: dict[type, Callable[[Any], int | None]] = {}


def tenant_id_of(instance: Any) -> int | None:
    """The tenant an audited object belongs to (None: a global object, e.g. an upstream)."""
    for cls in type(instance).__mro__:
        rule = TENANT_OF.get(cls)
        if rule is not None:
            return rule(instance)
    return getattr(instance, "tenant_id", None)


def _unmask_none(instance: Any, changes: Any) -> None:
    """auditlog masks a field's text, so an unset secret reads "None"; keep it null, as
    every other unset field is."""
    from auditlog.registry import auditlog

    if not isinstance(changes, dict) or not auditlog.contains(type(instance)):
        return
    for name in auditlog.get_model_fields(type(instance))["mask_fields"]:
        values = changes.get(name)
        if isinstance(values, (list, tuple)):
            changes[name] = [None if v == "None" else v for v in values]


class AuditEntryManager(LogEntryManager):
    """auditlog's manager, with the origin (who, from where) and the tenant filled in, and
    the write isolated: it runs in a savepoint of the change's own transaction, so it
    commits or rolls back with the change, and a failure to write it is logged and rolled
    back to the savepoint without breaking the change (see README, "Audit log")."""

    def _guarded(self, write: Any, instance: Any, kwargs: dict[str, Any]) -> Any:
        try:
            with transaction.atomic(using=router.db_for_write(self.model)):
                for name, value in resolve().items():
                    kwargs.setdefault(name, value)
                kwargs.setdefault("tenant_id", tenant_id_of(instance))
                _unmask_none(instance, kwargs.get("changes"))
                return write(**kwargs)
        except Exception:
            log.exception("audit entry not written for %s %r (action %s, changes %s)",
                          type(instance).__name__, getattr(instance, "pk", None),
                          kwargs.get("action"), kwargs.get("changes"))
            return None

    def log_create(self, instance: Any, force_log: bool = False, **kwargs: Any) -> Any:
        parent = super().log_create
        return self._guarded(lambda **kw: parent(instance, force_log=force_log, **kw),
                             instance, kwargs)

    def log_m2m_changes(self, changed_queryset: Any, instance: Any, operation: str,
                        field_name: str, **kwargs: Any) -> Any:
        parent = super().log_m2m_changes
        return self._guarded(
            lambda **kw: parent(changed_queryset, instance, operation, field_name, **kw),
            instance, kwargs)


class AuditEntry(AbstractLogEntry):
    surface = models.CharField(max_length=16, choices=Surface.choices, default=Surface.SYSTEM)
    actor_kind = models.CharField(max_length=16, choices=ActorKind.choices,
                                  default=ActorKind.SYSTEM)
    actor_label = models.CharField(
        max_length=200, blank=True,
        help_text="Who, as they were at the time: an email, the token used, cli (os user).")
    token = models.ForeignKey("keys.AccessToken", null=True, blank=True,
                              on_delete=models.SET_NULL, related_name="+")
    # A plain column, not a foreign key: a deleted tenant's entries are kept, with its id.
    tenant_id = models.BigIntegerField(null=True, blank=True)

    objects = AuditEntryManager()

    class Meta(AbstractLogEntry.Meta):
        verbose_name = "audit entry"
        verbose_name_plural = "audit log"
        indexes = [
            models.Index(fields=["tenant_id", "-timestamp", "-id"], name="audit_tenant_time"),
        ]

    @property
    def action_name(self) -> str:
        return {self.Action.CREATE: "create", self.Action.UPDATE: "update",
                self.Action.DELETE: "delete"}.get(self.action, "access")
