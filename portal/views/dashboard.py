"""The dashboard (filled in by the dashboard work)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from portal.tenancy import portal_view


@portal_view()
def dashboard(request: HttpRequest) -> HttpResponse:
    return render(request, "portal/dashboard.html", {})
