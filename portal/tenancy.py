"""Which tenant a portal request acts for, and what the user may do there.

A user belongs to tenants through ``Membership`` rows with a role: owner, admin or member.
The tenant a page shows is the one chosen in the header's switcher (kept in the session),
else the user's first. Every portal view takes its tenant from ``request.tenant`` (set by
``TenantMiddleware``) and its objects through selectors filtered by that tenant, so an id
from another tenant is a 404, never a leak.

Roles:
    owner   everything, including members and the tenant's settings
    admin   everything but removing or demoting owners (both see the activity log)
    member  reads everything; creates and changes keys only when the tenant allows it
            (``Tenant.members_can_create_keys``), and then only their own keys
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.utils.translation import gettext as _

from keys.models import Membership, Tenant

SESSION_KEY = "portal_tenant_id"
Role = Membership.Role
RANK = {Role.MEMBER: 0, Role.ADMIN: 1, Role.OWNER: 2}


def memberships(user: Any) -> list[Membership]:
    if not getattr(user, "is_authenticated", False):
        return []
    return list(Membership.objects.filter(user=user).select_related("tenant")
                .order_by("tenant__name"))


class TenantMiddleware:
    """Sets ``request.membership`` and ``request.tenant`` (None when the user has none)
    lazily: pages that need no tenant (login, the admin) never query for it."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request._portal_memberships = None  # type: ignore[attr-defined]
        return self.get_response(request)


def current_memberships(request: HttpRequest) -> list[Membership]:
    cached = getattr(request, "_portal_memberships", None)
    if cached is None:
        cached = memberships(request.user)
        request._portal_memberships = cached  # type: ignore[attr-defined]
    return cached


def current_membership(request: HttpRequest) -> Membership | None:
    mine = current_memberships(request)
    if not mine:
        return None
    chosen = request.session.get(SESSION_KEY)
    for membership in mine:
        if membership.tenant_id == chosen:
            return membership
    return mine[0]


def switch_tenant(request: HttpRequest, tenant_id: int) -> bool:
    """Make ``tenant_id`` the current tenant, if the user is a member. False otherwise."""
    if any(m.tenant_id == tenant_id for m in current_memberships(request)):
        request.session[SESSION_KEY] = tenant_id
        return True
    return False


def can(membership: Membership, action: str) -> bool:
    """The one place roles are decided. Actions: ``view``, ``manage_keys`` (create, change
    any key), ``own_keys`` (create and change one's own keys), ``manage_members``,
    ``manage_tenant`` (settings, alerts), ``redeem``, ``view_audit`` (the activity log)."""
    rank = RANK[Role(membership.role)]
    if action == "view":
        return True
    if action == "own_keys":
        return rank >= RANK[Role.ADMIN] or membership.tenant.members_can_create_keys
    if action in ("manage_keys", "manage_members", "redeem", "view_audit"):
        return rank >= RANK[Role.ADMIN]
    if action == "manage_tenant":
        return rank >= RANK[Role.OWNER]
    raise ValueError(f"unknown action {action!r}")


def can_change_key(membership: Membership, key: Any) -> bool:
    """Admins and owners change any key of the tenant; a member, when the tenant lets
    members create keys, only the keys they created."""
    if can(membership, "manage_keys"):
        return True
    return can(membership, "own_keys") and key.created_by_id == membership.user_id


def portal_view(action: str = "view") -> Callable[[Callable[..., HttpResponse]],
                                                 Callable[..., HttpResponse]]:
    """Decorator for every portal view: login required, a tenant chosen (404 without one),
    ``request.tenant`` and ``request.membership`` set, and the role allowed ``action``
    (403 otherwise)."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @login_required
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            membership = current_membership(request)
            if membership is None:
                raise Http404(_("You are not a member of any tenant yet."))
            if not can(membership, action):
                raise PermissionDenied(_("Your role in this tenant does not allow this."))
            request.membership = membership  # type: ignore[attr-defined]
            request.tenant = membership.tenant  # type: ignore[attr-defined]
            return view(request, *args, **kwargs)

        return wrapper

    return decorate


def portal_context(request: HttpRequest) -> dict[str, Any]:
    """For the header: the user's tenants (the switcher), the current one and its role."""
    path = request.path
    if not path.startswith(("/portal", "/accounts")) or not request.user.is_authenticated:
        return {}
    membership = current_membership(request)
    return {
        "portal_memberships": current_memberships(request),
        "portal_membership": membership,
        "portal_tenant": membership.tenant if membership else None,
    }


def tenant_of(request: HttpRequest) -> Tenant:
    return request.tenant  # type: ignore[attr-defined]
