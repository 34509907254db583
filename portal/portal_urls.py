"""The user portal's URLs, under /portal/ (namespace ``portal``)."""

from __future__ import annotations

from django.urls import path

from portal.views import base, dashboard

app_name = "portal"

urlpatterns = [
    path("", dashboard.dashboard, name="dashboard"),
    path("switch/", base.switch, name="switch"),
    path("invitation/<str:token>/", base.invitation, name="invitation"),
    # Dashboard: one key's usage (the key's page includes the same panel).
    path("dashboard/keys/<int:pk>/", dashboard.key_usage, name="key_usage"),
]
