"""django-filter filter sets of the operations API (``?tenant=3&status=active`` …).

Every viewset also takes ``?search=`` (over the fields its ``search_fields`` name) and
``?ordering=field`` / ``?ordering=-field`` (over its ``ordering_fields``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django import forms
from django.db import models
from django.db.models import Q, QuerySet
from django.utils import timezone
from django_filters import rest_framework as filters
from django_filters.fields import IsoDateTimeField

from billing.models import LedgerEntry, RedemptionCode, UsageLog, UsageRollup
from keys.models import AccessToken, ApiKey

TIME = ["gte", "lt"]


class IdFilter(filters.NumberFilter):
    """A related row by id: an id no row has matches nothing (an empty page, not a 400)."""

    field_class = forms.IntegerField


class UtcDateTimeField(IsoDateTimeField):
    """An ISO 8601 time, moved to UTC: PostgreSQL refuses offsets past ±15:59, which the
    standard allows."""

    def to_python(self, value: Any) -> datetime | None:
        parsed = super().to_python(value)
        if parsed is None or parsed.tzinfo is None:
            return parsed
        try:
            return parsed.astimezone(UTC)
        except OverflowError:
            raise forms.ValidationError("This time is out of range.",
                                        code="invalid") from None


class UtcDateTimeFilter(filters.IsoDateTimeFilter):
    field_class = UtcDateTimeField


class OpsFilterSet(filters.FilterSet):
    """Foreign keys and many-to-many fields filter by id (``?tenant=3``); times are ISO
    8601."""

    FILTER_DEFAULTS = {
        **filters.FilterSet.FILTER_DEFAULTS,
        models.DateTimeField: {"filter_class": UtcDateTimeFilter},
        models.ForeignKey: {"filter_class": IdFilter},
        models.OneToOneField: {"filter_class": IdFilter},
        models.ManyToManyField: {"filter_class": IdFilter},
    }


class OpsFilterBackend(filters.DjangoFilterBackend):
    """Builds the filter sets of ``filterset_fields`` on ``OpsFilterSet``."""

    filterset_base = OpsFilterSet


class ApiKeyFilter(OpsFilterSet):
    prefix = filters.CharFilter(field_name="prefix", lookup_expr="startswith",
                                help_text="Keys whose display prefix starts with this.")

    class Meta:
        model = ApiKey
        fields = {"tenant": ["exact"], "status": ["exact"], "group": ["exact", "isnull"],
                  "name": ["exact", "icontains"], "created_by": ["exact"],
                  "expires_at": ["isnull", *TIME], "created_at": TIME}


class RedemptionCodeFilter(OpsFilterSet):
    state = filters.ChoiceFilter(
        choices=[("active", "active"), ("redeemed", "redeemed"), ("expired", "expired")],
        method="filter_state")

    class Meta:
        model = RedemptionCode
        fields = {"batch": ["exact"], "redeemed_by": ["exact"], "created_at": TIME}

    def filter_state(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        now = timezone.now()
        if value == "redeemed":
            return queryset.filter(redeemed_at__isnull=False)
        unexpired = Q(expires_at__isnull=True) | Q(expires_at__gt=now)
        if value == "expired":
            return queryset.filter(redeemed_at__isnull=True, expires_at__lte=now)
        return queryset.filter(unexpired, redeemed_at__isnull=True)


class UsageLogFilter(OpsFilterSet):
    class Meta:
        model = UsageLog
        fields = {"tenant": ["exact"], "key": ["exact"], "model": ["exact"],
                  "upstream": ["exact"], "credential": ["exact"], "endpoint": ["exact"],
                  "status_code": ["exact", "gte", "lt"], "error_code": ["exact"],
                  "stream": ["exact"], "estimated": ["exact"], "created_at": TIME}


class UsageRollupFilter(OpsFilterSet):
    class Meta:
        model = UsageRollup
        fields = {"tenant": ["exact"], "key": ["exact"], "model": ["exact"],
                  "date": ["exact", "gte", "lte"]}


class LedgerFilter(OpsFilterSet):
    class Meta:
        model = LedgerEntry
        fields = {"tenant": ["exact"], "kind": ["exact"], "created_by": ["exact"],
                  "created_at": TIME}


class AccessTokenFilter(OpsFilterSet):
    revoked = filters.BooleanFilter(field_name="revoked_at", lookup_expr="isnull",
                                    exclude=True)

    class Meta:
        model = AccessToken
        fields = {"user": ["exact"], "tenant": ["exact"], "scope": ["exact"],
                  "staff": ["exact"]}
