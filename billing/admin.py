from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from billing.models import LedgerEntry, ModelPrice, UsageLog
from billing.services import tenant_topup
from keys.admin import TenantAdmin
from keys.models import Tenant


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = ("model", "input_per_million", "cached_input_per_million",
                    "output_per_million", "reasoning_per_million", "per_request", "updated_at")
    search_fields = ("model",)


@admin.register(UsageLog)
class UsageLogAdmin(admin.ModelAdmin):
    """Read-only: rows are written by the gateway alone."""

    list_display = ("created_at", "request_id", "tenant", "key_prefix", "endpoint", "model",
                    "upstream", "status_code", "error_code", "stream", "input_tokens",
                    "cached_tokens", "output_tokens", "reasoning_tokens", "cost", "latency_ms",
                    "ttfb_ms", "client_ip")
    list_filter = ("status_code", "endpoint", "stream", "error_code", "upstream", "tenant",
                   "created_at")
    search_fields = ("request_id", "key_prefix", "model", "tenant__name")
    date_hierarchy = "created_at"
    list_select_related = ("tenant", "upstream")
    show_full_result_count = False  # COUNT(*) over millions of rows on every page view

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


# --- tenants: balance, top-ups and the ledger ----------------------------------------------
# The Tenant admin lives in keys; billing extends it here so keys never imports billing.

class TenantBillingForm(forms.ModelForm):
    top_up = forms.DecimalField(
        required=False, max_digits=18, decimal_places=6,
        help_text="Add this amount to the balance (negative to deduct); recorded in the "
        "ledger. The balance changes only this way, so reservations in flight stay exact.",
    )
    top_up_note = forms.CharField(required=False, max_length=300)

    class Meta:
        model = Tenant
        fields = ("name", "status", "group")


class LedgerInline(admin.TabularInline):
    model = LedgerEntry
    extra = 0
    fields = ("created_at", "kind", "amount", "reference", "note", "created_by")
    readonly_fields = fields
    ordering = ("-created_at", "-id")
    max_num = 0
    can_delete = False
    show_change_link = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[LedgerEntry]:
        return super().get_queryset(request).select_related("created_by")


admin.site.unregister(Tenant)


@admin.register(Tenant)
class TenantBillingAdmin(TenantAdmin):
    form = TenantBillingForm
    fields = ("name", "status", "group", "balance", "top_up", "top_up_note")
    inlines = (*TenantAdmin.inlines, LedgerInline)

    def save_model(self, request: HttpRequest, obj: Tenant, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        amount = form.cleaned_data.get("top_up")
        if amount:
            tenant_topup(tenant=obj, amount=amount, note=form.cleaned_data.get("top_up_note", ""),
                         user=request.user if request.user.is_authenticated else None)
            messages.info(request, f"Balance of {obj.name} is now {obj.balance}.")


@admin.register(LedgerEntry)
class LedgerEntryAdmin(admin.ModelAdmin):
    """Read-only: entries are written by billing.services alone."""

    list_display = ("created_at", "tenant", "kind", "amount", "reference", "note",
                    "created_by")
    list_filter = ("kind", "tenant", "created_at")
    search_fields = ("tenant__name", "reference", "note")
    date_hierarchy = "created_at"
    list_select_related = ("tenant", "created_by")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
