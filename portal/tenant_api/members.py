"""Members and invitations, by the rules of ``keys.membership`` (the portal's members page
and ``manage.py member`` use the same): owners and admins invite, change roles and remove;
admins never touch owners; anyone may leave; the last owner stays. Invitations are emailed
by ``portal.invitations`` (the link is never in the answer: it is for the invitee)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from django.utils import timezone
from ninja import Field, Router, Schema, Status

from keys import membership as rules
from keys.models import Invitation, Membership
from portal import invitations
from portal.tenant_api.auth import caller_of
from portal.tenant_api.errors import ERRORS, ERRORS_409, ApiError

router = Router(tags=["members"])

RoleName = Literal["owner", "admin", "member"]


class MemberOut(Schema):
    id: int = Field(description="The membership's id.")
    user_id: int
    email: str
    role: str
    me: bool
    created_at: datetime


class RoleIn(Schema):
    role: RoleName


class InvitationIn(Schema):
    email: str = Field(min_length=3, max_length=254)
    role: RoleName = "member"


class InvitationOut(Schema):
    id: int
    email: str
    role: str
    invited_by: str | None
    created_at: datetime
    expires_at: datetime
    expired: bool


def member_out(m: Membership, me: Membership | None) -> dict[str, Any]:
    return {"id": m.pk, "user_id": m.user_id, "email": m.user.email, "role": m.role,
            "me": me is not None and m.pk == me.pk, "created_at": m.created_at}


def invitation_out(i: Invitation) -> dict[str, Any]:
    expires = i.created_at + invitations.max_age()
    return {"id": i.pk, "email": i.email, "role": i.role,
            "invited_by": i.invited_by.email if i.invited_by_id and i.invited_by else None,
            "created_at": i.created_at, "expires_at": expires,
            "expired": expires <= timezone.now()}


def _member(request: HttpRequest, member_id: int) -> Membership:
    caller = caller_of(request)
    caller.require()
    return get_object_or_404(Membership.objects.select_related("user", "tenant"),
                             pk=member_id, tenant=caller.tenant)


@router.get("/members", response={200: list[MemberOut], **ERRORS},
            summary="The tenant's members and their roles")
def member_list(request: HttpRequest) -> list[dict[str, Any]]:
    caller = caller_of(request)
    me = caller.require()
    rows = (Membership.objects.filter(tenant=caller.tenant).select_related("user")
            .order_by("user__email", "pk"))
    return [member_out(m, me) for m in rows]


@router.patch("/members/{member_id}", response={200: MemberOut, **ERRORS_409},
              summary="Change a member's role")
def member_role(request: HttpRequest, member_id: int, payload: RoleIn) -> dict[str, Any]:
    target = _member(request, member_id)
    actor = caller_of(request).require("manage_members")
    rules.member_set_role(membership=target, role=payload.role, actor=actor)
    return member_out(target, actor)


@router.delete("/members/{member_id}", response={204: None, **ERRORS_409},
               summary="Remove a member (your own membership: leave the tenant)")
def member_remove(request: HttpRequest, member_id: int) -> Status[None]:
    target = _member(request, member_id)
    me = caller_of(request).require()
    if target.pk == me.pk:
        rules.member_leave(membership=target)
    else:
        rules.member_remove(membership=target,
                            actor=caller_of(request).require("manage_members"))
    return Status(204, None)


@router.get("/invitations", response={200: list[InvitationOut], **ERRORS},
            summary="Pending invitations (owners and admins)")
def invitation_list(request: HttpRequest) -> list[dict[str, Any]]:
    caller = caller_of(request)
    caller.require("manage_members")
    return [invitation_out(i) for i in rules.pending(caller.tenant)
            .select_related("invited_by").order_by("-created_at")]


@router.post("/invitations", response={201: InvitationOut, **ERRORS_409},
             summary="Invite someone by email (the link goes to that address)")
def invitation_create(request: HttpRequest, payload: InvitationIn) -> Status[dict[str, Any]]:
    caller = caller_of(request)
    actor = caller.require("manage_members")
    try:
        email = rules.normalize_email(payload.email)
    except rules.MembershipError as exc:
        raise ApiError(422, "validation_error", str(exc)) from None
    invitation = rules.invitation_create(tenant=caller.tenant, email=email, role=payload.role,
                                         actor=actor, invited_by=caller.user)
    invitations.send(request, invitation)
    return Status(201, invitation_out(invitation))


@router.delete("/invitations/{invitation_id}", response={204: None, **ERRORS_409},
               summary="Withdraw a pending invitation")
def invitation_revoke(request: HttpRequest, invitation_id: int) -> Status[None]:
    caller = caller_of(request)
    actor = caller.require("manage_members")
    invitation = get_object_or_404(Invitation, pk=invitation_id, tenant=caller.tenant)
    rules.invitation_revoke(invitation=invitation, actor=actor)
    return Status(204, None)
