"""Membership rules: who may invite, change roles, remove members and leave a tenant.

Used by the portal's members page and by ``manage.py member`` / ``manage.py user``. An
``actor`` is the membership of whoever acts in the portal; ``None`` is the operator (the
CLI), who is not bound by roles but still by the last-owner rule.

Rules:
- owners and admins invite, revoke invitations, change roles and remove members;
- an admin cannot remove or demote an owner, nor make anyone an owner (nor invite one);
- anyone may leave;
- a tenant always keeps at least one owner: its last owner can neither leave, be removed,
  nor be demoted.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from keys.models import (
    MAX_RETENTION_DAYS,
    Invitation,
    Membership,
    ResponseStorage,
    Tenant,
    capture_window_error,
)
from keys.services import ApplicationError

Role = Membership.Role
RANK = {Role.MEMBER: 0, Role.ADMIN: 1, Role.OWNER: 2}
ROLE_LABELS = {Role.OWNER: gettext_lazy("Owner"), Role.ADMIN: gettext_lazy("Admin"),
               Role.MEMBER: gettext_lazy("Member")}


class MembershipError(ApplicationError):
    """A membership change the rules forbid; the message is shown to the user."""


class NotAllowed(MembershipError):
    """The actor's role does not allow this (a 403 in the portal)."""


def role_of(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise MembershipError(_("Unknown role %(role)r: use owner, admin or member.")
                              % {"role": value}) from None


def _is_manager(actor: Membership | None) -> bool:
    return actor is None or RANK[Role(actor.role)] >= RANK[Role.ADMIN]


def _is_owner(actor: Membership | None) -> bool:
    return actor is None or actor.role == Role.OWNER


def roles_assignable(actor: Membership | None) -> list[Role]:
    """The roles ``actor`` may give (invite with, or change someone to)."""
    if _is_owner(actor):
        return [Role.OWNER, Role.ADMIN, Role.MEMBER]
    if _is_manager(actor):
        return [Role.ADMIN, Role.MEMBER]
    return []


def _require_manager(actor: Membership | None) -> None:
    if not _is_manager(actor):
        raise NotAllowed(_("Only owners and admins manage members."))


def _check_same_tenant(actor: Membership | None, tenant_id: int) -> None:
    if actor is not None and actor.tenant_id != tenant_id:
        raise NotAllowed(_("That belongs to another tenant."))


def _owners_locked(tenant_id: int) -> int:
    """The number of owners, with their rows locked for the rest of the transaction (two
    owners demoting each other at once cannot leave the tenant without one)."""
    return len(list(Membership.objects.select_for_update()
                    .filter(tenant_id=tenant_id, role=Role.OWNER).values_list("pk", flat=True)))


def _keep_an_owner(membership: Membership, what: str) -> None:
    if membership.role == Role.OWNER and _owners_locked(membership.tenant_id) <= 1:
        messages = {
            "leave": _("You are the last owner of %(tenant)s: make someone else an owner "
                       "before leaving."),
            "remove": _("%(user)s is the last owner of %(tenant)s and cannot be removed: make "
                        "someone else an owner first."),
            "demote": _("%(user)s is the last owner of %(tenant)s and cannot be demoted: make "
                        "someone else an owner first."),
        }
        raise MembershipError(messages[what] % {"tenant": membership.tenant.name,
                                                "user": membership.user.email
                                                or membership.user.get_username()})


def normalize_email(email: str) -> str:
    email = (email or "").strip()
    try:
        validate_email(email)
    except ValidationError:
        raise MembershipError(_("%(email)r is not a valid email address.")
                              % {"email": email}) from None
    return email.lower()  # as allauth stores and looks up addresses


def user_by_email(email: str) -> Any | None:
    return get_user_model().objects.filter(email__iexact=email.strip()).order_by("pk").first()


@transaction.atomic
def member_add(*, tenant: Tenant, user: Any, role: str = Role.MEMBER,
               actor: Membership | None = None) -> tuple[Membership, bool]:
    """Make ``user`` a member of ``tenant`` with ``role``; an existing member gets the role
    (the rules of ``member_set_role`` apply). Returns (membership, created)."""
    _require_manager(actor)
    _check_same_tenant(actor, tenant.pk)
    new_role = role_of(role)
    existing = Membership.objects.select_related("tenant", "user").filter(
        tenant=tenant, user=user).first()
    if existing is not None:
        return member_set_role(membership=existing, role=new_role, actor=actor), False
    if new_role not in roles_assignable(actor):
        raise NotAllowed(_("Only owners can make someone an owner."))
    return Membership.objects.create(tenant=tenant, user=user, role=new_role), True


@transaction.atomic
def member_set_role(*, membership: Membership, role: str,
                    actor: Membership | None = None) -> Membership:
    _require_manager(actor)
    _check_same_tenant(actor, membership.tenant_id)
    new_role = role_of(role)
    if new_role == membership.role:
        return membership
    if not _is_owner(actor):
        if membership.role == Role.OWNER:
            raise NotAllowed(_("Only owners can change the role of an owner."))
        if new_role == Role.OWNER:
            raise NotAllowed(_("Only owners can make someone an owner."))
    if membership.role == Role.OWNER:
        _keep_an_owner(membership, "demote")
    membership.role = new_role
    membership.save(update_fields=["role"])
    return membership


@transaction.atomic
def member_remove(*, membership: Membership, actor: Membership | None = None) -> None:
    """Remove a member (or, when ``actor`` is that member, leave)."""
    if actor is not None and actor.pk == membership.pk:
        member_leave(membership=membership)
        return
    _require_manager(actor)
    _check_same_tenant(actor, membership.tenant_id)
    if membership.role == Role.OWNER and not _is_owner(actor):
        raise NotAllowed(_("Only owners can remove an owner."))
    _keep_an_owner(membership, "remove")
    membership.delete()


@transaction.atomic
def member_leave(*, membership: Membership) -> None:
    _keep_an_owner(membership, "leave")
    membership.delete()


@transaction.atomic
def invitation_create(*, tenant: Tenant, email: str, role: str = Role.MEMBER,
                      actor: Membership | None = None, invited_by: Any = None) -> Invitation:
    """A new pending invitation (earlier pending ones to the same address are withdrawn, so
    only the newest link works). Sending the email is the caller's job."""
    _require_manager(actor)
    _check_same_tenant(actor, tenant.pk)
    new_role = role_of(role)
    if new_role not in roles_assignable(actor):
        raise NotAllowed(_("Only owners can invite an owner."))
    email = normalize_email(email)
    if Membership.objects.filter(tenant=tenant, user__email__iexact=email).exists():
        raise MembershipError(_("%(email)s is already a member of %(tenant)s.")
                              % {"email": email, "tenant": tenant.name})
    now = timezone.now()
    for earlier in pending(tenant).filter(email__iexact=email):  # saved one by one: audited
        earlier.revoked_at = now
        earlier.save(update_fields=["revoked_at"])
    return Invitation.objects.create(
        tenant=tenant, email=email, role=new_role,
        invited_by=invited_by if invited_by is not None else getattr(actor, "user", None))


def invitation_revoke(*, invitation: Invitation, actor: Membership | None = None) -> None:
    _require_manager(actor)
    _check_same_tenant(actor, invitation.tenant_id)
    if invitation.accepted_at or invitation.revoked_at:
        raise MembershipError(_("This invitation is no longer pending."))
    invitation.revoked_at = timezone.now()
    invitation.save(update_fields=["revoked_at"])


def pending(tenant: Tenant) -> Any:
    """The tenant's invitations that are neither accepted nor revoked (expired ones
    included: they are listed as expired until revoked)."""
    return Invitation.objects.filter(tenant=tenant, accepted_at__isnull=True,
                                     revoked_at__isnull=True)


class Unchanged:
    """A setting whose None means something (body capture: off) left as it is."""


UNCHANGED = Unchanged()


def tenant_settings_update(*, tenant: Tenant, members_can_create_keys: bool,
                           low_balance_threshold: Decimal | None,
                           actor: Membership | None = None,
                           response_storage: str | None = None,
                           response_retention_days: int | None = None,
                           capture_bodies_until: datetime | None | Unchanged = UNCHANGED
                           ) -> Tenant:
    """The settings an owner changes (portal, tenant API). The response storage ones are
    kept when not given (None); body capture when not given (UNCHANGED), a new window that
    ends in the past is refused (None switches capture off)."""
    if actor is not None and (actor.tenant_id != tenant.pk or actor.role != Role.OWNER):
        raise NotAllowed(_("Only owners change the tenant's settings."))
    if low_balance_threshold is not None and low_balance_threshold < 0:
        raise MembershipError(_("The low-balance threshold cannot be negative."))
    if response_storage is not None and response_storage not in ResponseStorage.values:
        raise MembershipError(_("Response storage is either on or off."))
    if response_retention_days is not None and not \
            1 <= response_retention_days <= MAX_RETENTION_DAYS:
        raise MembershipError(_("Keep stored responses from 1 to %(days)s days.")
                              % {"days": MAX_RETENTION_DAYS})
    if isinstance(capture_bodies_until, datetime) and \
            capture_bodies_until != tenant.capture_bodies_until:
        if capture_bodies_until <= timezone.now():
            raise MembershipError(_("A body capture window must end in the future (empty: "
                                    "capture off)."))
        error = capture_window_error(capture_bodies_until)
        if error:
            raise MembershipError(error)
    tenant.members_can_create_keys = members_can_create_keys
    tenant.low_balance_threshold = low_balance_threshold
    fields = ["members_can_create_keys", "low_balance_threshold"]
    if response_storage is not None:
        tenant.response_storage = response_storage
        fields.append("response_storage")
    if response_retention_days is not None:
        tenant.response_retention_days = response_retention_days
        fields.append("response_retention_days")
    if not isinstance(capture_bodies_until, Unchanged):
        tenant.capture_bodies_until = capture_bodies_until
        fields.append("capture_bodies_until")
    # Through the model: the audit log records it and keys.signals evicts the snapshots of
    # the tenant's keys (their store_days).
    tenant.save(update_fields=fields)
    return tenant
