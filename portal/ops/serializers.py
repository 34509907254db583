"""Serializers of the operations API. Writes that have a service (keys, members, upstreams,
redemption codes, top-ups) go through it in the views; these only validate and shape.

Secrets: an API key's secret and redemption codes appear once, in the answer that made
them (``CreatedKeySerializer``, ``RedemptionBatchCreatedSerializer``); a credential's secret
is write-only and never leaves the database decrypted."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from rest_framework import serializers

from billing import usagerow
from billing.models import LedgerEntry, ModelPrice, RedemptionCode, UsageLog, UsageRollup
from billing.redemption import MAX_COUNT, code_state
from gateway.models import Credential, ModelRule, Upstream
from keys.limits import MAX_MICRO
from keys.models import AccessToken, ApiKey, Group, Membership, Tenant
from keys.money import from_micro

# The largest amount one top-up may move: what the limiter takes in one step (10^9).
MAX_TOPUP = from_micro(MAX_MICRO)
# Balances are NUMERIC(18, 6): twelve integer digits.
MAX_BALANCE = Decimal(10) ** 12


def no_null_characters(value: Any) -> None:
    """JSON stored in PostgreSQL (jsonb) cannot hold a NUL character, in a key or a value."""
    if isinstance(value, str):
        if "\x00" in value:
            raise serializers.ValidationError("Null characters are not allowed.")
    elif isinstance(value, dict):
        for key, item in value.items():
            no_null_characters(key)
            no_null_characters(item)
    elif isinstance(value, list):
        for item in value:
            no_null_characters(item)


def _names() -> serializers.ListField:
    return serializers.ListField(child=serializers.CharField(max_length=200), required=False,
                                 max_length=1000)


def _save_fields(instance: Any, data: dict[str, Any], m2m: tuple[str, ...] = ()) -> Any:
    """Set ``data`` on ``instance``, validate the model, and save only those columns.

    Never a whole-row save: the balance, the health columns and the quota counters are
    written by other processes meanwhile (with F() updates), and a full save would put back
    the values this process read. ``save()`` still runs, so ``keys.signals`` and
    ``gateway.signals`` keep the gateway's snapshots and route tables in step."""
    related = {name: data.pop(name) for name in m2m if name in data}
    for name, value in data.items():
        setattr(instance, name, value)
    validate_model(instance)
    columns = [instance._meta.get_field(name).attname for name in data]
    if any(getattr(f, "auto_now", False) for f in instance._meta.concrete_fields):
        columns += [f.name for f in instance._meta.concrete_fields
                    if getattr(f, "auto_now", False)]
    with transaction.atomic():
        if columns:
            instance.save(update_fields=columns)
        for name, value in related.items():
            getattr(instance, name).set(value)
    return instance


def validate_model(instance: Any) -> None:
    """The model's own validation of the fields a form could edit (as a ModelForm does:
    the stored parts of a secret are set by code, not typed)."""
    instance.full_clean(exclude=[f.name for f in instance._meta.fields if not f.editable])


# --- tenants, groups, members -----------------------------------------------------------

class TenantSerializer(serializers.ModelSerializer):
    opening_balance = serializers.DecimalField(
        max_digits=18, decimal_places=6, min_value=Decimal(0), max_value=MAX_TOPUP,
        required=False, write_only=True,
        help_text="Create only: posted to the ledger as a top-up, like `tenant create "
                  "--balance`.")

    class Meta:
        model = Tenant
        fields = ("id", "name", "status", "group", "balance", "members_can_create_keys",
                  "low_balance_threshold", "response_storage", "response_retention_days",
                  "capture_bodies_until", "created_at", "opening_balance")
        read_only_fields = ("balance", "created_at")
        extra_kwargs = {"low_balance_threshold": {"min_value": Decimal(0)}}


class TenantMoneySerializer(serializers.Serializer):
    name = serializers.CharField()
    status = serializers.CharField()
    balance = serializers.CharField(help_text="In the database (the sum of the ledger).")
    available = serializers.CharField(
        allow_null=True, help_text="What the limiter lets requests reserve against; null "
                                   "when the limiter has not loaded the account.")
    reserved = serializers.CharField(help_text="Held by requests in flight.")
    ledger_total = serializers.CharField()


class GroupSerializer(serializers.ModelSerializer):
    allowed_models = _names()

    class Meta:
        model = Group
        fields = ("id", "name", "description", "allowed_models", "rpm", "rpd", "concurrency",
                  "max_tokens", "price_multiplier", "dedicated_upstreams", "created_at")
        read_only_fields = ("created_at",)


class MembershipSerializer(serializers.ModelSerializer):
    user = serializers.PrimaryKeyRelatedField(queryset=get_user_model().objects.all())
    email = serializers.EmailField(source="user.email", read_only=True)
    username = serializers.CharField(source="user.get_username", read_only=True)

    class Meta:
        model = Membership
        fields = ("id", "tenant", "user", "email", "username", "role", "created_at")
        read_only_fields = ("created_at",)
        validators: list[Any] = []  # an existing member gets the new role (member_add)


class MembershipRoleSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Membership.Role.choices)


# --- keys ---------------------------------------------------------------------------------

KEY_FIELDS = ("id", "tenant", "name", "prefix", "masked", "status", "group", "expires_at",
              "allowed_models", "denied_models", "allowed_ips", "rpm", "rpd", "tpm",
              "concurrency", "max_tokens", "quota", "quota_used", "response_storage",
              "capture_bodies", "capture_bodies_until", "created_by", "rotated_from",
              "created_at")


class ApiKeySerializer(serializers.ModelSerializer):
    """A key as stored: its display prefix and masked form, never its secret."""

    masked = serializers.CharField(read_only=True)
    allowed_models = _names()
    denied_models = _names()
    allowed_ips = serializers.ListField(child=serializers.CharField(max_length=64),
                                        required=False, max_length=1000)

    class Meta:
        model = ApiKey
        fields = KEY_FIELDS
        read_only_fields = ("prefix", "masked", "quota_used", "created_by", "rotated_from",
                            "created_at")

    def get_fields(self) -> dict[str, Any]:
        fields = super().get_fields()
        if self.instance is not None:  # a key never moves to another tenant
            fields["tenant"].read_only = True
        return fields


class CreatedKeySerializer(ApiKeySerializer):
    secret = serializers.CharField(read_only=True, help_text="Shown this once; only its "
                                                            "hash is kept.")

    class Meta(ApiKeySerializer.Meta):
        fields = (*KEY_FIELDS, "secret")


class RotateSerializer(serializers.Serializer):
    grace_seconds = serializers.IntegerField(
        min_value=0, max_value=366 * 86400, default=0,
        help_text="The old key keeps working this long (0: it stops at once).")


class AccessTokenSerializer(serializers.ModelSerializer):
    masked = serializers.CharField(read_only=True)

    class Meta:
        model = AccessToken
        fields = ("id", "name", "prefix", "masked", "user", "tenant", "scope", "staff",
                  "expires_at", "revoked_at", "last_used_at", "created_at")
        read_only_fields = fields


# --- upstreams and credentials ------------------------------------------------------------

HEALTH_FIELDS = ("health", "health_checked_at", "health_latency_ms", "health_failures",
                 "health_error", "auto_disabled")


class UpstreamSerializer(serializers.ModelSerializer):
    served_models = _names()
    model_map = serializers.DictField(
        child=serializers.CharField(max_length=200), required=False,
        validators=[no_null_characters],
        help_text='Client-facing name -> name sent upstream, e.g. {"gpt-5-codex": '
                  '"gpt-5.1-codex"}.')
    groups = serializers.PrimaryKeyRelatedField(many=True, queryset=Group.objects.all(),
                                                required=False)
    api_keys = serializers.ListField(
        child=serializers.CharField(max_length=2000, trim_whitespace=True), required=False,
        write_only=True, max_length=100,
        help_text="Create only: credentials to add (encrypted; never returned).")
    credential_count = serializers.SerializerMethodField()

    class Meta:
        model = Upstream
        fields = ("id", "name", "kind", "base_url", "served_models", "model_map", "groups",
                  "priority", "weight", "status", "timeout_connect", "timeout_first_byte",
                  "timeout_idle", "proxy_url", *HEALTH_FIELDS, "credential_count",
                  "created_at", "updated_at", "api_keys")
        read_only_fields = (*HEALTH_FIELDS, "created_at", "updated_at")
        extra_kwargs = {name: {"min_value": 0.0, "max_value": 86400.0}
                        for name in ("timeout_connect", "timeout_first_byte", "timeout_idle")}

    def get_credential_count(self, obj: Upstream) -> int:
        return obj.credentials.count()


class UpstreamHealthSerializer(serializers.ModelSerializer):
    class Meta:
        model = Upstream
        fields = ("id", "name", "kind", "status", *HEALTH_FIELDS)
        read_only_fields = fields


class ProbeSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    latency_ms = serializers.IntegerField()
    error = serializers.CharField(allow_blank=True)
    upstream = UpstreamHealthSerializer()


class CredentialSerializer(serializers.ModelSerializer):
    secret = serializers.CharField(
        write_only=True, required=False, allow_blank=True, max_length=2000,
        help_text="The upstream API key: write-only (encrypted at rest, never returned). "
                  "Required on create except for Ollama; omitted or blank on update keeps "
                  "the current one.")
    masked = serializers.CharField(read_only=True)

    class Meta:
        model = Credential
        fields = ("id", "upstream", "name", "masked", "last4", "status", "disabled_reason",
                  "rpm", "created_at", "secret")
        read_only_fields = ("masked", "last4", "created_at")

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        secret = (data.get("secret") or "").strip()
        upstream = data.get("upstream") or getattr(self.instance, "upstream", None)
        if self.instance is None and not secret and (
                upstream is None or upstream.provider.needs_secret):
            raise serializers.ValidationError({"secret": "A new credential needs its secret."})
        data["secret"] = secret
        return data


# --- billing --------------------------------------------------------------------------------

class ModelPriceSerializer(serializers.ModelSerializer):
    class Meta:
        model = ModelPrice
        fields = ("id", "model", "input_per_million", "cached_input_per_million",
                  "output_per_million", "reasoning_per_million", "per_request", "updated_at")
        read_only_fields = ("updated_at",)
        extra_kwargs = {name: {"min_value": Decimal(0)} for name in (
            "input_per_million", "cached_input_per_million", "output_per_million",
            "reasoning_per_million", "per_request")}


class ModelRuleSerializer(serializers.ModelSerializer):
    force = serializers.DictField(required=False, validators=[no_null_characters],
                                  help_text='Merged over the body, e.g. '
                                            '{"reasoning": {"effort": "xhigh"}}.')
    defaults = serializers.DictField(required=False, validators=[no_null_characters],
                                     help_text="Merged under the body: "
                                     "fills only what is missing.")
    drop = serializers.ListField(child=serializers.CharField(max_length=200), required=False,
                                 max_length=100)

    class Meta:
        model = ModelRule
        fields = ("id", "model_pattern", "protocol", "force", "defaults", "drop", "enabled",
                  "note")


class RedemptionCodeSerializer(serializers.ModelSerializer):
    state = serializers.SerializerMethodField()

    class Meta:
        model = RedemptionCode
        fields = ("id", "prefix", "amount", "batch", "state", "expires_at", "created_by",
                  "created_at", "redeemed_at", "redeemed_by")
        read_only_fields = fields

    def get_state(self, obj: RedemptionCode) -> str:
        return code_state(obj)


class RedemptionBatchSerializer(serializers.Serializer):
    batch = serializers.CharField(allow_blank=True)
    codes = serializers.IntegerField()
    active = serializers.IntegerField()
    redeemed = serializers.IntegerField()
    expired = serializers.IntegerField()
    total_amount = serializers.DecimalField(max_digits=24, decimal_places=6)
    first_created_at = serializers.DateTimeField()
    last_created_at = serializers.DateTimeField()


class RedemptionBatchCreateSerializer(serializers.Serializer):
    amount = serializers.DecimalField(max_digits=18, decimal_places=6,
                                      min_value=Decimal("0.000001"),
                                      help_text="Credit per code.")
    count = serializers.IntegerField(min_value=1, max_value=MAX_COUNT)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    batch = serializers.CharField(max_length=100, required=False, allow_blank=True,
                                  default="")


class RedemptionBatchCreatedSerializer(serializers.Serializer):
    batch = serializers.CharField(allow_blank=True)
    amount = serializers.DecimalField(max_digits=18, decimal_places=6)
    expires_at = serializers.DateTimeField(allow_null=True)
    codes = serializers.ListField(child=serializers.CharField(),
                                  help_text="Shown this once; only hashes are kept.")


class UsageLogSerializer(serializers.ModelSerializer):
    class Meta:
        model = UsageLog
        fields = ("id", *usagerow.MODEL_FIELDS)  # the whole row (billing.usagerow)
        read_only_fields = fields


class UsageRollupSerializer(serializers.ModelSerializer):
    class Meta:
        model = UsageRollup
        fields = ("id", "date", "tenant", "key", "model", "requests", "errors",
                  "input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens", "cost")
        read_only_fields = fields


class LedgerEntrySerializer(serializers.ModelSerializer):
    class Meta:
        model = LedgerEntry
        fields = ("id", "tenant", "kind", "amount", "reference", "note", "created_by",
                  "created_at")
        read_only_fields = fields


class TopUpSerializer(serializers.Serializer):
    tenant = serializers.PrimaryKeyRelatedField(queryset=Tenant.objects.all())
    amount = serializers.DecimalField(
        max_digits=18, decimal_places=6, min_value=-MAX_TOPUP, max_value=MAX_TOPUP,
        help_text="Added to the balance; negative deducts (an adjustment).")
    note = serializers.CharField(max_length=300, required=False, allow_blank=True, default="")

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        if data["amount"] == 0:
            raise serializers.ValidationError({"amount": "The amount must not be zero."})
        if abs(data["tenant"].balance + data["amount"]) >= MAX_BALANCE:
            raise serializers.ValidationError(
                {"amount": "The balance would be larger than it can hold."})
        return data


class TopUpResultSerializer(serializers.Serializer):
    entry = LedgerEntrySerializer()
    balance = serializers.DecimalField(max_digits=18, decimal_places=6)
