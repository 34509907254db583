"""django-filter filter sets of the operations API (``?tenant=3&status=active`` …).

Every viewset also takes ``?search=`` (over the fields its ``search_fields`` name) and
``?ordering=field`` / ``?ordering=-field`` (over its ``ordering_fields``)."""

from __future__ import annotations

from django.db.models import Q, QuerySet
from django.utils import timezone
from django_filters import rest_framework as filters

from billing.models import LedgerEntry, RedemptionCode, UsageLog, UsageRollup
from keys.models import AccessToken, ApiKey

TIME = ["gte", "lt"]


class ApiKeyFilter(filters.FilterSet):
    prefix = filters.CharFilter(field_name="prefix", lookup_expr="startswith",
                                help_text="Keys whose display prefix starts with this.")

    class Meta:
        model = ApiKey
        fields = {"tenant": ["exact"], "status": ["exact"], "group": ["exact", "isnull"],
                  "name": ["exact", "icontains"], "created_by": ["exact"],
                  "expires_at": ["isnull", *TIME], "created_at": TIME}


class RedemptionCodeFilter(filters.FilterSet):
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


class UsageLogFilter(filters.FilterSet):
    class Meta:
        model = UsageLog
        fields = {"tenant": ["exact"], "key": ["exact"], "model": ["exact"],
                  "upstream": ["exact"], "credential": ["exact"], "endpoint": ["exact"],
                  "status_code": ["exact", "gte", "lt"], "error_code": ["exact"],
                  "stream": ["exact"], "estimated": ["exact"], "created_at": TIME}


class UsageRollupFilter(filters.FilterSet):
    class Meta:
        model = UsageRollup
        fields = {"tenant": ["exact"], "key": ["exact"], "model": ["exact"],
                  "date": ["exact", "gte", "lte"]}


class LedgerFilter(filters.FilterSet):
    class Meta:
        model = LedgerEntry
        fields = {"tenant": ["exact"], "kind": ["exact"], "created_by": ["exact"],
                  "created_at": TIME}


class AccessTokenFilter(filters.FilterSet):
    revoked = filters.BooleanFilter(field_name="revoked_at", lookup_expr="isnull",
                                    exclude=True)

    class Meta:
        model = AccessToken
        fields = {"user": ["exact"], "tenant": ["exact"], "scope": ["exact"],
                  "staff": ["exact"]}
