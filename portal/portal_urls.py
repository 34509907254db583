"""The user portal's URLs, under /portal/ (namespace ``portal``)."""

from __future__ import annotations

from django.urls import path

from portal.views import balance as balance_views
from portal.views import base, dashboard
from portal.views import models as model_views

app_name = "portal"

urlpatterns = [
    path("", dashboard.dashboard, name="dashboard"),
    path("switch/", base.switch, name="switch"),
    path("invitation/<str:token>/", base.invitation, name="invitation"),
    # Balance, models and prices, quickstart, playground (issue 11, p-pages).
    path("balance/", balance_views.balance, name="balance"),
    path("balance/export.csv", balance_views.export, name="balance_export"),
    path("balance/redeem/", balance_views.redeem, name="balance_redeem"),
    path("balance/alert/", balance_views.alert, name="balance_alert"),
    path("models/", model_views.models_page, name="models"),
    path("models/<path:model>/cost", model_views.model_cost, name="model_cost"),
    path("quickstart/", model_views.quickstart, name="quickstart"),
    path("playground/", model_views.playground, name="playground"),
]
