from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest
from django.shortcuts import redirect
from django.urls import include, path, re_path
from django.utils.translation import gettext_lazy

from portal.api import api
from portal.tenant_api import api as tenant_api
from portal.tenant_api import unknown_url

admin.site.site_header = gettext_lazy("Turnpike administration")
admin.site.site_title = "Turnpike"

def home(request: HttpRequest) -> object:
    """The site root: the portal for a logged-in user, the login page for anyone else."""
    return redirect("portal:dashboard" if request.user.is_authenticated else "account_login")


urlpatterns = [
    path("", home, name="home"),
    path("accounts/", include("allauth.urls")),
    path("i18n/", include("django.conf.urls.i18n")),
    path("portal/", include("portal.portal_urls")),
    path("admin/", admin.site.urls),
    path("api/v1/", tenant_api.urls),
    re_path(r"^api/v1/", unknown_url),  # the API's 404 shape for any other path
    path("api/ops/", include("portal.ops.urls")),
    path("api/", api.urls),  # deprecated: /api/balance, /api/redeem, /api/ledger
]
