"""The Activity page: the current tenant's audit log (who changed what, when, from where),
filtered, in keyset pages newest first; owners and admins only. Reads go through
``portal.selectors.audit``, always from ``request.tenant``'s entries."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.cache import patch_vary_headers
from django.utils.http import urlencode
from django.utils.translation import gettext as _

from portal.selectors import audit as sel
from portal.tenancy import portal_view, tenant_of


def _context(request: HttpRequest, form: sel.AuditFilterForm) -> dict[str, Any]:
    filters = form.query_items()
    context: dict[str, Any] = {"form": form, "filters": urlencode(filters), "page": None}
    if not form.is_valid():
        return context
    cursor = None
    text = request.GET.get("cursor", "")
    if text:
        try:
            cursor = sel.Cursor.decode(text)
        except sel.BadCursor:
            form.add_error(None, _("This page link is not valid any more; start again from "
                                   "the newest changes."))
            return context
    page = sel.page(sel.filtered(tenant_of(request), **form.cleaned_data), cursor)
    context["page"] = page
    context["rows"] = [_row(entry) for entry in page.rows]
    context["older_url"] = "?" + urlencode([*filters, ("cursor", page.older)]) \
        if page.older else ""
    context["newer_url"] = "?" + urlencode([*filters, ("cursor", page.newer)]) \
        if page.newer else ""
    return context


def _row(entry: Any) -> dict[str, Any]:
    row = sel.entry_dict(entry)
    row["object_label"] = sel.OBJECT_LABELS.get(row["object_type"], row["object_type"])
    row["action_label"] = sel.ACTION_LABELS.get(row["action"], row["action"])
    row["surface_label"] = sel.SURFACES.get(row["surface"], row["surface"])
    row["change_list"] = [(field, values[0], values[1]) for field, values in
                          row["changes"].items() if isinstance(values, list) and
                          len(values) == 2]
    return row


@portal_view("view_audit")
def activity(request: HttpRequest) -> HttpResponse:
    form = sel.AuditFilterForm(request.GET)
    context = _context(request, form)
    if request.htmx and not request.htmx.boosted:  # type: ignore[attr-defined]
        response = render(request, "portal/audit/_results.html", context)
    else:
        response = render(request, "portal/audit/activity.html", context)
    patch_vary_headers(response, ("HX-Request",))
    return response
