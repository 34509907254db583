"""Reads of the balance page: the balance, what is available now, and the ledger (filtered,
keyset-paginated, or streamed whole for the CSV export). Every query is filtered by the
tenant it is given."""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django.db.models import Q, QuerySet

from billing.models import LedgerEntry
from billing.rollups import day_bounds
from keys.models import Tenant
from keys.money import from_micro

log = logging.getLogger(__name__)

PAGE_SIZE = 50


def available(tenant: Tenant) -> Decimal | None:
    """Balance less what requests in flight have reserved, from the limiter's account (None
    when the account is not loaded, i.e. no request has used it since the limiter started,
    or when the limiter cannot be read)."""
    from keys import limits

    try:
        units = limits.limiter().available("tenant", tenant.pk)
    except Exception as exc:  # Redis away: the page still shows the balance
        log.warning("available balance of tenant %s unreadable: %s", tenant.pk, exc)
        return None
    return None if units is None else from_micro(units)


@dataclass(frozen=True)
class LedgerFilter:
    kind: str = ""
    date_from: date | None = None
    date_to: date | None = None  # inclusive

    @classmethod
    def from_query(cls, params: Any) -> LedgerFilter:
        kind = params.get("kind", "")
        if kind not in LedgerEntry.Kind.values:
            kind = ""
        return cls(kind=kind, date_from=_date(params.get("from")),
                   date_to=_date(params.get("to")))

    def as_query(self) -> dict[str, str]:
        out = {}
        if self.kind:
            out["kind"] = self.kind
        if self.date_from:
            out["from"] = self.date_from.isoformat()
        if self.date_to:
            out["to"] = self.date_to.isoformat()
        return out


def _date(text: str | None) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


def ledger(tenant: Tenant, flt: LedgerFilter) -> QuerySet[LedgerEntry]:
    qs = LedgerEntry.objects.filter(tenant=tenant)
    if flt.kind:
        qs = qs.filter(kind=flt.kind)
    if flt.date_from:
        qs = qs.filter(created_at__gte=day_bounds(flt.date_from)[0])
    if flt.date_to:
        qs = qs.filter(created_at__lt=day_bounds(flt.date_to)[1])
    return qs.order_by("-created_at", "-id")


def encode_cursor(entry: LedgerEntry) -> str:
    raw = f"{entry.created_at.isoformat()}|{entry.pk}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int] | None:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, pk = raw.split("|")
        parsed = datetime.fromisoformat(moment)
        if parsed.tzinfo is None:
            return None
        return parsed, int(pk)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None


def ledger_page(tenant: Tenant, flt: LedgerFilter, after: str | None = None,
                size: int = PAGE_SIZE) -> tuple[list[LedgerEntry], str | None]:
    """One page of the filtered ledger, newest first, after the ``after`` cursor; and the
    cursor of the next page (None on the last). Keyset: as fast on page 1000 as on 1."""
    qs = ledger(tenant, flt)
    position = decode_cursor(after) if after else None
    if position is not None:
        moment, pk = position
        qs = qs.filter(Q(created_at__lt=moment) | Q(created_at=moment, id__lt=pk))
    rows = list(qs.select_related("created_by")[:size + 1])
    more = len(rows) > size
    rows = rows[:size]
    return rows, (encode_cursor(rows[-1]) if more and rows else None)


def ledger_rows(tenant: Tenant, flt: LedgerFilter) -> Iterator[LedgerEntry]:
    """The whole filtered ledger, read in chunks (a server-side cursor on PostgreSQL), for
    the streamed export: constant memory whatever its length."""
    return ledger(tenant, flt).iterator(chunk_size=2000)
