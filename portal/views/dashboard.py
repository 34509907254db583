"""The dashboard (``/portal/``) and one key's usage (``/portal/dashboard/keys/<id>/``): cards,
charts and top keys from the rollups (portal.selectors.dashboard), live updates over the
tenant's WebSocket (portal.live; static/portal/live.js and dashboard.js)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from keys.models import ApiKey
from portal.selectors.dashboard import available_balance, overview
from portal.tenancy import portal_view


@portal_view()
def dashboard(request: HttpRequest) -> HttpResponse:
    tenant = request.tenant  # type: ignore[attr-defined]
    ov = overview(tenant)
    return render(request, "portal/dashboard.html", {
        "ov": ov,
        "balance": tenant.balance,
        "available": available_balance(tenant),
        "chart_data": ov.chart_data(),
        "top_keys": ov.top_keys(),
    })


@portal_view()
def key_usage(request: HttpRequest, pk: int) -> HttpResponse:
    """One key's charts and figures: a page of its own, or (htmx) just the panel the key's
    page includes (templates/portal/keys/_usage.html)."""
    key = get_object_or_404(ApiKey, pk=pk, tenant=request.tenant)  # type: ignore[attr-defined]
    template = ("portal/keys/_usage.html" if getattr(request, "htmx", False)
                else "portal/key_usage.html")
    return render(request, template, {"key": key})
