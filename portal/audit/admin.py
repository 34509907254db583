"""The audit log in the admin: read-only, filtered by object type, action, surface, actor,
tenant and date; searchable by actor, object and address."""

from __future__ import annotations

from typing import Any

from auditlog.admin import LogEntryAdmin
from auditlog.registry import auditlog
from django.contrib import admin
from django.contrib.contenttypes.models import ContentType
from django.db.models import QuerySet
from django.http import HttpRequest

from portal.audit.models import AuditEntry

if admin.site.is_registered(AuditEntry):  # auditlog's own admin registers the model
    admin.site.unregister(AuditEntry)


class ObjectTypeFilter(admin.SimpleListFilter):
    """The audited models (from the registry, so no scan of the log to list them)."""

    title = "object type"
    parameter_name = "object_type"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        types = ContentType.objects.get_for_models(*auditlog.get_models())
        from billing.models import LedgerEntry

        types[LedgerEntry] = ContentType.objects.get_for_model(LedgerEntry)
        return sorted(((str(ct.pk), str(model._meta.verbose_name)) for model, ct in
                       types.items()), key=lambda item: item[1])

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        if self.value() and self.value().isdigit():
            return queryset.filter(content_type_id=int(self.value()))
        return None


class TenantFilter(admin.SimpleListFilter):
    title = "tenant"
    parameter_name = "tenant_id"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        from keys.models import Tenant

        return [(str(pk), name) for pk, name in
                Tenant.objects.order_by("name").values_list("pk", "name")[:500]]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        if self.value() and self.value().isdigit():
            return queryset.filter(tenant_id=int(self.value()))
        return None


@admin.register(AuditEntry)
class AuditEntryAdmin(LogEntryAdmin):
    list_display = ["created", "action", "resource_url", "msg_short", "actor_label",
                    "surface", "remote_addr"]
    list_filter = [ObjectTypeFilter, "action", "surface", "actor_kind",
                   ("actor", admin.RelatedOnlyFieldListFilter), TenantFilter, "timestamp"]
    search_fields = ["object_repr", "actor_label", "actor_email", "remote_addr", "object_pk"]
    list_select_related = ["content_type"]
    readonly_fields = ["created", "resource_url", "action", "actor_label", "actor_kind",
                       "user_url", "surface", "remote_addr", "tenant_id", "token", "cid",
                       "msg"]
    fieldsets = [
        (None, {"fields": ["created", "resource_url", "action", "tenant_id"]}),
        ("Who and where", {"fields": ["actor_label", "actor_kind", "user_url", "token",
                                     "surface", "remote_addr", "cid"]}),
        ("Changes (before → after)", {"fields": ["msg"]}),
    ]
    show_full_result_count = False  # no COUNT(*) of a large log on every page
