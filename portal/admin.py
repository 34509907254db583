"""The admin's two "Groups" told apart: Django's auth groups become "Permission groups"
(who may do what in this admin) and Turnpike's key groups "Key groups (plans)" (models,
limits and price multiplier of keys). Labels only, in the admin's index, sidebar and
page titles: the models keep their verbose names, so no migration is needed."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin as AuthGroupAdmin
from django.contrib.auth.models import Group as AuthGroup
from django.http import HttpRequest, HttpResponse
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

import keys.admin  # noqa: F401  (registers keys.Group first, so it can be re-registered)
from keys.admin import GroupAdmin as KeyGroupAdminBase
from keys.models import Group as KeyGroup

LABELS = {
    ("auth", "Group"): (_("Permission group"), _("Permission groups")),
    ("keys", "Group"): (_("Key group"), _("Key groups (plans)")),
}


class _Titled:
    label_key: tuple[str, str]

    def changelist_view(self, request: HttpRequest,
                        extra_context: dict[str, Any] | None = None) -> HttpResponse:
        singular, plural = LABELS[self.label_key]
        title = gettext("Select %(name)s to change") % {"name": str(singular).lower()}
        return super().changelist_view(  # type: ignore[misc]
            request, {"title": title, **(extra_context or {})})


class PermissionGroupAdmin(_Titled, AuthGroupAdmin):
    label_key = ("auth", "Group")


class KeyGroupAdmin(_Titled, KeyGroupAdminBase):
    label_key = ("keys", "Group")


for model, model_admin in ((AuthGroup, PermissionGroupAdmin), (KeyGroup, KeyGroupAdmin)):
    if admin.site.is_registered(model):
        admin.site.unregister(model)
    admin.site.register(model, model_admin)

_get_app_list = admin.site.get_app_list


def get_app_list(request: HttpRequest, app_label: str | None = None) -> list[dict[str, Any]]:
    apps = _get_app_list(request, app_label)
    for app in apps:
        for entry in app["models"]:
            labels = LABELS.get((app["app_label"], entry["object_name"]))
            if labels:
                entry["name"] = labels[1]
    return apps


admin.site.get_app_list = get_app_list  # type: ignore[method-assign]
