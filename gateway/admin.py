from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, QuerySet
from django.http import HttpRequest

import billing.admin  # noqa: F401  (registers UsageLog first, so it can be re-registered)
from billing.admin import UsageLogAdmin
from billing.models import UsageLog
from gateway.capture import display
from gateway.models import CapturedExchange, Credential, ModelRule, OperatorAlert, Upstream


class CredentialForm(forms.ModelForm):
    """The secret is write-only: typed in, encrypted, never rendered back."""

    secret = forms.CharField(
        required=False, strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="The upstream API key. Leave blank to keep the current one.",
    )

    class Meta:
        model = Credential
        fields = ("upstream", "name", "secret", "status", "disabled_reason", "rpm")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if not self.instance.pk and not data.get("secret"):
            upstream = data.get("upstream")
            if upstream is None or upstream.provider.needs_secret:
                self.add_error("secret", "A new credential needs its secret.")
        return data

    def save(self, commit: bool = True) -> Credential:
        credential: Credential = super().save(commit=False)
        if self.cleaned_data.get("secret"):
            credential.set_secret(self.cleaned_data["secret"])
        if commit:
            credential.save()
        return credential


class CredentialInline(admin.TabularInline):
    model = Credential
    form = CredentialForm
    extra = 0
    fields = ("name", "secret", "masked_secret", "status", "disabled_reason", "rpm")
    readonly_fields = ("masked_secret",)

    @admin.display(description="stored key")
    def masked_secret(self, obj: Credential) -> str:
        return obj.masked if obj.pk else "-"


@admin.register(Upstream)
class UpstreamAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "base_url", "models_display", "priority", "weight",
                    "status", "health_display", "health_latency_ms", "health_checked_at",
                    "credential_count")
    list_filter = ("kind", "status", "health", "auto_disabled", "groups")
    search_fields = ("name", "base_url")
    inlines = (CredentialInline,)
    filter_horizontal = ("groups",)
    readonly_fields = ("health", "health_checked_at", "health_latency_ms", "health_failures",
                       "health_error")
    actions = ("test_now",)
    fieldsets = (
        (None, {"fields": ("name", "kind", "base_url", "status", "priority", "weight")}),
        ("Models", {"fields": ("served_models", "model_map")}),
        ("Access", {"fields": ("groups",)}),
        ("Connection", {"fields": ("timeout_connect", "timeout_first_byte", "timeout_idle",
                                   "proxy_url")}),
        ("Health", {"fields": ("auto_disabled", "health", "health_checked_at",
                               "health_latency_ms", "health_failures", "health_error")}),
    )

    @admin.display(description="health", ordering="health")
    def health_display(self, obj: Upstream) -> str:
        if obj.auto_disabled:
            return f"auto-disabled ({obj.health_failures} failures)"
        return obj.health

    @admin.action(description="Test now (probe and record health)")
    def test_now(self, request: HttpRequest, queryset: QuerySet[Upstream]) -> None:
        from gateway.health import probe, record

        for upstream in queryset:
            result = probe(upstream)
            record(upstream, result)
            level = messages.SUCCESS if result.ok else messages.ERROR
            detail = "healthy" if result.ok else f"failed: {result.error}"
            self.message_user(request, f"{upstream.name}: {detail} in {result.latency_ms} ms",
                              level)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Upstream]:
        return super().get_queryset(request).annotate(_creds=Count("credentials"))

    @admin.display(description="models")
    def models_display(self, obj: Upstream) -> str:
        names = obj.served_models or []
        return ", ".join(names[:6]) + (f" (+{len(names) - 6})" if len(names) > 6 else "")

    @admin.display(description="credentials", ordering="_creds")
    def credential_count(self, obj: Upstream) -> int:
        return obj._creds  # type: ignore[attr-defined]


@admin.register(Credential)
class CredentialAdmin(admin.ModelAdmin):
    form = CredentialForm
    list_display = ("__str__", "upstream", "name", "masked_secret", "status",
                    "cooling_down", "disabled_reason", "rpm", "created_at")

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> Any:
        from keys.limits import limiter

        self._cooldowns = limiter().cooldowns()  # one read for the whole page
        return super().changelist_view(request, extra_context)

    @admin.display(description="cool-down")
    def cooling_down(self, obj: Credential) -> str:
        import time

        until = getattr(self, "_cooldowns", {}).get(obj.pk)
        return f"{int(until - time.time())} s left" if until else "-"
    list_filter = ("status", "upstream")
    search_fields = ("name", "upstream__name", "last4")
    list_select_related = ("upstream",)

    @admin.display(description="stored key")
    def masked_secret(self, obj: Credential) -> str:
        return obj.masked


@admin.register(ModelRule)
class ModelRuleAdmin(admin.ModelAdmin):
    list_display = ("model_pattern", "protocol", "force", "defaults", "drop", "enabled", "note")
    list_filter = ("protocol", "enabled")
    search_fields = ("model_pattern", "note")


@admin.register(OperatorAlert)
class OperatorAlertAdmin(admin.ModelAdmin):
    """Read-only: each operator alert's state, written by ``gateway.opsalerts``."""

    list_display = ("kind", "subject", "firing", "summary", "changed_at", "last_sent_at",
                    "last_error", "admin_link")
    list_filter = ("kind", "firing")
    search_fields = ("subject", "summary")

    @admin.display(description="admin page")
    def admin_link(self, obj: OperatorAlert) -> str:
        from django.utils.html import format_html

        return format_html('<a href="{}">{}</a>', obj.admin_path, "open") \
            if obj.admin_path else "-"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

# --- body capture on the usage row's page ---------------------------------------------------
# The UsageLog admin lives in billing; the gateway extends it here so billing never imports
# the gateway (as billing extends the keys' Tenant admin).

admin.site.unregister(UsageLog)


@admin.register(UsageLog)
class UsageLogCaptureAdmin(UsageLogAdmin):
    """The usage row's page shows the request's captured bodies, when body capture was on
    for its key (issue 15) and its retention has not ended."""

    readonly_fields = ("captured_bodies",)

    class Media:
        css = {"all": ("portal/capture.css",)}

    @admin.display(description="captured bodies")
    def captured_bodies(self, obj: UsageLog) -> str:
        exchange = CapturedExchange.objects.filter(request_id=obj.request_id).first()
        if exchange is None:
            return ("None: body capture was off for this request's key, or the capture "
                    "is past GATEWAY_CAPTURE_RETENTION_HOURS.")
        return display.render(exchange)
