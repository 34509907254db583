"""Prices and the per-request usage log."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models

from keys.models import MONEY

PRICE = {"max_digits": 14, "decimal_places": 6, "default": Decimal("0")}


class ModelPrice(models.Model):
    """Price of a model, per million tokens of each class, or per request.

    ``model`` may be a wildcard (``gpt-5*``); the most specific match wins.
    """

    model = models.CharField(max_length=200, unique=True)
    input_per_million = models.DecimalField(**PRICE)
    cached_input_per_million = models.DecimalField(
        max_digits=14, decimal_places=6, null=True, blank=True,
        help_text="Price of cached input tokens; empty: the input price.",
    )
    output_per_million = models.DecimalField(**PRICE)
    reasoning_per_million = models.DecimalField(
        max_digits=14, decimal_places=6, null=True, blank=True,
        help_text="Price of reasoning tokens (part of the output); empty: the output price.",
    )
    per_request = models.DecimalField(**PRICE, help_text="Fixed price per request; 0: none.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model"]

    def __str__(self) -> str:
        return self.model


class UsageLog(models.Model):
    """One row per /v1 request, success or failure. Written only by billing/usage.py."""

    created_at = models.DateTimeField(db_index=True)
    # Unique: a batch written twice (a writer that died after committing it) adds nothing.
    request_id = models.CharField(max_length=64, unique=True)
    key = models.ForeignKey(
        "keys.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="usage"
    )
    key_prefix = models.CharField(max_length=16, blank=True)
    tenant = models.ForeignKey(
        "keys.Tenant", null=True, blank=True, on_delete=models.SET_NULL, related_name="usage"
    )
    endpoint = models.CharField(max_length=32)
    model = models.CharField(max_length=200, blank=True, db_index=True)
    upstream = models.ForeignKey(
        "gateway.Upstream", null=True, blank=True, on_delete=models.SET_NULL, related_name="usage"
    )
    credential = models.ForeignKey(
        "gateway.Credential", null=True, blank=True, on_delete=models.SET_NULL,
        related_name="usage",
    )
    status_code = models.PositiveSmallIntegerField()
    error_code = models.CharField(max_length=64, blank=True)
    stream = models.BooleanField(default=False)
    input_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    reasoning_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(**MONEY, default=Decimal("0"))
    latency_ms = models.PositiveIntegerField(default=0)
    ttfb_ms = models.PositiveIntegerField(null=True, blank=True, help_text="Time to first byte")
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    attempts = models.JSONField(
        default=list, blank=True,
        help_text="Every upstream tried: upstream, credential, status, error, latency (ms).")
    estimated = models.BooleanField(
        default=False, help_text="The upstream reported no usage (stream cut, client gone): "
        "tokens were counted by Turnpike from what it relayed.")
    user_agent = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["tenant", "created_at"]),
            models.Index(fields=["key", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model} {self.status_code}"

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class LedgerEntry(models.Model):
    """Every change of a tenant's balance. The balance always equals the sum of its entries
    (``manage.py billing check`` proves it); entries are never edited or deleted."""

    class Kind(models.TextChoices):
        TOPUP = "topup", "Top-up"
        CHARGE = "charge", "Charge"
        REFUND = "refund", "Refund"
        ADJUSTMENT = "adjustment", "Adjustment"
        REDEMPTION = "redemption", "Redemption code"

    tenant = models.ForeignKey("keys.Tenant", on_delete=models.CASCADE, related_name="ledger")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    amount = models.DecimalField(**MONEY, help_text="Positive adds to the balance.")
    reference = models.CharField(max_length=100, blank=True,
                                 help_text="A usage batch, a redemption code prefix, a note.")
    note = models.CharField(max_length=300, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "ledger entries"

    def __str__(self) -> str:
        return f"{self.tenant} {self.kind} {self.amount}"


class UsageRollup(models.Model):
    """Usage per local day, tenant, key and model; rebuilt idempotently from UsageLog by
    ``billing.tasks.rollup_usage`` and kept after the raw rows expire."""

    date = models.DateField(db_index=True)
    tenant = models.ForeignKey("keys.Tenant", null=True, blank=True, on_delete=models.CASCADE,
                               related_name="rollups")
    key = models.ForeignKey("keys.ApiKey", null=True, blank=True, on_delete=models.SET_NULL,
                            related_name="rollups")
    model = models.CharField(max_length=200, blank=True)
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    cached_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    reasoning_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(**MONEY, default=Decimal("0"))

    class Meta:
        ordering = ["-date", "tenant", "model"]
        constraints = [
            models.UniqueConstraint(fields=["date", "tenant", "key", "model"],
                                    name="unique_rollup", nulls_distinct=False),
        ]

    def __str__(self) -> str:
        return f"{self.date} {self.tenant} {self.model}"


class RedemptionCode(models.Model):
    """A single-use code that tops up the redeeming tenant's balance. Stored as a hash with
    a visible prefix, like API keys; the code itself is shown once, when generated."""

    code_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=16, editable=False, db_index=True)
    amount = models.DecimalField(**MONEY)
    batch = models.CharField(max_length=100, blank=True, db_index=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    redeemed_at = models.DateTimeField(null=True, blank=True)
    redeemed_by = models.ForeignKey("keys.Tenant", null=True, blank=True,
                                    on_delete=models.SET_NULL, related_name="redemptions")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.amount})"
