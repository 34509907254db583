"""Reads of a tenant's audit log, shared by the portal's Activity page and the tenant API
(``portal/tenant_api/audit.py``): filters, keyset pages newest first, and the one shape an
entry is shown in. Everything starts from ``tenant_entries(tenant)`` (the indexed
``tenant_id`` column), so no query here reaches another tenant's entries; global objects
(upstreams, prices, groups) have none and are staff-only (the admin's audit log)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django import forms
from django.contrib.contenttypes.models import ContentType
from django.db.models import Q, QuerySet
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

from keys.models import Tenant
from portal.audit.context import Surface
from portal.audit.models import AuditEntry
from portal.selectors.filters import LogFilterForm
from portal.selectors.usage import BadCursor, Cursor, local_day_start

__all__ = ["BadCursor", "Cursor", "AuditFilterForm", "tenant_entries", "filtered", "page",
           "entry_dict", "OBJECT_TYPES", "ACTIONS", "SURFACES"]

PAGE_SIZE = 50
MAX_PAGE_SIZE = 200

# Filter name -> (app label, model): the objects a tenant's entries are about.
OBJECT_TYPES = {
    "tenant": ("keys", "tenant"),
    "member": ("keys", "membership"),
    "invitation": ("keys", "invitation"),
    "key": ("keys", "apikey"),
    "token": ("keys", "accesstoken"),
    "balance": ("billing", "ledgerentry"),
    "redemption_code": ("billing", "redemptioncode"),
}
OBJECT_LABELS = {
    "tenant": _("Tenant"), "member": _("Member"), "invitation": _("Invitation"),
    "key": _("Key"), "token": _("Access token"), "balance": _("Balance"),
    "redemption_code": _("Redemption code"),
}
ACTIONS = {"create": AuditEntry.Action.CREATE, "update": AuditEntry.Action.UPDATE,
           "delete": AuditEntry.Action.DELETE}
ACTION_LABELS = {"create": pgettext_lazy("audit action", "Created"),
                 "update": pgettext_lazy("audit action", "Changed"),
                 "delete": pgettext_lazy("audit action", "Deleted")}
SURFACES = {
    Surface.PORTAL: _("Portal"), Surface.TENANT_API: _("Tenant API"),
    Surface.OPS_API: _("Operations API"), Surface.ADMIN: _("Admin"),
    Surface.CLI: _("Command line"), Surface.SYSTEM: _("System"),
}


class AuditFilterForm(LogFilterForm):
    object_type = forms.ChoiceField(label=_("Object"), required=False)
    action = forms.ChoiceField(label=_("Action"), required=False)
    actor = forms.CharField(label=_("Who"), required=False, max_length=200,
                            help_text=_("Email, or part of it"))
    surface = forms.ChoiceField(label=_("From"), required=False)
    date_from = forms.DateField(label=_("Since"), required=False,
                                widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(label=_("Until"), required=False,
                              widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, data: Any = None) -> None:
        super().__init__(data)
        self.fields["object_type"].choices = [("", _("Any object"))] + list(
            OBJECT_LABELS.items())
        self.fields["action"].choices = [("", _("Any action"))] + list(ACTION_LABELS.items())
        self.fields["surface"].choices = [("", _("Anywhere"))] + list(SURFACES.items())



def tenant_entries(tenant: Tenant | int) -> QuerySet[AuditEntry]:
    tenant_id = tenant if isinstance(tenant, int) else tenant.pk
    return AuditEntry.objects.filter(tenant_id=tenant_id)


def filtered(tenant: Tenant | int, *, object_type: str | None = None,
             action: str | None = None, actor: str | None = None,
             surface: str | None = None, date_from: dt.date | None = None,
             date_to: dt.date | None = None) -> QuerySet[AuditEntry]:
    """The tenant's entries matching the filters (unordered). Unknown filter values are the
    callers' to refuse (the form's choices, the API's schema)."""
    rows = tenant_entries(tenant)
    if object_type:
        app_label, model = OBJECT_TYPES[object_type]
        rows = rows.filter(content_type=ContentType.objects.get_by_natural_key(app_label, model))
    if action:
        rows = rows.filter(action=ACTIONS[action])
    if actor:
        rows = rows.filter(Q(actor_email__iexact=actor) | Q(actor_label__icontains=actor))
    if surface:
        rows = rows.filter(surface=surface)
    if date_from:
        rows = rows.filter(timestamp__gte=local_day_start(date_from))
    if date_to:
        rows = rows.filter(timestamp__lt=local_day_start(date_to + dt.timedelta(days=1)))
    return rows


@dataclass
class Page:
    rows: list[AuditEntry]
    older: str | None  # cursor of the next (older) page
    newer: str | None  # cursor of the previous (newer) page
    first: bool  # the newest page (no cursor)


def _cursor(direction: str, entry: AuditEntry) -> str:
    return Cursor(direction, entry.timestamp, entry.pk).encode()


def page(rows: QuerySet[AuditEntry], cursor: Cursor | None,
         size: int = PAGE_SIZE) -> Page:
    """One keyset page on (timestamp, id), newest first; ``size + 1`` rows read to know
    whether more follow."""
    rows = rows.select_related("content_type")
    if cursor is None or cursor.direction == "older":
        if cursor is not None:
            rows = rows.filter(timestamp__lte=cursor.created_at).filter(
                Q(timestamp__lt=cursor.created_at) | Q(id__lt=cursor.id))
        got = list(rows.order_by("-timestamp", "-id")[:size + 1])
        more, got = len(got) > size, got[:size]
        older = _cursor("older", got[-1]) if more and got else None
        newer = _cursor("newer", got[0]) if cursor is not None and got else None
        if cursor is not None and not got:
            newer = Cursor("newer", cursor.created_at, cursor.id).encode()
        return Page(got, older, newer, cursor is None)
    rows = rows.filter(timestamp__gte=cursor.created_at).filter(
        Q(timestamp__gt=cursor.created_at) | Q(id__gt=cursor.id))
    got = list(rows.order_by("timestamp", "id")[:size + 1])
    more = len(got) > size
    got = list(reversed(got[:size]))
    older = _cursor("older", got[-1]) if got else Cursor(
        "older", cursor.created_at, cursor.id).encode()
    newer = _cursor("newer", got[0]) if more and got else None
    return Page(got, older, newer, not more)


_TYPE_NAMES = {value: name for name, value in OBJECT_TYPES.items()}


def object_type_of(entry: AuditEntry) -> str:
    ct = entry.content_type
    return _TYPE_NAMES.get((ct.app_label, ct.model), ct.model)


def entry_dict(entry: AuditEntry) -> dict[str, Any]:
    """An entry as the portal shows it and the tenant API returns it. Secrets and hashes
    were masked when the entry was written; nothing here can reveal them."""
    return {
        "id": entry.pk,
        "timestamp": entry.timestamp,
        "action": entry.action_name,
        "object_type": object_type_of(entry),
        "object_id": entry.object_pk,
        "object_repr": entry.object_repr,
        "changes": {field: list(values) if isinstance(values, (list, tuple)) else values
                    for field, values in (entry.changes or {}).items()},
        "actor": entry.actor_label,
        "actor_kind": entry.actor_kind,
        "actor_email": entry.actor_email or "",
        "surface": entry.surface,
        "remote_addr": entry.remote_addr,
    }
