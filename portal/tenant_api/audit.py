"""``GET /api/v1/audit``: the caller's tenant's audit log, with the portal's filters and
cursor pages (``portal.selectors.audit``). Owners and admins only, like the portal's
Activity page; a member's token gets 403.

After the tenant API's authentication ``request.auth`` carries ``.tenant``, ``.user``,
``.role`` ("owner" | "admin" | "member") and ``.can_write``; this router reads only
``.tenant`` and ``.role``, so a tenant's entries are all it can ever return.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from django.http import HttpRequest
from ninja import Field, Query, Router, Schema

from portal.selectors import audit as sel
from portal.tenant_api.auth import caller_of
from portal.tenant_api.common import NO_NUL
from portal.tenant_api.errors import ERRORS, ApiError

router = Router(tags=["audit"])

ObjectType = Literal["tenant", "member", "invitation", "key", "token", "balance",
                     "redemption_code"]
Action = Literal["create", "update", "delete"]
SurfaceName = Literal["portal", "tenant-api", "ops-api", "admin", "cli", "system"]


class AuditFilters(Schema):
    object_type: ObjectType | None = Field(None, description="What the change was about.")
    action: Action | None = None
    actor: str | None = Field(None, max_length=200, pattern=NO_NUL,
                              description="The actor's email, or part of who did it.")
    surface: SurfaceName | None = Field(None, description="Where the change came from.")
    date_from: date | None = Field(None, description="First day (server time zone).")
    date_to: date | None = Field(None, description="Last day, included.")
    cursor: str | None = Field(None, pattern=NO_NUL,
                               description="next_cursor or prev_cursor of a page.")
    limit: int = Field(sel.PAGE_SIZE, ge=1, le=sel.MAX_PAGE_SIZE)


class AuditEntryOut(Schema):
    id: int
    timestamp: datetime
    action: str
    object_type: str
    object_id: str
    object_repr: str
    changes: dict[str, Any] = Field(
        description="field -> [before, after]; secrets and hashes show as (hidden).")
    actor: str = Field(description="Who: an email, a token (masked), cli (os user), system.")
    actor_kind: str = Field(description="user, token, cli, system or anonymous.")
    actor_email: str
    surface: str
    remote_addr: str | None


class AuditPage(Schema):
    items: list[AuditEntryOut]
    next_cursor: str | None = Field(description="Older entries; null on the last page.")
    prev_cursor: str | None = Field(description="Newer entries; null on the newest page.")


@router.get("/audit", response={200: AuditPage, **ERRORS},
            summary="The tenant's audit log, newest first (owners and admins)")
def audit_log(request: HttpRequest, filters: Query[AuditFilters]) -> dict[str, Any]:
    caller = caller_of(request)
    caller.require("view_audit")
    if filters.date_from and filters.date_to and filters.date_from > filters.date_to:
        raise ApiError(400, "bad_request", "date_to is before date_from.")
    cursor = None
    if filters.cursor:
        try:
            cursor = sel.Cursor.decode(filters.cursor)
        except sel.BadCursor:
            raise ApiError(400, "bad_cursor",
                           "This cursor is not valid; start again without one.") from None
    rows = sel.filtered(caller.tenant, object_type=filters.object_type, action=filters.action,
                        actor=filters.actor, surface=filters.surface,
                        date_from=filters.date_from, date_to=filters.date_to)
    page = sel.page(rows, cursor, size=filters.limit)
    return {"items": [sel.entry_dict(entry) for entry in page.rows],
            "next_cursor": page.older, "prev_cursor": page.newer}
