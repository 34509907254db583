"""The usage log: the filtered request list (htmx partial on filter changes), its totals,
the streamed CSV export and one request's detail page. Reads go through
``portal.selectors.usage``, always from ``request.tenant``'s rows."""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator, Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.utils.http import urlencode
from django.utils.translation import gettext as _

from gateway.capture import display as capture_display
from portal.selectors import usage as sel
from portal.tenancy import can, portal_view, tenant_of


class Echo:
    """A file-like object whose ``write`` returns what it was given (csv writer → bytes)."""

    def write(self, value: str) -> str:
        return value


def _form(request: HttpRequest) -> sel.UsageFilterForm:
    return sel.UsageFilterForm(request.GET, tenant=tenant_of(request))


def _context(request: HttpRequest, form: sel.UsageFilterForm) -> dict[str, Any]:
    filters = form.query_items()
    context: dict[str, Any] = {"form": form, "filters": urlencode(filters), "page": None,
                               "live": False}
    if not form.is_valid():
        return context
    cursor = None
    text = request.GET.get("cursor", "")
    if text:
        try:
            cursor = sel.Cursor.decode(text)
        except sel.BadCursor:
            form.add_error(None, _("This page link is not valid any more; start again from "
                                   "the newest requests."))
            return context
    rows = sel.filtered(tenant_of(request), form.cleaned_data)
    page = sel.page(rows, cursor, windowed=sel.needs_windows(form.cleaned_data))
    context["page"] = page
    context["live"] = page.first and not form.active
    context["older_url"] = "?" + urlencode([*filters, ("cursor", page.older)]) \
        if page.older else ""
    context["newer_url"] = "?" + urlencode([*filters, ("cursor", page.newer)]) \
        if page.newer else ""
    return context


@portal_view()
def usage_log(request: HttpRequest) -> HttpResponse:
    form = _form(request)
    context = _context(request, form)
    if request.htmx and not request.htmx.boosted:  # type: ignore[attr-defined]
        response = render(request, "portal/usage/_results.html", context)
    else:
        context["models"] = sel.models_seen(tenant_of(request))
        if request.GET.get("totals") and form.is_valid():  # the no-JS way to totals
            context["totals"] = sel.totals(sel.filtered(tenant_of(request),
                                                        form.cleaned_data))
        response = render(request, "portal/usage/log.html", context)
    patch_vary_headers(response, ("HX-Request",))
    return response


@portal_view()
def usage_totals(request: HttpRequest) -> HttpResponse:
    """Requests, tokens and cost of the filtered range (htmx, loaded after the table)."""
    form = _form(request)
    totals = sel.totals(sel.filtered(tenant_of(request), form.cleaned_data)) \
        if form.is_valid() else None
    return render(request, "portal/usage/_totals.html", {"totals": totals})


async def _async_blocks(blocks: Iterator[str]) -> AsyncIterator[str]:
    step = sync_to_async(lambda: next(blocks, None), thread_sensitive=True)
    while (block := await step()) is not None:
        yield block


@portal_view()
def usage_export(request: HttpRequest) -> HttpResponse:
    """CSV of the whole filtered range, streamed in keyset chunks (constant memory)."""
    form = _form(request)
    if not form.is_valid():
        problems = "; ".join(f"{field}: {' '.join(errors)}" if field != "__all__"
                             else " ".join(errors) for field, errors in form.errors.items())
        return HttpResponse(_("Invalid filters: %(problems)s") % {"problems": problems},
                            status=400, content_type="text/plain; charset=utf-8")
    rows = sel.filtered(tenant_of(request), form.cleaned_data)
    writer = csv.writer(Echo())

    sliced = sel.needs_windows(form.cleaned_data)
    floor = sel.oldest(tenant_of(request)) if sliced else None
    if floor is not None and form.cleaned_data.get("date_from"):
        floor = max(floor, sel.local_day_start(form.cleaned_data["date_from"]))

    def blocks() -> Iterator[str]:  # one block of CSV text per keyset chunk
        for chunk in sel.export_chunks(rows, floor=floor, sliced=sliced):
            yield "".join(writer.writerow(fields) for fields in chunk)

    content: Iterator[str] | AsyncIterator[str] = blocks()
    if isinstance(request, ASGIRequest):
        # Under ASGI (daphne) Django would read a sync iterator into a list before sending
        # it; an async iterator that fetches each chunk in the request's sync thread keeps
        # the export streamed there too.
        content = _async_blocks(blocks())
    stamp = timezone.localtime().strftime("%Y%m%d-%H%M%S")
    response = StreamingHttpResponse(content, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="usage-{stamp}.csv"'
    response["Cache-Control"] = "no-store"
    response["X-Accel-Buffering"] = "no"  # let a proxy pass chunks on as they come
    return response


@portal_view()
def usage_detail(request: HttpRequest, request_id: str) -> HttpResponse:
    log = sel.request_detail(tenant_of(request), request_id)
    if log is None:
        raise Http404(_("No such request in this tenant."))
    staff = bool(request.user.is_staff)
    # Captured bodies (issue 15): the tenant's owners and staff, never other members.
    sees_bodies = staff or can(request.membership, "manage_tenant")  # type: ignore[attr-defined]
    exchange = sel.capture_of(tenant_of(request), request_id) if sees_bodies else None
    context: dict[str, Any] = {
        "log": log, "key_masked": log.key.masked if log.key else (
            f"{log.key_prefix}…" if log.key_prefix else ""),
        "status_class": sel.status_class(log.status_code, log.error_code),
        "breakdown": sel.cost_breakdown(log),
        "staff": staff,
        "attempts": sel.attempts_for(log, staff=staff),
        "sees_bodies": sees_bodies, "capture": None,
    }
    if exchange is not None:  # the partial's context: the exchange as "capture", its bodies
        context.update(capture_display.context(exchange))
    return render(request, "portal/usage/detail.html", context)
