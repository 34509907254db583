"""``GET /me``: who the caller is, for which tenant, with what role and rights."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.http import HttpRequest
from ninja import Field, Router, Schema

from portal import tenancy
from portal.tenant_api.auth import TENANT_HEADER, caller_of
from portal.tenant_api.errors import ERRORS

router = Router(tags=["me"])

ACTIONS = ("manage_keys", "own_keys", "manage_members", "manage_tenant", "redeem")


class TenantRef(Schema):
    id: int
    name: str
    role: str | None


class TokenRef(Schema):
    id: int
    name: str
    masked: str
    scope: str
    expires_at: datetime | None


class MeOut(Schema):
    auth: str = Field(description="token, session or api_key.")
    user: str | None = Field(description="The user's email (none for an API key).")
    tenant: TenantRef
    membership_id: int | None
    can_write: bool
    can: dict[str, bool] = Field(description="What the role allows: " + ", ".join(ACTIONS))
    token: TokenRef | None
    api_key_id: int | None
    tenants: list[TenantRef] = Field(description=f"Every tenant of the user (choose one with "
                                     f"{TENANT_HEADER}).")


@router.get("/me", response={200: MeOut, **ERRORS}, summary="The caller and its tenant")
def me(request: HttpRequest) -> dict[str, Any]:
    caller = caller_of(request)
    token = caller.token
    return {
        "auth": caller.method,
        "user": caller.user.email if caller.user is not None else None,
        "tenant": {"id": caller.tenant.pk, "name": caller.tenant.name, "role": caller.role},
        "membership_id": caller.membership.pk if caller.membership else None,
        "can_write": caller.can_write,
        "can": {action: caller.can(action) and caller.can_write for action in ACTIONS},
        "token": {"id": token.pk, "name": token.name, "masked": token.masked,
                  "scope": token.scope, "expires_at": token.expires_at} if token else None,
        "api_key_id": caller.api_key.pk if caller.api_key else None,
        "tenants": [{"id": m.tenant_id, "name": m.tenant.name, "role": m.role}
                    for m in tenancy.memberships(caller.user)] if caller.user else [],
    }
