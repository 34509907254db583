"""URLs of the operations API, mounted at /api/ops/ (portal/urls.py)."""

from __future__ import annotations

from django.urls import include, path, re_path
from drf_spectacular.views import (
    SpectacularAPIView,
    SpectacularRedocView,
    SpectacularSwaggerSplitView,
)
from rest_framework.routers import DefaultRouter

from portal.ops import views
from portal.ops.errors import not_found

router = DefaultRouter()
router.register("tenants", views.TenantViewSet, basename="tenant")
router.register("members", views.MembershipViewSet, basename="member")
router.register("groups", views.GroupViewSet, basename="group")
router.register("keys", views.ApiKeyViewSet, basename="key")
router.register("tokens", views.AccessTokenViewSet, basename="token")
router.register("upstreams", views.UpstreamViewSet, basename="upstream")
router.register("upstream-health", views.UpstreamHealthViewSet, basename="upstream-health")
router.register("credentials", views.CredentialViewSet, basename="credential")
router.register("prices", views.ModelPriceViewSet, basename="price")
router.register("model-rules", views.ModelRuleViewSet, basename="model-rule")
router.register("redemption-batches", views.RedemptionBatchViewSet,
                basename="redemption-batch")
router.register("redemption-codes", views.RedemptionCodeViewSet, basename="redemption-code")
router.register("usage", views.UsageLogViewSet, basename="usage")
router.register("usage-rollups", views.UsageRollupViewSet, basename="usage-rollup")
router.register("ledger", views.LedgerViewSet, basename="ledger")

app_name = "ops"
urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    # Swagger UI's own script is a separate URL (?script), so the page needs no inline
    # script and keeps the site's Content-Security-Policy.
    path("docs/", SpectacularSwaggerSplitView.as_view(url_name="ops:schema"), name="docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="ops:schema",
                                                template_name="ops/redoc.html"),
         name="redoc"),
    path("", include(router.urls)),
    re_path(r"^.*$", not_found),
]
