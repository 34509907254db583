from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from billing.models import ModelPrice, UsageLog


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
