"""The user portal's URLs, under /portal/ (namespace ``portal``)."""

from __future__ import annotations

from django.urls import path

from portal.views import base, dashboard
from portal.views import usage as usage_views

app_name = "portal"

urlpatterns = [
    path("", dashboard.dashboard, name="dashboard"),
    path("switch/", base.switch, name="switch"),
    path("invitation/<str:token>/", base.invitation, name="invitation"),
    # usage log (export and totals have no trailing slash: never a request id)
    path("usage/", usage_views.usage_log, name="usage"),
    path("usage/export.csv", usage_views.usage_export, name="usage_export"),
    path("usage/totals", usage_views.usage_totals, name="usage_totals"),
    path("usage/<str:request_id>/", usage_views.usage_detail, name="usage_detail"),
]
