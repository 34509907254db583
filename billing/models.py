"""Prices and the per-request usage log."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models

from keys.models import MONEY, DecimalShape

PRICE: DecimalShape = {"max_digits": 14, "decimal_places": 6}


class ModelPrice(models.Model):
    """Price of a model, per million tokens of each class, or per request.

    ``model`` may be a wildcard (``gpt-5*``); the most specific match wins.
    """

    model = models.CharField(max_length=200, unique=True)
    input_per_million = models.DecimalField(**PRICE, default=Decimal("0"))
    cached_input_per_million = models.DecimalField(
        max_digits=14, decimal_places=6, null=True, blank=True,
        help_text="Price of cached input tokens; empty: the input price.",
    )
    output_per_million = models.DecimalField(**PRICE, default=Decimal("0"))
    reasoning_per_million = models.DecimalField(
        max_digits=14, decimal_places=6, null=True, blank=True,
        help_text="Price of reasoning tokens (part of the output); empty: the output price.",
    )
    per_request = models.DecimalField(**PRICE, default=Decimal("0"),
                                      help_text="Fixed price per request; 0: none.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model"]

    def __str__(self) -> str:
        return self.model


class UsageLog(models.Model):
    """One row per /v1 request, success or failure. Written only by billing/usage.py.

    On PostgreSQL the table is partitioned by UTC month of ``created_at`` (migration 0009,
    ``billing.partitions``); its primary key there is (id, created_at), while Django keeps
    ``id`` as the model's pk (ids stay unique: one identity sequence feeds every partition).
    Nothing has a foreign key to this table."""

    created_at = models.DateTimeField(db_index=True)
    # Unique with created_at (a partitioned table's unique index must hold its partition
    # key; a row keeps its created_at through the journal and every retry): a batch written
    # twice (a writer that died after committing it) adds nothing.
    request_id = models.CharField(max_length=64)
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
    # A default in the database too: rows inserted without the column (a process of the
    # previous release during a rolling upgrade, SQL seeding) get "" rather than an error.
    client_request_id = models.CharField(
        max_length=64, blank=True, default="", db_default="",
        help_text="The client's own x-request-id, when it sent a valid one (not unique).")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["request_id", "created_at"],
                                    name="usagelog_request_id_created_at"),
        ]
        indexes = [
            models.Index(fields=["tenant", "created_at"]),
            models.Index(fields=["key", "created_at"]),
            # Only rows that have one: most clients send none, so the index stays small.
            models.Index(fields=["client_request_id"], name="usagelog_client_request_id",
                         condition=~models.Q(client_request_id="")),
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


# Latency and time-to-first-byte histograms of the rollups: bucket i counts requests with
# BOUNDS[i-1] <= ms < BOUNDS[i] (bucket 0 starts at 0; the last bucket is open-ended). One
# integer column per bucket, so the database sums them (SUM per column) for any range of
# rollup rows. A median read from them is exact to the bucket: it is interpolated linearly
# inside the bucket holding the middle request, so its error is under that bucket's width
# (under 25 ms below 100 ms, under 50 % of the value above; see billing.rollups.median_ms).
LATENCY_BOUNDS_MS = (25, 50, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000,
                     7500, 10000, 15000, 20000, 30000, 60000, 120000)
LATENCY_BUCKETS = len(LATENCY_BOUNDS_MS) + 1
LATENCY_FIELDS = tuple(f"lat_{i}" for i in range(LATENCY_BUCKETS))
TTFB_FIELDS = tuple(f"ttfb_{i}" for i in range(LATENCY_BUCKETS))


class RollupMeasures(models.Model):
    """What every rollup row counts: requests, errors (``billing.rollups.failed``: status >= 400
    or an upstream failure, e.g. a stream broken off after its 200) and the errors by class
    (``billing.rollups.ERROR_CLASSES``: client, server, upstream; the operations overview
    shows them), tokens by kind, cost, and the latency/TTFB histograms (``lat_0..lat_N``,
    ``ttfb_0..ttfb_N``; a request without a TTFB is in no TTFB bucket). Rows rolled up
    before the classes existed hold 0 for them until their period is rolled up again."""

    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    # A default in the database too: a rollup task of the previous release, still running
    # during a rolling upgrade, inserts rows without these columns and gets 0, not an error.
    client_errors = models.PositiveIntegerField(default=0, db_default=0)
    server_errors = models.PositiveIntegerField(default=0, db_default=0)
    upstream_errors = models.PositiveIntegerField(default=0, db_default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    cached_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    reasoning_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(**MONEY, default=Decimal("0"))

    class Meta:
        abstract = True


for _name in (*LATENCY_FIELDS, *TTFB_FIELDS):
    RollupMeasures.add_to_class(_name, models.PositiveIntegerField(default=0))


class UsageRollup(RollupMeasures):
    """Usage per local day, tenant, key and model; rebuilt idempotently from UsageLog by
    ``billing.tasks.rollup_usage`` and kept after the raw rows expire."""

    date = models.DateField(db_index=True)
    tenant = models.ForeignKey("keys.Tenant", null=True, blank=True, on_delete=models.CASCADE,
                               related_name="rollups")
    key = models.ForeignKey("keys.ApiKey", null=True, blank=True, on_delete=models.SET_NULL,
                            related_name="rollups")
    model = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-date", "tenant", "model"]
        constraints = [
            models.UniqueConstraint(fields=["date", "tenant", "key", "model"],
                                    name="unique_rollup", nulls_distinct=False),
        ]
        indexes = [models.Index(fields=["tenant", "date"], name="rollup_tenant_date"),
                   models.Index(fields=["key", "date"], name="rollup_key_date")]

    def __str__(self) -> str:
        return f"{self.date} {self.tenant} {self.model}"


class UsageRollupHourly(RollupMeasures):
    """Usage per hour (``hour``: the hour's start, UTC), tenant, key and model; rebuilt
    idempotently from UsageLog by ``billing.tasks.rollup_usage_hourly`` (every minute, the
    current and the previous hour). The dashboard reads it for today's complete hours."""

    hour = models.DateTimeField()
    tenant = models.ForeignKey("keys.Tenant", null=True, blank=True, on_delete=models.CASCADE,
                               related_name="hourly_rollups")
    key = models.ForeignKey("keys.ApiKey", null=True, blank=True, on_delete=models.SET_NULL,
                            related_name="hourly_rollups")
    model = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-hour", "tenant", "model"]
        constraints = [
            models.UniqueConstraint(fields=["hour", "tenant", "key", "model"],
                                    name="unique_rollup_hourly", nulls_distinct=False),
        ]
        indexes = [models.Index(fields=["tenant", "hour"], name="rollup_h_tenant_hour"),
                   models.Index(fields=["key", "hour"], name="rollup_h_key_hour")]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}:00 {self.tenant} {self.model}"


class UsageRollupTenant(RollupMeasures):
    """Usage per local day, tenant and model: the sum of that day's ``UsageRollup`` rows of
    the tenant and model over all its keys, kept in the same transaction as they are (by
    ``billing.rollups.rollup_day``). The tenant's dashboard reads it for its cards, day
    series, histograms and model chart: a few rows per day whatever the number of keys."""

    date = models.DateField()
    tenant = models.ForeignKey("keys.Tenant", null=True, blank=True, on_delete=models.CASCADE,
                               related_name="tenant_rollups")
    model = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-date", "tenant", "model"]
        constraints = [
            models.UniqueConstraint(fields=["date", "tenant", "model"],
                                    name="unique_rollup_tenant", nulls_distinct=False),
        ]
        indexes = [models.Index(fields=["tenant", "date"], name="rollup_t_tenant_date")]

    def __str__(self) -> str:
        return f"{self.date} {self.tenant} {self.model}"


class UsageRollupTenantHourly(RollupMeasures):
    """Usage per UTC hour, tenant and model: the sum of that hour's ``UsageRollupHourly``
    rows over the tenant's keys, kept with them (``billing.rollups.rollup_hour``)."""

    hour = models.DateTimeField()
    tenant = models.ForeignKey("keys.Tenant", null=True, blank=True, on_delete=models.CASCADE,
                               related_name="tenant_hourly_rollups")
    model = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-hour", "tenant", "model"]
        constraints = [
            models.UniqueConstraint(fields=["hour", "tenant", "model"],
                                    name="unique_rollup_tenant_hourly", nulls_distinct=False),
        ]
        indexes = [models.Index(fields=["tenant", "hour"], name="rollup_th_tenant_hour")]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}:00 {self.tenant} {self.model}"


class KeyUsageTotals(models.Model):
    """Each key's usage summed over a range of local days of ``UsageRollup`` (the range is
    ``RollupState('key_totals')``: normally the dashboard's 30-day window up to yesterday).
    Rebuilt by the 10-minute rollup task when the range moves, and dropped (with its
    state) by any rollup that changes a day inside the range, so it is never stale: the
    dashboard's key chart and top keys read one row per key from it instead of a GROUP BY
    over every (day, key, model) rollup row of the window."""

    tenant = models.ForeignKey("keys.Tenant", null=True, blank=True, on_delete=models.CASCADE,
                               related_name="key_usage_totals")
    key = models.ForeignKey("keys.ApiKey", null=True, blank=True, on_delete=models.SET_NULL,
                            related_name="usage_totals")
    requests = models.PositiveBigIntegerField(default=0)
    errors = models.PositiveBigIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    cached_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    reasoning_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(max_digits=24, decimal_places=6, default=Decimal("0"))

    class Meta:
        indexes = [models.Index(fields=["tenant", "key"], name="key_totals_tenant_key")]

    def __str__(self) -> str:
        return f"{self.tenant} {self.key_id}: {self.requests} requests"


class RollupState(models.Model):
    """How far the scheduled rollups have got: every period in [since, through) of this
    granularity (``daily``: local days, ``hourly``: UTC hours) was rolled up after it ended.
    The dashboard trusts rollups only there and reads raw rows for the rest, so it is right
    without Celery beat too (then from raw rows, slower)."""

    name = models.CharField(max_length=16, primary_key=True)
    since = models.DateTimeField()
    through = models.DateTimeField()
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name}: {self.since:%Y-%m-%d %H:%M} .. {self.through:%Y-%m-%d %H:%M}"


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
