"""The user portal's URLs, under /portal/ (namespace ``portal``)."""

from __future__ import annotations

from django.urls import path

from portal.views import base, dashboard, members

app_name = "portal"

urlpatterns = [
    path("", dashboard.dashboard, name="dashboard"),
    path("switch/", base.switch, name="switch"),
    path("invitation/<str:token>/", base.invitation, name="invitation"),
    # Accounts and membership
    path("welcome/", members.welcome, name="welcome"),
    path("members/", members.members, name="members"),
    path("members/invite/", members.invite, name="member_invite"),
    path("members/leave/", members.leave, name="member_leave"),
    path("members/<int:pk>/role/", members.set_role, name="member_role"),
    path("members/<int:pk>/remove/", members.remove, name="member_remove"),
    path("members/invitations/<int:pk>/revoke/", members.revoke, name="invitation_revoke"),
    path("settings/", members.tenant_settings, name="settings"),
]
