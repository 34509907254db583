"""Upstreams (LLM providers Turnpike relays to) and their credentials."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.core.validators import MinValueValidator, URLValidator
from django.db import models

from gateway.crypto import decrypt, encrypt
from keys.fields import ListField
from keys.models import Status

if TYPE_CHECKING:
    from gateway.providers.provider import Provider


class UpstreamKind(models.TextChoices):
    # Speaks /chat/completions and /responses (OpenAI itself, and most compatible servers).
    OPENAI = "openai", "OpenAI (Chat Completions + Responses)"
    # Speaks only /chat/completions (most OpenAI-compatible servers: vLLM, llama.cpp …).
    OPENAI_CHAT = "openai-chat", "OpenAI-compatible, Chat Completions only"
    # Speaks only /responses and demands stream=true (Codex-style backends).
    OPENAI_RESPONSES = "openai-responses", "OpenAI Responses only (Codex-style)"
    ANTHROPIC = "anthropic", "Anthropic Messages"
    OLLAMA = "ollama", "Ollama chat"
    # OpenAI-compatible with an ``api-key`` header (gateway/providers/azure.py).
    AZURE = "azure", "Azure OpenAI (v1 API, api-key header)"
    # Each kind's behaviour is its provider's (gateway/providers/, registered in
    # gateway/providers/registry.py); a new kind is a choice here plus its provider.


def upstream_base_url(kind: str, url: str) -> str:
    """The base URL requests are built on: no trailing slash, and for Anthropic and Ollama
    no trailing ``/v1`` either. People paste the SDKs' base URL
    (``https://api.anthropic.com/v1``, Ollama's OpenAI-compatible ``http://host:11434/v1``),
    which would otherwise make ``/v1/v1/messages``. Applied when an upstream is saved and
    again where URLs are built, so rows written without ``save()`` work too."""
    from gateway.providers.registry import PROVIDERS

    url = url.strip().rstrip("/")
    provider = PROVIDERS.get(kind)
    if provider is not None and provider.server_root and url.endswith("/v1"):
        url = url[: -len("/v1")].rstrip("/")
    return url


class Upstream(models.Model):
    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=32, choices=UpstreamKind.choices)
    # A CharField with a URL validator rather than URLField: URLField's form field guesses a
    # scheme for bare hosts, and an upstream URL must say http or https explicitly.
    base_url = models.CharField(
        max_length=500,
        validators=[URLValidator(schemes=["http", "https"])],
        help_text="For OpenAI kinds include the version path (https://api.openai.com/v1); "
        "for Anthropic and Ollama the server root.",
    )
    served_models = ListField(
        "models", help_text="Model names (or wildcards like gpt-5*) this upstream serves."
    )
    model_map = models.JSONField(
        default=dict, blank=True,
        help_text='Client-facing name -> name sent upstream, e.g. {"gpt-5-codex": '
        '"gpt-5.1-codex"}. Mapped names are served too.',
    )
    groups = models.ManyToManyField(
        "keys.Group", blank=True, related_name="upstreams",
        help_text="Only keys of these groups may use this upstream; none: every key.",
    )
    priority = models.IntegerField(default=0, help_text="Higher tiers are tried first.")
    weight = models.PositiveIntegerField(
        default=1, validators=[MinValueValidator(1)], help_text="Share within a priority tier."
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    timeout_connect = models.FloatField(
        null=True, blank=True, help_text="Seconds; empty: GATEWAY_CONNECT_TIMEOUT.")
    timeout_first_byte = models.FloatField(
        null=True, blank=True, help_text="Seconds until the response starts; empty: no limit.")
    timeout_idle = models.FloatField(
        null=True, blank=True,
        help_text="Longest silence between chunks, seconds; empty: GATEWAY_READ_TIMEOUT.")
    proxy_url = models.CharField(
        max_length=300, blank=True, validators=[URLValidator(schemes=["http", "https"])],
        help_text="HTTP proxy for this upstream, e.g. http://proxy:3128.")
    # Health, written by the probe task (gateway.tasks.probe_upstreams).
    health = models.CharField(max_length=16, default="unknown", editable=False)
    health_checked_at = models.DateTimeField(null=True, blank=True, editable=False)
    health_latency_ms = models.PositiveIntegerField(null=True, blank=True, editable=False)
    health_failures = models.PositiveIntegerField(default=0, editable=False)
    health_error = models.CharField(max_length=300, blank=True, editable=False)
    auto_disabled = models.BooleanField(
        default=False, help_text="Set by the health probe after repeated failures; cleared "
        "when the upstream recovers. Routing skips it meanwhile.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-priority", "name"]

    def __str__(self) -> str:
        return self.name

    @property
    def provider(self) -> Provider:
        """Everything kind-specific about this upstream (``gateway.providers``)."""
        from gateway.providers.registry import PROVIDERS

        return PROVIDERS[self.kind]

    def save(self, *args: Any, **kwargs: Any) -> None:
        # Here rather than in each writer: the admin, the CLI and the demo all save.
        self.base_url = upstream_base_url(self.kind, self.base_url)
        super().save(*args, **kwargs)


class Credential(models.Model):
    """An upstream's API key, encrypted at rest; only its last four characters are shown."""

    upstream = models.ForeignKey(Upstream, on_delete=models.CASCADE, related_name="credentials")
    name = models.CharField(max_length=100, blank=True)
    secret_encrypted = models.TextField(editable=False)
    last4 = models.CharField(max_length=4, editable=False, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    disabled_reason = models.CharField(max_length=300, blank=True)
    rpm = models.PositiveIntegerField(
        "requests per minute", null=True, blank=True,
        help_text="The upstream's limit for this key; Turnpike moves on before hitting it.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["upstream", "id"]

    def __str__(self) -> str:
        return f"{self.upstream.name}: {self.name or 'credential'} (…{self.last4})"

    def set_secret(self, secret: str) -> None:
        self.secret_encrypted = encrypt(secret)
        self.last4 = secret[-4:] if len(secret) >= 8 else ""

    def get_secret(self) -> str:
        return decrypt(self.secret_encrypted) if self.secret_encrypted else ""

    @property
    def masked(self) -> str:
        return f"…{self.last4}" if self.last4 else "(hidden)"


class ModelRule(models.Model):
    """Per-model adjustments of the body Turnpike sends upstream (in the upstream's
    protocol): force values (e.g. gpt-5.4 always ``{"reasoning": {"effort": "xhigh"}}``),
    set defaults the client left out, or drop parameters an upstream rejects."""

    class Protocol(models.TextChoices):
        ANY = "any", "Any"
        CHAT = "chat", "Chat Completions"
        RESPONSES = "responses", "Responses"
        ANTHROPIC = "anthropic", "Anthropic Messages"
        OLLAMA = "ollama", "Ollama chat"

    model_pattern = models.CharField(max_length=200, help_text="Model name or wildcard (gpt-5*).")
    protocol = models.CharField(max_length=16, choices=Protocol.choices, default=Protocol.ANY,
                                help_text="Apply only to upstream bodies of this protocol.")
    force = models.JSONField(
        default=dict, blank=True,
        help_text='Merged over the body, e.g. {"reasoning": {"effort": "xhigh"}}.')
    defaults = models.JSONField(default=dict, blank=True,
                                help_text="Merged under the body: only fills what is missing.")
    drop = ListField(help_text="Top-level parameters to remove, one per line.")
    enabled = models.BooleanField(default=True)
    note = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["model_pattern", "id"]

    def __str__(self) -> str:
        return f"{self.model_pattern} ({self.protocol})"


class StoredResponse(models.Model):
    """One stored /v1/responses answer (issue 14), a single document per response: what
    ``GET /v1/responses/{id}``, ``/input_items`` and ``previous_response_id`` read. Written
    off the response path by ``gateway.stored.store``; deleted after the tenant's retention
    by ``gateway.tasks.expire_stored_responses``."""

    id = models.CharField(primary_key=True, max_length=100)  # resp_…, as the client saw it
    tenant = models.ForeignKey("keys.Tenant", on_delete=models.CASCADE,
                               related_name="stored_responses")
    key = models.ForeignKey("keys.ApiKey", null=True, blank=True, on_delete=models.SET_NULL,
                            related_name="+")
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)
    status = models.CharField(max_length=16)
    model = models.CharField(max_length=200, blank=True)
    background = models.BooleanField(default=False)
    previous_response_id = models.CharField(max_length=100, null=True, blank=True)
    # The chain before this response, oldest first, so expanding a conversation is one
    # query (``id IN ancestors``).
    ancestors = models.JSONField(default=list, blank=True)
    # Size in bytes of the whole conversation up to and including this response (its
    # chain's input and output items): the reservation estimate of a next turn whose
    # history the upstream holds (a pinned route), without reading the chain.
    context_bytes = models.PositiveBigIntegerField(default=0)
    upstream = models.ForeignKey(Upstream, null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="+")
    credential = models.ForeignKey(Credential, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    request = models.JSONField(default=dict, blank=True)  # the create parameters minus input
    input_items = models.JSONField(default=list, blank=True)  # this turn's new input, with ids
    response = models.JSONField(default=dict, blank=True)  # the final response object
    events = models.JSONField(null=True, blank=True)  # background runs only

    class Meta:
        indexes = [models.Index(fields=["tenant", "created_at"], name="storedresp_tenant_time")]

    def __str__(self) -> str:
        return self.id


class AlertKind(models.TextChoices):
    UPSTREAM_DOWN = "upstream_down", "Upstream auto-disabled"
    CREDENTIAL_DISABLED = "credential_disabled", "Credential disabled by the upstream"
    REDIS_FAILURE = "redis_failure", "Redis failure mode engaged"
    USAGE_SPOOL = "usage_spool", "Usage spool not drained"
    ERROR_RATE = "error_rate", "Error rate over the threshold"


class OperatorAlert(models.Model):
    """The state of one operator alert (``gateway.opsalerts``): one row per kind and
    subject (an upstream's or a credential's id; empty for the process-wide kinds). Its
    ``firing`` flag flips by a conditional UPDATE, so each state change is delivered once
    whichever process saw it first."""

    kind = models.CharField(max_length=32, choices=AlertKind.choices)
    subject = models.CharField(max_length=100, blank=True)
    firing = models.BooleanField(default=False)
    summary = models.CharField(max_length=500, blank=True)
    admin_path = models.CharField(max_length=300, blank=True)
    changed_at = models.DateTimeField()
    last_sent_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["kind", "subject"],
                                               name="operator_alert_kind_subject")]
        ordering = ["-changed_at"]

    def __str__(self) -> str:
        return f"{self.kind} {self.subject}".strip()

class CapturedExchange(models.Model):
    """One request's bodies, captured for debugging (issue 15) while body capture is on for
    its key (``KeySnapshot.capture_until``): the request as received, before Turnpike
    rewrote it, and the response as sent to the client (a JSON body, or a stream's bytes as
    relayed), each cut at GATEWAY_CAPTURE_MAX_BYTES, with credentials redacted. Written off
    the response path by ``gateway.capture.store``; deleted after
    GATEWAY_CAPTURE_RETENTION_HOURS by ``gateway.tasks.expire_captures``. Staff see it on
    the usage row's admin page, the tenant's owners on the portal's request page."""

    request_id = models.CharField(max_length=64, unique=True)  # = UsageLog.request_id
    tenant = models.ForeignKey("keys.Tenant", on_delete=models.CASCADE, related_name="+")
    key = models.ForeignKey("keys.ApiKey", null=True, blank=True, on_delete=models.SET_NULL,
                            related_name="+")
    created_at = models.DateTimeField(db_index=True)
    method = models.CharField(max_length=16)
    path = models.CharField(max_length=500)
    status = models.PositiveSmallIntegerField(default=0)
    stream = models.BooleanField(default=False)
    request_headers = models.JSONField(default=dict, blank=True)  # a safe subset, redacted
    request_body = models.TextField(blank=True)
    request_bytes = models.PositiveIntegerField(default=0)  # the whole body's size
    request_truncated = models.BooleanField(default=False)
    response_body = models.TextField(blank=True)
    response_bytes = models.PositiveBigIntegerField(default=0)  # everything sent
    response_truncated = models.BooleanField(default=False)

    class Meta:
        verbose_name = "captured exchange"

    def __str__(self) -> str:
        return f"{self.request_id} {self.method} {self.path}"
