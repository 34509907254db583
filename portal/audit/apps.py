from __future__ import annotations

import functools
from typing import Any

from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "portal.audit"
    label = "audit"  # the entries are audit.AuditEntry (AUDITLOG_LOGENTRY_MODEL)
    verbose_name = "Audit log"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from portal.audit import registry

        registry.register()
        _commands_are_cli()
        _tasks_are_system()


def _commands_are_cli() -> None:
    """Every management command (``manage.py …`` and ``call_command``) writes its entries
    as surface and actor ``cli``, with the OS user. Django has no hook around a command,
    so ``BaseCommand.execute`` is wrapped once, here."""
    from django.core.management.base import BaseCommand

    from portal.audit.context import Surface, cli_label, origin

    execute = BaseCommand.execute
    if getattr(execute, "_audit_cli", False):
        return

    @functools.wraps(execute)
    def audited(self: BaseCommand, *args: Any, **options: Any) -> Any:
        with origin(Surface.CLI, label=cli_label()):
            return execute(self, *args, **options)

    audited._audit_cli = True  # type: ignore[attr-defined]
    BaseCommand.execute = audited  # type: ignore[method-assign]


def _tasks_are_system() -> None:
    """Celery tasks write their entries as ``system`` (also when run eagerly inside a
    request: the task's own origin is restored to the request's when it ends)."""
    from celery.signals import task_postrun, task_prerun

    from portal.audit.context import SYSTEM, _origin

    tokens: dict[str, Any] = {}

    @task_prerun.connect(weak=False, dispatch_uid="audit.task_prerun")
    def started(task_id: str | None = None, **kwargs: Any) -> None:
        tokens[task_id or ""] = _origin.set(SYSTEM)

    @task_postrun.connect(weak=False, dispatch_uid="audit.task_postrun")
    def finished(task_id: str | None = None, **kwargs: Any) -> None:
        token = tokens.pop(task_id or "", None)
        if token is not None:
            try:
                _origin.reset(token)
            except ValueError:  # set in another context (a pool's thread): nothing to undo
                _origin.set(None)
