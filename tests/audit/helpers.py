"""Shared by the audit tests: users, memberships, and reading entries back."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.contenttypes.models import ContentType

from keys.models import Membership, Tenant
from portal.audit.models import AuditEntry


def member(tenant: Tenant, email: str, role: str = "owner") -> Any:
    user = get_user_model().objects.create_user(username=email, email=email,
                                                password="pw-audit-12345!")
    Membership.objects.create(tenant=tenant, user=user, role=role)
    return user


def entries_for(instance: Any, action: int | None = None) -> list[AuditEntry]:
    rows = AuditEntry.objects.filter(
        content_type=ContentType.objects.get_for_model(type(instance)),
        object_pk=str(instance.pk)).order_by("timestamp", "id")
    if action is not None:
        rows = rows.filter(action=action)
    return list(rows)


def one(instance: Any, action: int) -> AuditEntry:
    found = entries_for(instance, action)
    assert len(found) == 1, [(e.action, e.changes) for e in entries_for(instance)]
    return found[0]


def everything_written() -> str:
    """Every audit row as stored (all columns), for "this secret appears nowhere" checks."""
    return json.dumps(list(AuditEntry.objects.values()), default=str)
