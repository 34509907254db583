"""Admin for redemption codes: a read-only list, and a page that generates a batch.

The generated codes exist in plain text only in the response to the form's POST (never in
the session, a message or a cookie); the page says so. "Add redemption code" opens the
same form, since a single code cannot be typed in: it must be generated.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone

from billing.models import RedemptionCode
from billing.redemption import MAX_COUNT, code_state, redeem_create
from keys.services import ApplicationError

GENERATE_TEMPLATE = "admin/billing/redemptioncode/generate.html"


class RedeemedFilter(admin.SimpleListFilter):
    title = "redeemed"
    parameter_name = "redeemed"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        if self.value() == "yes":
            return queryset.filter(redeemed_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(redeemed_at__isnull=True)
        return None


class ExpiredFilter(admin.SimpleListFilter):
    title = "expired"
    parameter_name = "expired"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        now = timezone.now()
        if self.value() == "yes":
            return queryset.filter(expires_at__lte=now)
        if self.value() == "no":
            return queryset.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        return None


class GenerateCodesForm(forms.Form):
    amount = forms.DecimalField(max_digits=18, decimal_places=6, min_value=Decimal("0.000001"),
                                help_text="Credit per code.")
    count = forms.IntegerField(min_value=1, max_value=MAX_COUNT, initial=1,
                               help_text=f"How many codes (at most {MAX_COUNT}).")
    expires_at = forms.DateTimeField(
        required=False, label="Expires at",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="Empty: never. Server time zone.",
    )
    batch = forms.CharField(required=False, max_length=100,
                            help_text="A name to find these codes by later.")

    def clean_expires_at(self) -> Any:
        value = self.cleaned_data.get("expires_at")
        if value is not None and value <= timezone.now():
            raise forms.ValidationError("The expiry is in the past.")
        return value


@admin.register(RedemptionCode)
class RedemptionCodeAdmin(admin.ModelAdmin):
    """Read-only rows; codes are made only by the generate form (billing.redemption)."""

    list_display = ("prefix", "amount", "batch", "state", "expires_at", "redeemed_at",
                    "redeemed_by", "created_at")
    list_filter = ("batch", RedeemedFilter, ExpiredFilter)
    search_fields = ("prefix", "batch", "redeemed_by__name")
    list_select_related = ("redeemed_by",)
    fields = ("prefix", "amount", "batch", "state", "expires_at", "created_by", "created_at",
              "redeemed_at", "redeemed_by")
    readonly_fields = fields

    @admin.display(description="state")
    def state(self, obj: RedemptionCode) -> str:
        return code_state(obj)

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        name = f"{self.opts.app_label}_{self.opts.model_name}_generate"
        return [
            path("generate/", self.admin_site.admin_view(self.generate_view), name=name),
            *super().get_urls(),
        ]

    def add_view(self, request: HttpRequest, form_url: str = "",
                 extra_context: dict[str, Any] | None = None) -> HttpResponse:
        return self.generate_view(request)

    def generate_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        codes: list[str] | None = None
        form = GenerateCodesForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                codes = redeem_create(
                    amount=data["amount"], count=data["count"], expires_at=data["expires_at"],
                    batch=data["batch"],
                    user=request.user if request.user.is_authenticated else None,
                )
            except ApplicationError as exc:
                form.add_error(None, str(exc))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Generated redemption codes" if codes else "Generate redemption codes",
            "form": form,
            "codes": codes,
            "codes_text": "\n".join(codes or []),
            "batch": form.cleaned_data.get("batch", "") if codes else "",
            "amount": form.cleaned_data.get("amount") if codes else None,
            "changelist_url": reverse("admin:billing_redemptioncode_changelist",
                                      current_app=self.admin_site.name),
            "generate_url": reverse("admin:billing_redemptioncode_generate",
                                    current_app=self.admin_site.name),
        }
        request.current_app = self.admin_site.name
        response = TemplateResponse(request, GENERATE_TEMPLATE, context)
        response["Cache-Control"] = "no-store, private"
        return response
