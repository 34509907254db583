"""Entries written explicitly, where a change bypasses model signals: balance changes
(``billing.services.ledger_post``), codes made with ``bulk_create``, fields set with a
queryset ``update()`` by the system (the health probe's auto-disable)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from auditlog.cid import get_cid
from auditlog.diff import model_instance_diff
from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.db import models, transaction
from django.utils.encoding import smart_str

from portal.audit.context import resolve
from portal.audit.models import AuditEntry, _unmask_none, tenant_id_of

log = logging.getLogger("turnpike.audit")


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(Decimal(value).quantize(Decimal("0.000001")))


def log_change(instance: models.Model, changes: dict[str, list[Any]],
               action: int = AuditEntry.Action.UPDATE) -> AuditEntry | None:
    """One entry for ``instance`` with ``changes`` ({field: [before, after]})."""
    return AuditEntry.objects.log_create(instance, action=action, changes=changes)


def log_ledger(entry: Any, *, balance_before: Decimal, balance_after: Decimal) -> None:
    """A balance change (top-up, adjustment, redemption, refund): the ledger entry made and
    the tenant's balance before and after it. Usage charges are not audited: they are the
    usage log's (one per request batch, far too many)."""
    changes = {
        "kind": [None, entry.kind],
        "amount": [None, _money(entry.amount)],
        "balance": [_money(balance_before), _money(balance_after)],
    }
    if entry.reference:
        changes["reference"] = [None, entry.reference]
    if entry.note:
        changes["note"] = [None, entry.note]
    AuditEntry.objects.log_create(entry, action=AuditEntry.Action.CREATE, changes=changes)


def log_bulk_create(objects: Sequence[models.Model]) -> None:
    """A create entry per object saved by ``bulk_create`` (no signals), in one insert, with
    the registered masking applied to each object's fields."""
    if not objects:
        return
    try:
        with transaction.atomic():
            origin = resolve()
            content_type = ContentType.objects.get_for_model(objects[0])
            cid = get_cid()
            rows = []
            for obj in objects:
                changes = model_instance_diff(
                    None, obj, use_json_for_changes=settings.AUDITLOG_STORE_JSON_CHANGES)
                _unmask_none(obj, changes)
                rows.append(AuditEntry(
                    content_type=content_type, object_pk=smart_str(obj.pk),
                    object_id=obj.pk if isinstance(obj.pk, int) else None,
                    object_repr=smart_str(obj), action=AuditEntry.Action.CREATE,
                    changes=changes, cid=cid, tenant_id=tenant_id_of(obj), **origin))
            AuditEntry.objects.bulk_create(rows, batch_size=1000)
    except Exception:
        log.exception("audit entries not written for %d new %s", len(objects),
                      type(objects[0]).__name__)
