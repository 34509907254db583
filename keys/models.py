"""Tenants, their members, groups (plans) and API keys.

The gateway never reads these models on the hot path: it reads ``KeySnapshot`` (see
``keys/snapshots.py``), rebuilt from here when a key is first seen or after a change.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TypedDict

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from keys.fields import ListField
from keys.secrets import masked


class DecimalShape(TypedDict):
    """A DecimalField's digits, shared by every field of one kind (typed for **unpacking)."""

    max_digits: int
    decimal_places: int


MONEY: DecimalShape = {"max_digits": 18, "decimal_places": 6}


class Status(models.TextChoices):
    ACTIVE = "active", _("Active")
    DISABLED = "disabled", _("Disabled")


class ResponseStorage(models.TextChoices):
    """A tenant's response storage (issue 14): ``on`` keeps /v1/responses answers for
    ``previous_response_id`` and ``GET /v1/responses/{id}``; ``off`` is zero data
    retention (nothing of a conversation is kept)."""

    ON = "on", _("On")
    OFF = "off", _("Off (zero data retention)")


class KeyResponseStorage(models.TextChoices):
    """A key's override of its tenant's response storage."""

    INHERIT = "inherit", _("As the tenant")
    ON = "on", _("On")
    OFF = "off", _("Off (zero data retention)")


# Longest retention a tenant may choose (ten years).
MAX_RETENTION_DAYS = 3650


class KeyCapture(models.TextChoices):
    """A key's body capture (issue 15): as its tenant's window says, on until its own
    ``capture_bodies_until``, or never."""

    INHERIT = "inherit", _("As the tenant")
    ON = "on", _("On until a time")
    OFF = "off", _("Off")


# Body capture is a debugging tool that ends by itself: a window ends at most this far ahead.
MAX_CAPTURE_DAYS = 30


def capture_window_error(until: datetime | None, now: datetime | None = None) -> str | None:
    """Why ``until`` cannot end a body-capture window (None: it can). A time in the past is
    accepted (capture is simply off); one more than MAX_CAPTURE_DAYS ahead is not."""
    if until is not None and until > (now or timezone.now()) + timedelta(days=MAX_CAPTURE_DAYS):
        return str(_("A body capture window ends at most %(days)s days from now.")
                   % {"days": MAX_CAPTURE_DAYS})
    return None


def capture_until(key_setting: str, key_until: datetime | None,
                  tenant_until: datetime | None) -> float:
    """Unix seconds until which a key's request and response bodies are captured; 0: off
    (the key's ``off``, or no window)."""
    if key_setting == KeyCapture.OFF:
        return 0.0
    until = key_until if key_setting == KeyCapture.ON else tenant_until
    return until.timestamp() if until is not None else 0.0


class Group(models.Model):
    """A plan: which models its keys may call, their default limits, and a price factor.

    A key's own limit wins when set; an unset (null) key limit falls back to the group's;
    0 means unlimited at either level.
    """

    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    allowed_models = ListField(
        help_text="Model names or wildcards (gpt-5*), one per line. Empty: every model."
    )
    rpm = models.PositiveIntegerField("requests per minute", default=0, help_text="0: unlimited")
    rpd = models.PositiveIntegerField("requests per day", default=0, help_text="0: unlimited")
    concurrency = models.PositiveIntegerField(default=0, help_text="0: unlimited")
    max_tokens = models.PositiveIntegerField(
        "max tokens cap", default=0, help_text="Largest max_tokens a request may ask; 0: no cap"
    )
    price_multiplier = models.DecimalField(
        max_digits=8, decimal_places=4, default=Decimal("1"),
        validators=[MinValueValidator(Decimal("0"))],
    )
    dedicated_upstreams = models.BooleanField(
        default=False, help_text="Its keys use only the upstreams assigned to this group "
        "(e.g. a premium group on premium upstreams).",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Tenant(models.Model):
    """An organisation or team: owns the balance and the keys; users are its members."""

    name = models.CharField(max_length=100, unique=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    group = models.ForeignKey(
        Group, null=True, blank=True, on_delete=models.SET_NULL, related_name="tenants",
        help_text="Default group for the tenant's keys.",
    )
    balance = models.DecimalField(**MONEY, default=Decimal("0"))
    members_can_create_keys = models.BooleanField(
        default=False, help_text="Members (not only owners and admins) may create keys, and "
        "change the keys they created.")
    low_balance_threshold = models.DecimalField(
        **MONEY, null=True, blank=True, help_text="Email the owners and admins when the "
        "available balance falls below this; empty: no alert.")
    low_balance_alerted = models.BooleanField(
        default=False, editable=False,
        help_text="The alert for the current crossing was sent (reset when the balance "
        "is back above the threshold).")
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="tenants", blank=True
    )
    response_storage = models.CharField(
        max_length=8, choices=ResponseStorage.choices, default=ResponseStorage.ON,
        help_text="Store /v1/responses answers (for previous_response_id and GET "
        "/v1/responses/{id}); off: zero data retention, nothing of a conversation is kept.")
    response_retention_days = models.PositiveIntegerField(
        default=30, validators=[MinValueValidator(1), MaxValueValidator(MAX_RETENTION_DAYS)],
        help_text="Days a stored response is kept before it is deleted.")
    capture_bodies_until = models.DateTimeField(
        null=True, blank=True,
        help_text="Capture the request and response bodies of the tenant's keys (those that "
        "inherit) until this time, for debugging; empty or past: off. At most "
        f"{MAX_CAPTURE_DAYS} days ahead.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        error = capture_window_error(self.capture_bodies_until)
        if error:
            raise ValidationError({"capture_bodies_until": error})


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", _("Owner")
        ADMIN = "admin", _("Admin")
        MEMBER = "member", _("Member")

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "user"], name="unique_membership"),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.tenant} ({self.role})"


class Invitation(models.Model):
    """An invitation to join a tenant with a role, sent by email as a signed link that
    expires (``portal.invitations``). Accepting it makes (or updates) a Membership."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Membership.Role.choices,
                            default=Membership.Role.MEMBER)
    invited_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                    on_delete=models.SET_NULL, related_name="+")
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.email} to {self.tenant} ({self.role})"


class ApiKey(models.Model):
    """A Turnpike key. The secret is shown once at creation; only its hash is kept."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="keys")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="created_keys",
    )
    group = models.ForeignKey(
        Group, null=True, blank=True, on_delete=models.SET_NULL, related_name="keys",
        help_text="Overrides the tenant's group.",
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, editable=False, db_index=True)
    last4 = models.CharField(max_length=4, editable=False)
    secret_hash = models.CharField(max_length=64, unique=True, editable=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    expires_at = models.DateTimeField(null=True, blank=True)
    allowed_models = ListField(help_text="Model names or wildcards; empty: the group's list.")
    denied_models = ListField(help_text="Model names or wildcards this key may never call.")
    allowed_ips = ListField(help_text="IP addresses or CIDRs; empty: any address.")
    rpm = models.PositiveIntegerField(
        "requests per minute", null=True, blank=True, help_text="Empty: group default; 0: none"
    )
    rpd = models.PositiveIntegerField(
        "requests per day", null=True, blank=True, help_text="Empty: group default; 0: none"
    )
    tpm = models.PositiveIntegerField(
        "tokens per minute", null=True, blank=True, help_text="Empty or 0: unlimited"
    )
    concurrency = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests in flight; empty: group default; 0: none"
    )
    max_tokens = models.PositiveIntegerField(
        "max tokens cap", null=True, blank=True, help_text="Empty: group default; 0: no cap"
    )
    quota = models.DecimalField(
        **MONEY, null=True, blank=True, help_text="Spending cap for this key; empty: none",
        validators=[MinValueValidator(Decimal("0"))],
    )
    quota_used = models.DecimalField(**MONEY, default=Decimal("0"))
    rotated_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The key this one replaced (rotation).")
    response_storage = models.CharField(
        max_length=8, choices=KeyResponseStorage.choices, default=KeyResponseStorage.INHERIT,
        help_text="Store this key's /v1/responses answers: as its tenant says, or on/off "
        "for this key alone (the tenant's retention period applies).")
    capture_bodies = models.CharField(
        max_length=8, choices=KeyCapture.choices, default=KeyCapture.INHERIT,
        help_text="Capture this key's request and response bodies: as its tenant says, on "
        "until the time below, or off.")
    capture_bodies_until = models.DateTimeField(
        null=True, blank=True, help_text="When capture is on for this key: the time it stops.")
    expiry_notified = models.BooleanField(default=False, editable=False)
    quota_notified = models.BooleanField(default=False, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"
        # The portal's key list: a tenant's keys newest first, a page at a time (an index
        # scan that stops after the page, not a sort of every key of the tenant).
        indexes = [models.Index(fields=["tenant", "-id"], name="apikey_tenant_newest")]

    def __str__(self) -> str:
        return f"{self.name} ({self.masked})"

    def clean(self) -> None:
        """The gateway skips an allow-list entry it cannot parse (and logs it); refusing it
        here means an operator's typo never silently widens or empties the list."""
        bad = []
        for entry in self.allowed_ips or []:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                bad.append(entry)
        if bad:
            raise ValidationError({"allowed_ips": f"Not an IP address or CIDR: "
                                                  f"{', '.join(bad)}."})
        if self.capture_bodies != KeyCapture.ON:
            self.capture_bodies_until = None  # only "on" has a window of its own
        elif self.capture_bodies_until is None:
            raise ValidationError({"capture_bodies_until": _(
                "Give the time capture stops: it is a debugging tool that ends by itself.")})
        error = capture_window_error(self.capture_bodies_until)
        if error:
            raise ValidationError({"capture_bodies_until": error})

    @property
    def masked(self) -> str:
        return masked(self.prefix, self.last4)

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def store_days(self) -> int:
        """Days this key's stored responses are kept; 0: storage off (its own setting, else
        its tenant's)."""
        return store_days(self.response_storage, self.tenant.response_storage,
                          self.tenant.response_retention_days)

    @property
    def capture_until(self) -> float:
        """Unix seconds until which this key's bodies are captured; 0: off."""
        return capture_until(self.capture_bodies, self.capture_bodies_until,
                             self.tenant.capture_bodies_until)


def store_days(key_setting: str, tenant_setting: str, retention_days: int) -> int:
    """Response storage for a key: the tenant's retention in days, or 0 when storage is
    off for the key (its own ``off``, or ``inherit`` from a tenant that is off)."""
    setting = tenant_setting if key_setting == KeyResponseStorage.INHERIT else key_setting
    return retention_days if setting == ResponseStorage.ON else 0


class AccessToken(models.Model):
    """A personal access token for the tenant API (``/api/v1``) and, when ``staff``, the
    operations API (``/api/ops``). ``tp_pat_`` + 43 base62 characters; only the SHA-256 is
    stored, the secret is shown once. ``tenant`` bounds a tenant-API token to one of its
    owner's tenants (empty: the owner's only tenant, or the one a request names)."""

    class Scope(models.TextChoices):
        READ = "read", "read-only"
        WRITE = "write", "read-write"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="access_tokens")
    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.CASCADE,
                               related_name="access_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, editable=False, db_index=True)
    last4 = models.CharField(max_length=4, editable=False)
    secret_hash = models.CharField(max_length=64, unique=True, editable=False)
    scope = models.CharField(max_length=8, choices=Scope.choices, default=Scope.READ)
    staff = models.BooleanField(
        default=False, help_text="Reaches the operations API (only while the user is staff).")
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "personal access token"

    def __str__(self) -> str:
        return f"{self.name} ({self.masked})"

    @property
    def masked(self) -> str:
        return masked(self.prefix, self.last4)

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and not self.is_expired

    @property
    def can_write(self) -> bool:
        return self.scope == self.Scope.WRITE
