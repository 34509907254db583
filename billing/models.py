"""Prices and the per-request usage log."""

from __future__ import annotations

from decimal import Decimal

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
    request_id = models.CharField(max_length=64, db_index=True)
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
