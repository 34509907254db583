from __future__ import annotations

from typing import Any, ClassVar

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from keys.models import AccessToken, ApiKey, Group, Membership, Status, Tenant
from keys.secrets import generate_secret
from keys.services import key_set_secret


@admin.register(Group)
class GroupAdmin(admin.ModelAdmin):
    list_display = ("name", "models_display", "rpm", "rpd", "concurrency", "max_tokens",
                    "price_multiplier", "tenant_count")
    search_fields = ("name", "description")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Group]:
        return super().get_queryset(request).annotate(_tenants=Count("tenants"))

    @admin.display(description="models")
    def models_display(self, obj: Group) -> str:
        return ", ".join(obj.allowed_models) or "all"

    @admin.display(description="tenants", ordering="_tenants")
    def tenant_count(self, obj: Group) -> int:
        return obj._tenants  # type: ignore[attr-defined]


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ("user",)


class KeepStorageSettings(forms.ModelForm):
    """The response storage settings keep their current value (the default, for a new row)
    when a submitted form leaves them out: a form posted by a script written before they
    existed must not fail, nor turn storage off."""

    STORAGE_FIELDS = ("response_storage", "response_retention_days", "capture_bodies")
    # Kept only when absent from the post: posted empty, a capture window is switched off.
    KEPT_WHEN_ABSENT = ("capture_bodies_until",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in self.STORAGE_FIELDS:
            if name in self.fields:
                self.fields[name].required = False

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        for name in self.STORAGE_FIELDS:
            if name in self.fields and data.get(name) in (None, ""):
                data[name] = getattr(self.instance, name)
        for name in self.KEPT_WHEN_ABSENT:
            field = self.fields.get(name)
            if field is not None and field.widget.value_omitted_from_data(
                    self.data, self.files, self.add_prefix(name)):
                data[name] = getattr(self.instance, name)
        return data


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    form = KeepStorageSettings
    readonly_fields = ("balance",)
    fields: ClassVar[tuple[str, ...]] = ("name", "status", "group", "balance",
                                         "response_storage", "response_retention_days",
                                         "capture_bodies_until")
    list_display = ("name", "status", "group", "balance", "key_count", "member_count",
                    "created_at")
    list_filter = ("status", "group")
    search_fields = ("name",)
    inlines: ClassVar[tuple[type[admin.options.InlineModelAdmin[Any, Any]], ...]] = (
        MembershipInline,)
    actions = ("disable", "enable")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Tenant]:
        return super().get_queryset(request).select_related("group").annotate(
            _keys=Count("keys", distinct=True), _members=Count("memberships", distinct=True)
        )

    @admin.display(description="keys", ordering="_keys")
    def key_count(self, obj: Tenant) -> int:
        return obj._keys  # type: ignore[attr-defined]

    @admin.display(description="members", ordering="_members")
    def member_count(self, obj: Tenant) -> int:
        return obj._members  # type: ignore[attr-defined]

    @admin.action(description="Disable selected tenants (all their keys stop working)")
    def disable(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        for tenant in queryset:  # save() per row so the gateway's snapshots are dropped
            tenant.status = Status.DISABLED
            tenant.save(update_fields=["status"])

    @admin.action(description="Enable selected tenants")
    def enable(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        for tenant in queryset:
            tenant.status = Status.ACTIVE
            tenant.save(update_fields=["status"])


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("user", "tenant", "role", "created_at")
    list_filter = ("role",)
    search_fields = ("user__username", "user__email", "tenant__name")
    autocomplete_fields = ("user", "tenant")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = KeepStorageSettings
    list_display = ("name", "masked_secret", "tenant", "status", "expires_at", "rpm", "rpd",
                    "concurrency", "max_tokens", "quota", "created_at")
    list_filter = ("status", "tenant", "group", "created_at")
    search_fields = ("name", "prefix", "tenant__name")
    readonly_fields = ("masked_secret", "quota_used", "created_at")
    autocomplete_fields = ("tenant", "created_by")
    list_select_related = ("tenant",)
    actions = ("disable", "enable")
    fieldsets = (
        (None, {"fields": ("tenant", "name", "masked_secret", "status", "expires_at",
                           "group", "created_by")}),
        ("Models", {"fields": ("allowed_models", "denied_models")}),
        ("Limits", {"fields": ("rpm", "rpd", "tpm", "concurrency", "max_tokens",
                               "quota", "quota_used", "allowed_ips")}),
        ("Stored responses", {"fields": ("response_storage",)}),
        ("Body capture", {"fields": ("capture_bodies", "capture_bodies_until")}),
        ("Audit", {"fields": ("created_at",)}),
    )

    @admin.display(description="key")
    def masked_secret(self, obj: ApiKey) -> str:
        return obj.masked if obj.pk else "generated when saved, shown once"

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if not change:
            secret = generate_secret()
            key_set_secret(key=obj, secret=secret)
            if obj.created_by is None and request.user.is_authenticated:
                obj.created_by = request.user
            super().save_model(request, obj, form, change)
            messages.warning(
                request,
                f"The new key is {secret} — copy it now; it is not stored and will not be "
                "shown again.",
            )
            return
        super().save_model(request, obj, form, change)

    @admin.action(description="Disable selected keys")
    def disable(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset:
            key.status = Status.DISABLED
            key.save(update_fields=["status"])

    @admin.action(description="Enable selected keys")
    def enable(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset:
            key.status = Status.ACTIVE
            key.save(update_fields=["status"])


@admin.register(AccessToken)
class AccessTokenAdmin(admin.ModelAdmin):
    """Personal access tokens are created in the portal or with ``manage.py token create``
    (the secret is shown there, once); here staff see and revoke them."""

    list_display = ("name", "masked", "user", "tenant", "scope", "staff", "expires_at",
                    "revoked_at", "last_used_at")
    list_filter = ("scope", "staff")
    search_fields = ("name", "prefix", "user__email", "user__username", "tenant__name")
    readonly_fields = ("prefix", "last4", "last_used_at", "created_at")
    raw_id_fields = ("user", "tenant")
    actions = ("revoke",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[AccessToken]) -> None:
        from keys.tokens import token_revoke

        for token in queryset:
            token_revoke(token)
        self.message_user(request, f"Revoked {queryset.count()} token(s).", messages.SUCCESS)
