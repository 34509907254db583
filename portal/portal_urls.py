"""The user portal's URLs, under /portal/ (namespace ``portal``)."""

from __future__ import annotations

from django.urls import path

from portal.views import audit as audit_views
from portal.views import balance as balance_views
from portal.views import base, dashboard, members, tokens
from portal.views import keys as key_views
from portal.views import models as model_views
from portal.views import usage as usage_views

app_name = "portal"

urlpatterns = [
    path("", dashboard.dashboard, name="dashboard"),
    path("switch/", base.switch, name="switch"),
    path("invitation/<str:token>/", base.invitation, name="invitation"),
    # Keys
    path("keys/", key_views.key_list, name="key_list"),
    path("keys/new/", key_views.key_create, name="key_create"),
    path("keys/<int:pk>/", key_views.key_detail, name="key_detail"),
    path("keys/<int:pk>/edit/", key_views.key_edit, name="key_edit"),
    path("keys/<int:pk>/disable/", key_views.key_status, {"action": "disable"},
         name="key_disable"),
    path("keys/<int:pk>/enable/", key_views.key_status, {"action": "enable"},
         name="key_enable"),
    path("keys/<int:pk>/rotate/", key_views.key_rotate, name="key_rotate"),
    path("keys/<int:pk>/delete/", key_views.key_delete, name="key_delete"),
    # end Keys
    # Accounts and membership
    path("welcome/", members.welcome, name="welcome"),
    path("members/", members.members, name="members"),
    path("members/invite/", members.invite, name="member_invite"),
    path("members/leave/", members.leave, name="member_leave"),
    path("members/<int:pk>/role/", members.set_role, name="member_role"),
    path("members/<int:pk>/remove/", members.remove, name="member_remove"),
    path("members/invitations/<int:pk>/revoke/", members.revoke, name="invitation_revoke"),
    path("settings/", members.tenant_settings, name="settings"),
    # Personal access tokens for the tenant API (/api/v1)
    path("tokens/", tokens.token_list, name="tokens"),
    path("tokens/<int:pk>/revoke/", tokens.token_revoke, name="token_revoke"),
    # Balance, models and prices, quickstart, playground (issue 11, p-pages).
    path("balance/", balance_views.balance, name="balance"),
    path("balance/export.csv", balance_views.export, name="balance_export"),
    path("balance/redeem/", balance_views.redeem, name="balance_redeem"),
    path("balance/alert/", balance_views.alert, name="balance_alert"),
    path("models/", model_views.models_page, name="models"),
    path("models/<path:model>/cost", model_views.model_cost, name="model_cost"),
    path("quickstart/", model_views.quickstart, name="quickstart"),
    path("playground/", model_views.playground, name="playground"),
    # usage log (export and totals have no trailing slash: never a request id)
    path("usage/", usage_views.usage_log, name="usage"),
    path("usage/export.csv", usage_views.usage_export, name="usage_export"),
    path("usage/totals", usage_views.usage_totals, name="usage_totals"),
    path("usage/<str:request_id>/", usage_views.usage_detail, name="usage_detail"),
    # The tenant's audit log (owners and admins).
    path("activity/", audit_views.activity, name="activity"),
    # Dashboard: one key's usage (the key's page includes the same panel).
    path("dashboard/keys/<int:pk>/", dashboard.key_usage, name="key_usage"),
]
