"""The balance page: balance and available, the ledger (filters, keyset pages, streamed
CSV export), redeeming a code, and the low-balance alert threshold."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from urllib.parse import urlencode

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST

from billing import redemption
from billing.models import LedgerEntry
from keys.models import MONEY, Tenant
from portal.selectors import balance as selectors
from portal.tenancy import can, portal_view

# The ledger's kinds, translatable (the model's choice labels are not, and changing them
# would take a migration).
KIND_LABELS = {
    LedgerEntry.Kind.TOPUP: gettext_lazy("Top-up"),
    LedgerEntry.Kind.CHARGE: gettext_lazy("Charge"),
    LedgerEntry.Kind.REFUND: gettext_lazy("Refund"),
    LedgerEntry.Kind.ADJUSTMENT: gettext_lazy("Adjustment"),
    LedgerEntry.Kind.REDEMPTION: gettext_lazy("Redemption code"),
}

REDEEM_ERRORS = {
    "invalid": lambda: _("This is not a valid redemption code. Check it and try again: "
                         "codes look like tp-rc-XXXX-XXXX-XXXX-XXXX-XXXX-XXXX."),
    "redeemed": lambda: _("This redemption code has already been used."),
    "expired": lambda: _("This redemption code has expired."),
}


@portal_view()
def balance(request: HttpRequest) -> HttpResponse:
    tenant: Tenant = request.tenant  # type: ignore[attr-defined]
    tenant.refresh_from_db(fields=["balance", "low_balance_threshold"])
    flt = selectors.LedgerFilter.from_query(request.GET)
    after = request.GET.get("after") or None
    rows, next_cursor = selectors.ledger_page(tenant, flt, after)
    for row in rows:
        row.kind_label = KIND_LABELS.get(row.kind, row.get_kind_display())  # type: ignore[attr-defined]
    query = flt.as_query()
    membership = request.membership  # type: ignore[attr-defined]
    context = {
        "balance": tenant.balance,
        "available": selectors.available(tenant),
        "threshold": tenant.low_balance_threshold,
        "rows": rows,
        "filter": flt,
        "kinds": [(kind, KIND_LABELS.get(kind, label))
                  for kind, label in LedgerEntry.Kind.choices],
        "paged": bool(after),
        "next_query": urlencode({**query, "after": next_cursor}) if next_cursor else "",
        "first_query": urlencode(query),
        "export_query": urlencode(query),
        "filtered": bool(query),
        "can_redeem": can(membership, "redeem"),
        "can_set_alert": can(membership, "manage_tenant"),
    }
    template = "portal/_ledger.html" if request.htmx else "portal/balance.html"  # type: ignore[attr-defined]
    return render(request, template, context)


class _Echo:
    def write(self, value: str) -> str:
        return value


def _safe(text: str) -> str:
    """A spreadsheet would run a cell starting with = + - @ as a formula."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@portal_view()
def export(request: HttpRequest) -> StreamingHttpResponse:
    """The whole filtered ledger as CSV, streamed in chunks (not one page, not in memory)."""
    tenant = request.tenant  # type: ignore[attr-defined]
    flt = selectors.LedgerFilter.from_query(request.GET)
    writer = csv.writer(_Echo())

    def lines() -> Iterator[str]:
        yield writer.writerow(["created_at", "kind", "amount", "reference", "note"])
        for entry in selectors.ledger_rows(tenant, flt):
            yield writer.writerow([entry.created_at.isoformat(), entry.kind,
                                   str(entry.amount), _safe(entry.reference),
                                   _safe(entry.note)])

    stamp = timezone.localtime().strftime("%Y%m%d-%H%M")
    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="ledger-{tenant.pk}-{stamp}.csv"'
    return response


@require_POST
@portal_view("redeem")
def redeem(request: HttpRequest) -> HttpResponse:
    tenant = request.tenant  # type: ignore[attr-defined]
    code = (request.POST.get("code") or "").strip()
    if not code:
        messages.error(request, _("Enter a redemption code."))
        return redirect("portal:balance")
    try:
        entry = redemption.redeem(code=code, tenant=tenant, user=request.user)
    except redemption.RedemptionError as exc:
        explain = REDEEM_ERRORS.get(exc.reason)
        messages.error(request, explain() if explain else str(exc))
    else:
        messages.success(request, _("Code redeemed: %(amount)s added to the balance.")
                         % {"amount": entry.amount})
    return redirect("portal:balance")


@require_POST
@portal_view("manage_tenant")
def alert(request: HttpRequest) -> HttpResponse:
    """Set (or clear, when empty) the low-balance alert threshold."""
    tenant = request.tenant  # type: ignore[attr-defined]
    text = (request.POST.get("threshold") or "").strip()
    value: Decimal | None = None
    if text:
        try:
            value = Decimal(text)
        except InvalidOperation:
            value = None
        limit = Decimal(10) ** (MONEY["max_digits"] - MONEY["decimal_places"])
        if value is None or not value.is_finite() or value < 0 or value >= limit:
            messages.error(request, _("The threshold must be a positive amount."))
            return redirect("portal:balance")
        value = value.quantize(Decimal("0.000001"))
    tenant.low_balance_threshold = value
    tenant.low_balance_alerted = False
    tenant.save(update_fields=["low_balance_threshold", "low_balance_alerted"])  # audited
    if value is None:
        messages.success(request, _("The low-balance alert is off."))
    else:
        messages.success(request, _("You will be emailed when the available balance falls "
                                    "below %(amount)s.") % {"amount": value})
    return redirect("portal:balance")
