from __future__ import annotations

import csv
import itertools
import json
from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django import forms
from django.contrib import admin, messages
from django.core.handlers.asgi import ASGIRequest
from django.db.models import Count, QuerySet, Sum
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from billing.models import LedgerEntry, ModelPrice, UsageLog, UsageRollup
from billing.services import tenant_topup
from keys.admin import KeepStorageSettings, TenantAdmin
from keys.models import Tenant


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = ("model", "input_per_million", "cached_input_per_million",
                    "output_per_million", "reasoning_per_million", "per_request", "updated_at")
    search_fields = ("model",)


class UsageModelFilter(admin.SimpleListFilter):
    """Filter by model. The choices are the models in the rollups plus those of the last
    day's rows: a DISTINCT over the whole usage log would scan it on every page view."""

    title = "model"
    parameter_name = "model"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        since = timezone.now() - timedelta(days=1)
        names = set(UsageRollup.objects.order_by().values_list("model", flat=True).distinct())
        names |= set(UsageLog.objects.filter(created_at__gte=since).order_by()
                     .values_list("model", flat=True).distinct())
        return [(name, name or "(none)") for name in sorted(names)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[UsageLog]) -> QuerySet[UsageLog]:
        value = self.value()
        return queryset if value is None else queryset.filter(model=value)


# Every stored column, foreign keys as ids; ``attempts`` as JSON.
USAGE_CSV_COLUMNS = [field.attname for field in UsageLog._meta.concrete_fields]
# Text a spreadsheet would run as a formula (user agents and models come from clients).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


class _Echo:
    """A file whose write() returns the line, so csv.writer can feed a streaming body."""

    def write(self, value: str) -> str:
        return value


def _csv_lines(rows: Iterable[tuple[object, ...]]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(USAGE_CSV_COLUMNS)
    for row in rows:
        yield writer.writerow([_csv_cell(v) for v in row])


def _take(lines: Iterator[str], count: int) -> str:
    return "".join(itertools.islice(lines, count))


async def _csv_lines_async(rows: QuerySet[Any]) -> AsyncIterator[str]:
    """The same lines for an ASGI server: each chunk is read in the request's sync thread
    (values_list().aiterator() runs its first query on the event loop and fails)."""
    lines = _csv_lines(rows.iterator(chunk_size=2000))  # lazy: no query yet
    take = sync_to_async(_take, thread_sensitive=True)
    while chunk := await take(lines, 500):
        yield chunk


@admin.register(UsageLog)
class UsageLogAdmin(admin.ModelAdmin):
    """Read-only: rows are written by the gateway alone."""

    list_display = ("created_at", "request_id", "tenant", "key_prefix", "endpoint", "model",
                    "upstream", "status_code", "error_code", "stream", "input_tokens",
                    "cached_tokens", "output_tokens", "reasoning_tokens", "cost", "latency_ms",
                    "ttfb_ms", "client_ip")
    list_filter = ("status_code", "endpoint", "stream", "error_code", "upstream", "tenant",
                   "key", UsageModelFilter, "created_at")
    search_fields = ("request_id", "client_request_id", "key_prefix", "model", "tenant__name")
    date_hierarchy = "created_at"
    list_select_related = ("tenant", "upstream")
    show_full_result_count = False  # COUNT(*) over millions of rows on every page view
    actions = ("export_csv",)

    @admin.action(description="Export selected as CSV", permissions=["view"])
    def export_csv(self, request: HttpRequest,
                   queryset: QuerySet[UsageLog]) -> StreamingHttpResponse:
        """Streamed in chunks of 2000 rows: under ASGI (daphne) from an async iterator, as
        a sync one would be read whole into memory before the first byte is sent."""
        rows = queryset.order_by("-created_at", "-id").values_list(*USAGE_CSV_COLUMNS)
        if isinstance(request, ASGIRequest):
            content: Any = _csv_lines_async(rows)
        else:
            content = _csv_lines(rows.iterator(chunk_size=2000))
        response = StreamingHttpResponse(content, content_type="text/csv; charset=utf-8")
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        response["Content-Disposition"] = f'attachment; filename="usage-{stamp}.csv"'
        return response

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


# --- tenants: balance, top-ups and the ledger ----------------------------------------------
# The Tenant admin lives in keys; billing extends it here so keys never imports billing.

class TenantBillingForm(KeepStorageSettings):
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
    fields = ("name", "status", "group", "balance", "top_up", "top_up_note",
              "response_storage", "response_retention_days", "capture_bodies_until")
    inlines = (*TenantAdmin.inlines, LedgerInline)

    def save_model(self, request: HttpRequest, obj: Tenant, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        amount = form.cleaned_data.get("top_up")
        if amount:
            tenant_topup(tenant=obj, amount=amount, note=form.cleaned_data.get("top_up_note", ""),
                         user=request.user if request.user.is_authenticated else None)
            messages.info(request, f"Balance of {obj.name} is now {obj.balance}.")


@admin.register(UsageRollup)
class UsageRollupAdmin(admin.ModelAdmin):
    """Read-only: rows are rebuilt from the usage log by billing.tasks.rollup_usage. The
    totals of the filtered rows show above the list (admin/billing/usagerollup/
    change_list.html)."""

    list_display = ("date", "tenant", "key", "model", "requests", "errors", "input_tokens",
                    "cached_tokens", "output_tokens", "reasoning_tokens", "cost")
    list_filter = ("tenant", "model", "date")
    search_fields = ("model", "tenant__name", "key__name", "key__prefix")
    date_hierarchy = "date"
    list_select_related = ("tenant", "key")

    TOTALS = ("requests", "errors", "input_tokens", "cached_tokens", "output_tokens",
              "reasoning_tokens", "cost")

    def changelist_view(self, request: HttpRequest,
                        extra_context: dict[str, Any] | None = None) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        context = response.context_data if isinstance(response, TemplateResponse) else None
        if context and "cl" in context:
            filtered = context["cl"].queryset
            context["rollup_totals"] = filtered.aggregate(
                rows=Count("id"), **{name: Sum(name, default=0) for name in self.TOTALS})
        return response

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


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
from billing import admin_redemption  # noqa: E402,F401
