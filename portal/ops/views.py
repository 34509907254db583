"""Viewsets of the operations API. Each write goes through the service the admin and the
CLI use (``keys.services``, ``keys.membership``, ``gateway.services``, ``billing.services``,
``billing.redemption``), or through the model's ``save()`` where the admin saves directly
(groups, prices, model rules, credentials): either way the model signals run, so the
gateway's key snapshots, route tables, price tables and limiter accounts follow within
``GATEWAY_SNAPSHOT_TTL``, exactly as after an admin change. Nothing here updates rows in
bulk (``QuerySet.update()`` sends no signals)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import Count, Max, Min, Q, QuerySet, Sum
from django.utils import timezone
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer

from billing.management.commands.tenant import tenant_money
from billing.models import LedgerEntry, ModelPrice, RedemptionCode, UsageLog, UsageRollup
from billing.redemption import redeem_create
from billing.services import tenant_topup
from gateway.health import probe, record
from gateway.models import Credential, ModelRule, Upstream
from gateway.services import upstream_create, upstream_set_status
from keys.membership import member_add, member_remove, member_set_role
from keys.models import AccessToken, ApiKey, Group, Membership, Status, Tenant
from keys.services import (
    key_create,
    key_delete,
    key_rotate,
    key_set_status,
    key_update,
    tenant_create,
)
from keys.tokens import token_revoke
from portal.infra.dbrouter import analytics
from portal.ops import filters as f
from portal.ops import serializers as s
from portal.ops.pagination import UsageCursorPagination

NO_STORE = {"Cache-Control": "no-store, private"}


class OpsMixin:
    """Shared by every ops view: a query parameter holding a NUL character is refused
    up front (PostgreSQL cannot compare text with one, so it would otherwise fail deep
    in a filter)."""

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # type: ignore[misc]
        for name, values in request.query_params.lists():
            if "\x00" in name or any("\x00" in v for v in values):
                raise ValidationError({name.replace("\x00", ""): [
                    "Null characters are not allowed."]})


def _status_action(active: bool, setter: Any, serializer: type[BaseSerializer]) -> Any:
    """A detail action that enables or disables the object through ``setter``."""

    @extend_schema(request=None, responses=serializer)
    def view(self: Any, request: Request, pk: str | None = None) -> Response:
        obj = self.get_object()
        setter(obj, active)
        return Response(serializer(obj, context=self.get_serializer_context()).data)

    view.__name__ = "enable" if active else "disable"
    view.__doc__ = ("Enable it." if active else
                    "Disable it (the gateway refuses it within GATEWAY_SNAPSHOT_TTL).")
    return action(detail=True, methods=["post"])(view)


def _save_status(obj: Any, active: bool) -> None:
    obj.status = Status.ACTIVE if active else Status.DISABLED
    obj.save(update_fields=["status"])  # per row: the signals evict the snapshots


# --- tenants, groups, members -----------------------------------------------------------

@extend_schema_view(
    list=extend_schema(summary="List tenants"),
    create=extend_schema(summary="Create a tenant (optionally with an opening balance)"),
    destroy=extend_schema(summary="Delete a tenant with its keys, members and ledger"),
)
class TenantViewSet(OpsMixin, viewsets.ModelViewSet):
    queryset = Tenant.objects.select_related("group").order_by("name")
    serializer_class = s.TenantSerializer
    filterset_fields = {"status": ["exact"], "group": ["exact", "isnull"],
                        "name": ["exact", "icontains"], "created_at": f.TIME}
    search_fields = ("name",)
    ordering_fields = ("id", "name", "balance", "created_at")

    def perform_create(self, serializer: BaseSerializer) -> None:
        data = dict(serializer.validated_data)
        opening = data.pop("opening_balance", None)
        with transaction.atomic():  # no tenant without its opening balance
            tenant = tenant_create(name=data.pop("name"), group=data.pop("group", None))
            if data:
                s._save_fields(tenant, data)
            if opening:
                tenant_topup(tenant=tenant, amount=opening, note="opening balance",
                             user=self.request.user)
        tenant.refresh_from_db()
        serializer.instance = tenant

    def perform_update(self, serializer: BaseSerializer) -> None:
        data = dict(serializer.validated_data)
        if data.pop("opening_balance", None) is not None:
            raise ValidationError({"opening_balance": [
                "Only when creating a tenant; top up through /api/ops/ledger/topup/."]})
        if "name" in data:
            data["name"] = data["name"].strip()
        s._save_fields(serializer.instance, data)

    disable = _status_action(False, _save_status, s.TenantSerializer)
    enable = _status_action(True, _save_status, s.TenantSerializer)

    @extend_schema(responses=s.TenantMoneySerializer)
    @action(detail=True, methods=["get"])
    def balance(self, request: Request, pk: str | None = None) -> Response:
        """Balance in the database, what the limiter has available, what requests in
        flight hold, and the ledger's total (as `manage.py tenant show --json`)."""
        return Response(tenant_money(self.get_object()))


class GroupViewSet(OpsMixin, viewsets.ModelViewSet):
    queryset = Group.objects.order_by("name")
    serializer_class = s.GroupSerializer
    filterset_fields = {"name": ["exact", "icontains"], "dedicated_upstreams": ["exact"]}
    search_fields = ("name", "description")
    ordering_fields = ("id", "name", "price_multiplier", "created_at")

    def perform_update(self, serializer: BaseSerializer) -> None:
        s._save_fields(serializer.instance, dict(serializer.validated_data))


class MembershipViewSet(OpsMixin, viewsets.ModelViewSet):
    """Members of tenants. The rules of the portal hold for the operator too: a tenant
    keeps at least one owner."""

    queryset = Membership.objects.select_related("tenant", "user").order_by("id")
    serializer_class = s.MembershipSerializer
    filterset_fields = {"tenant": ["exact"], "user": ["exact"], "role": ["exact"]}
    search_fields = ("user__email", "user__username", "tenant__name")
    ordering_fields = ("id", "role", "created_at")

    @extend_schema(responses={200: s.MembershipSerializer, 201: s.MembershipSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Add a user to a tenant with a role; an existing member gets the role (200)."""
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        membership, created = member_add(tenant=data["tenant"], user=data["user"],
                                         role=data.get("role", Membership.Role.MEMBER))
        return Response(self.get_serializer(membership).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(request=s.MembershipRoleSerializer, responses=s.MembershipSerializer)
    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Change a member's role (the tenant and the user stay)."""
        membership = self.get_object()
        serializer = s.MembershipRoleSerializer(data=request.data,
                                                partial=kwargs.get("partial", False))
        serializer.is_valid(raise_exception=True)
        if "role" in serializer.validated_data:
            membership = member_set_role(membership=membership,
                                         role=serializer.validated_data["role"])
        return Response(self.get_serializer(membership).data)

    @extend_schema(request=s.MembershipRoleSerializer, responses=s.MembershipSerializer)
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.update(request, *args, partial=True, **kwargs)

    def perform_destroy(self, instance: Membership) -> None:
        member_remove(membership=instance)


# --- keys ---------------------------------------------------------------------------------

def _set_key_status(key: ApiKey, active: bool) -> None:
    key_set_status(key=key, active=active)


class ApiKeyViewSet(OpsMixin, viewsets.ModelViewSet):
    """Turnpike API keys. Creating or rotating one returns its secret, once."""

    queryset = ApiKey.objects.select_related("tenant", "group").order_by("-created_at", "-id")
    serializer_class = s.ApiKeySerializer
    filterset_class = f.ApiKeyFilter
    search_fields = ("name", "prefix", "tenant__name")
    ordering_fields = ("id", "name", "created_at", "expires_at", "quota_used")

    def _created(self, key: ApiKey, secret: str) -> Response:
        key.secret = secret  # type: ignore[attr-defined]
        data = s.CreatedKeySerializer(key, context=self.get_serializer_context()).data
        return Response(data, status=status.HTTP_201_CREATED, headers=NO_STORE)

    @extend_schema(responses={201: s.CreatedKeySerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        disabled = data.pop("status", Status.ACTIVE) == Status.DISABLED
        with transaction.atomic():
            made = key_create(
                tenant=data.pop("tenant"), name=data.pop("name"), created_by=request.user,
                models=data.pop("allowed_models", None), **data)
            if disabled:
                key_set_status(key=made.key, active=False)
        return self._created(made.key, made.secret)

    def perform_update(self, serializer: BaseSerializer) -> None:
        data = dict(serializer.validated_data)
        new_status = data.pop("status", None)
        key = serializer.instance
        with transaction.atomic():
            key_update(key=key, **data)
            if new_status is not None:
                key_set_status(key=key, active=new_status == Status.ACTIVE)

    def perform_destroy(self, instance: ApiKey) -> None:
        key_delete(key=instance)

    disable = _status_action(False, _set_key_status, s.ApiKeySerializer)
    enable = _status_action(True, _set_key_status, s.ApiKeySerializer)

    @extend_schema(request=s.RotateSerializer, responses={201: s.CreatedKeySerializer})
    @action(detail=True, methods=["post"])
    def rotate(self, request: Request, pk: str | None = None) -> Response:
        """A new key with the same settings and a new secret (returned once); the old one
        stops working after `grace_seconds`."""
        key = self.get_object()
        serializer = s.RotateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        made = key_rotate(key=key,
                          grace=timedelta(seconds=serializer.validated_data["grace_seconds"]))
        return self._created(made.key, made.secret)


class AccessTokenViewSet(OpsMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin,
                         viewsets.GenericViewSet):
    """Personal access tokens (made in the portal or by `manage.py token create`): list
    and revoke, as in the admin."""

    queryset = AccessToken.objects.select_related("user", "tenant").order_by("-created_at",
                                                                             "-id")
    serializer_class = s.AccessTokenSerializer
    filterset_class = f.AccessTokenFilter
    search_fields = ("name", "prefix", "user__email", "user__username")
    ordering_fields = ("id", "created_at", "last_used_at", "expires_at")

    @extend_schema(request=None, responses=s.AccessTokenSerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        """Revoke the token: it is refused from now on."""
        token = self.get_object()
        token_revoke(token)
        token.refresh_from_db()
        return Response(self.get_serializer(token).data)


# --- upstreams, credentials, health -------------------------------------------------------

def _set_upstream_status(upstream: Upstream, active: bool) -> None:
    upstream_set_status(upstream=upstream, active=active)


class UpstreamViewSet(OpsMixin, viewsets.ModelViewSet):
    queryset = (Upstream.objects.prefetch_related("groups")
                .annotate(_creds=Count("credentials")).order_by("-priority", "name"))
    serializer_class = s.UpstreamSerializer
    filterset_fields = {"kind": ["exact"], "status": ["exact"], "health": ["exact"],
                        "auto_disabled": ["exact"], "groups": ["exact"],
                        "name": ["exact", "icontains"]}
    search_fields = ("name", "base_url")
    ordering_fields = ("id", "name", "priority", "weight", "health_latency_ms", "created_at")

    def perform_create(self, serializer: BaseSerializer) -> None:
        data = dict(serializer.validated_data)
        disabled = data.pop("status", Status.ACTIVE) == Status.DISABLED
        with transaction.atomic():
            upstream = upstream_create(
                name=data.pop("name"), kind=data.pop("kind"), base_url=data.pop("base_url"),
                models=data.pop("served_models", []),
                groups=[g.name for g in data.pop("groups", [])], **data)
            if disabled:
                upstream_set_status(upstream=upstream, active=False)
        serializer.instance = upstream

    def perform_update(self, serializer: BaseSerializer) -> None:
        data = dict(serializer.validated_data)
        if data.pop("api_keys", None) is not None:
            raise ValidationError({"api_keys": [
                "Only when creating an upstream; add credentials through "
                "/api/ops/credentials/."]})
        new_status = data.pop("status", None)
        upstream = serializer.instance
        with transaction.atomic():
            s._save_fields(upstream, data, m2m=("groups",))
            if new_status is not None and new_status != upstream.status:
                upstream_set_status(upstream=upstream, active=new_status == Status.ACTIVE)

    disable = _status_action(False, _set_upstream_status, s.UpstreamSerializer)
    enable = _status_action(True, _set_upstream_status, s.UpstreamSerializer)

    @extend_schema(request=None, responses=s.ProbeSerializer)
    @action(detail=True, methods=["post"])
    def test(self, request: Request, pk: str | None = None) -> Response:
        """"Test now": probe the upstream with its first active credential (its model
        list), record the health as the scheduled probe does, and answer the outcome."""
        upstream = self.get_object()
        result = probe(upstream)
        record(upstream, result)
        upstream.refresh_from_db()
        return Response({"ok": result.ok, "latency_ms": result.latency_ms,
                         "error": result.error,
                         "upstream": s.UpstreamHealthSerializer(upstream).data})


class UpstreamHealthViewSet(OpsMixin, viewsets.ReadOnlyModelViewSet):
    """The health the probe recorded for each upstream (`POST /upstreams/{id}/test/`
    probes one now)."""

    queryset = Upstream.objects.order_by("-priority", "name")
    serializer_class = s.UpstreamHealthSerializer
    filterset_fields = {"health": ["exact"], "auto_disabled": ["exact"], "status": ["exact"],
                        "kind": ["exact"]}
    search_fields = ("name",)
    ordering_fields = ("id", "name", "health", "health_checked_at", "health_latency_ms",
                       "health_failures")


class CredentialViewSet(OpsMixin, viewsets.ModelViewSet):
    """Upstream credentials. The secret is write-only: it is encrypted at rest and never
    returned (only its last four characters)."""

    queryset = Credential.objects.select_related("upstream").order_by("upstream", "id")
    serializer_class = s.CredentialSerializer
    filterset_fields = {"upstream": ["exact"], "status": ["exact"]}
    search_fields = ("name", "upstream__name", "last4")
    ordering_fields = ("id", "name", "created_at", "rpm")

    def perform_create(self, serializer: BaseSerializer) -> None:
        data = dict(serializer.validated_data)
        secret = data.pop("secret", "")
        credential = Credential(**data)
        if secret:
            credential.set_secret(secret)
        s.validate_model(credential)
        credential.save()
        serializer.instance = credential

    def perform_update(self, serializer: BaseSerializer) -> None:
        data = dict(serializer.validated_data)
        secret = data.pop("secret", "")
        credential = serializer.instance
        if secret:  # blank keeps the current one, as in the admin
            credential.set_secret(secret)
            data.update(secret_encrypted=credential.secret_encrypted, last4=credential.last4)
        s._save_fields(credential, data)


# --- prices and model rules ---------------------------------------------------------------

class ModelPriceViewSet(OpsMixin, viewsets.ModelViewSet):
    queryset = ModelPrice.objects.order_by("model")
    serializer_class = s.ModelPriceSerializer
    filterset_fields = {"model": ["exact", "icontains"]}
    search_fields = ("model",)
    ordering_fields = ("id", "model", "updated_at")

    def perform_update(self, serializer: BaseSerializer) -> None:
        s._save_fields(serializer.instance, dict(serializer.validated_data))


class ModelRuleViewSet(OpsMixin, viewsets.ModelViewSet):
    queryset = ModelRule.objects.order_by("model_pattern", "id")
    serializer_class = s.ModelRuleSerializer
    filterset_fields = {"protocol": ["exact"], "enabled": ["exact"],
                        "model_pattern": ["exact", "icontains"]}
    search_fields = ("model_pattern", "note")
    ordering_fields = ("id", "model_pattern", "protocol")

    def perform_update(self, serializer: BaseSerializer) -> None:
        s._save_fields(serializer.instance, dict(serializer.validated_data))


# --- redemption codes ---------------------------------------------------------------------

class RedemptionCodeViewSet(OpsMixin, viewsets.ReadOnlyModelViewSet):
    """Redemption codes as stored: their display prefix and state, never the code."""

    queryset = RedemptionCode.objects.select_related("redeemed_by").order_by("-created_at",
                                                                             "-id")
    serializer_class = s.RedemptionCodeSerializer
    filterset_class = f.RedemptionCodeFilter
    search_fields = ("prefix", "batch", "redeemed_by__name")
    ordering_fields = ("id", "created_at", "amount", "redeemed_at", "expires_at")


class RedemptionBatchViewSet(OpsMixin, mixins.ListModelMixin, viewsets.GenericViewSet):
    """Codes grouped by batch name; `POST` generates a batch and returns its codes once."""

    serializer_class = s.RedemptionBatchSerializer
    filterset_fields = {"batch": ["exact"]}
    search_fields = ("batch",)
    ordering_fields = ("batch", "codes", "first_created_at", "last_created_at")

    def get_queryset(self) -> QuerySet:
        now = timezone.now()
        unused = Q(redeemed_at__isnull=True)
        expired = unused & Q(expires_at__lte=now)
        return (RedemptionCode.objects.order_by().values("batch").annotate(
            codes=Count("id"), redeemed=Count("id", filter=~unused),
            expired=Count("id", filter=expired),
            active=Count("id", filter=unused & ~Q(expires_at__lte=now)),
            total_amount=Sum("amount"), first_created_at=Min("created_at"),
            last_created_at=Max("created_at")).order_by("-last_created_at", "batch"))

    @extend_schema(request=s.RedemptionBatchCreateSerializer,
                   responses={201: s.RedemptionBatchCreatedSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = s.RedemptionBatchCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        codes = redeem_create(amount=data["amount"], count=data["count"],
                              expires_at=data.get("expires_at"), batch=data["batch"],
                              user=request.user)
        answer = s.RedemptionBatchCreatedSerializer({
            "batch": data["batch"].strip(), "amount": data["amount"],
            "expires_at": data.get("expires_at"), "codes": codes})
        return Response(answer.data, status=status.HTTP_201_CREATED, headers=NO_STORE)


# --- usage and the ledger -----------------------------------------------------------------

class AnalyticReads:
    """Listing and reading go to the read replica when one is configured
    (``portal.infra.dbrouter``): usage rows are written by the gateway alone, so no caller
    of this API reads its own write here, and a replica a moment behind is fine."""

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        with analytics():
            return super().list(request, *args, **kwargs)  # type: ignore[misc]

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        with analytics():
            return super().retrieve(request, *args, **kwargs)  # type: ignore[misc]


class UsageLogViewSet(AnalyticReads, OpsMixin, viewsets.ReadOnlyModelViewSet):
    """One row per /v1 request (written by the gateway alone). Cursor-paginated."""

    queryset = UsageLog.objects.order_by("-created_at")
    serializer_class = s.UsageLogSerializer
    pagination_class = UsageCursorPagination
    filterset_class = f.UsageLogFilter
    search_fields = ("=request_id", "^key_prefix", "^model")
    ordering_fields = ("created_at", "cost", "latency_ms", "input_tokens", "output_tokens")


class UsageRollupViewSet(AnalyticReads, OpsMixin, viewsets.ReadOnlyModelViewSet):
    """Usage per local day, tenant, key and model (rebuilt by the rollup task)."""

    queryset = UsageRollup.objects.order_by("-date", "tenant", "model", "id")
    serializer_class = s.UsageRollupSerializer
    filterset_class = f.UsageRollupFilter
    search_fields = ("model",)
    ordering_fields = ("id", "date", "requests", "cost")


class LedgerViewSet(OpsMixin, viewsets.ReadOnlyModelViewSet):
    """Every balance change. Entries are written by the billing services only; a top-up
    goes through `POST /api/ops/ledger/topup/`."""

    queryset = LedgerEntry.objects.order_by("-created_at", "-id")
    serializer_class = s.LedgerEntrySerializer
    filterset_class = f.LedgerFilter
    search_fields = ("reference", "note", "tenant__name")
    ordering_fields = ("id", "created_at", "amount")

    @extend_schema(request=s.TopUpSerializer, responses={201: s.TopUpResultSerializer})
    @action(detail=False, methods=["post"])
    def topup(self, request: Request) -> Response:
        """Add to a tenant's balance (negative deducts) through the ledger, as the admin's
        "top up" field and `manage.py tenant topup` do: the limiter's copy of the balance
        in Redis moves by the same amount when the entry is committed."""
        serializer = s.TopUpSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        tenant = data["tenant"]
        entry = tenant_topup(tenant=tenant, amount=data["amount"], note=data["note"],
                             user=request.user)
        answer = s.TopUpResultSerializer({"entry": entry, "balance": tenant.balance})
        return Response(answer.data, status=status.HTTP_201_CREATED)
