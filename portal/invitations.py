"""Invitations: a signed, expiring link that lets one email address join a tenant with a
role. An existing user who opens it (and logs in) just joins; a new one signs up, even
when ``PORTAL_SIGNUP=invite`` closes sign-up to everyone else.

The link carries the invitation's id signed with SECRET_KEY (``TimestampSigner``), so it
cannot be forged or altered, and it stops working after ``PORTAL_INVITATION_DAYS`` days, once
accepted, or once revoked.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core import signing
from django.db import transaction
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from keys.models import Invitation, Membership

SALT = "turnpike.invitation"
SESSION_KEY = "portal_invitation"


def max_age() -> timedelta:
    return timedelta(days=getattr(settings, "PORTAL_INVITATION_DAYS", 7))


def token_for(invitation: Invitation) -> str:
    return signing.TimestampSigner(salt=SALT).sign(str(invitation.pk))


def link_for(request: HttpRequest | None, invitation: Invitation) -> str:
    path = reverse("portal:invitation", args=[token_for(invitation)])
    return request.build_absolute_uri(path) if request is not None else path


def invitation_from_token(token: str) -> Invitation | None:
    """The open invitation a token names; None if forged, expired, used or revoked."""
    try:
        pk = signing.TimestampSigner(salt=SALT).unsign(token, max_age=max_age())
    except signing.BadSignature:
        return None
    invitation = Invitation.objects.select_related("tenant").filter(pk=pk).first()
    if invitation is None or invitation.accepted_at or invitation.revoked_at:
        return None
    return invitation


def pending_invitation(request: HttpRequest) -> Invitation | None:
    token = request.session.get(SESSION_KEY)
    return invitation_from_token(token) if token else None


@transaction.atomic
def accept(invitation: Invitation, user: object) -> Membership:
    """Join the tenant with the invitation's role (an existing member keeps the higher of
    the two roles) and close the invitation."""
    from portal.tenancy import RANK

    membership, created = Membership.objects.get_or_create(
        tenant=invitation.tenant, user=user, defaults={"role": invitation.role})
    if not created and RANK[Membership.Role(invitation.role)] > RANK[
            Membership.Role(membership.role)]:
        membership.role = invitation.role
        membership.save(update_fields=["role"])
    invitation.accepted_at = timezone.now()
    invitation.accepted_by = user  # type: ignore[assignment]
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    return membership


def is_for(invitation: Invitation, user: object) -> bool:
    """Whether ``user`` has the address the invitation was sent to (the link alone is not
    enough: a forwarded or leaked link does not let someone else join)."""
    from allauth.account.models import EmailAddress

    email = invitation.email.strip().lower()
    if (getattr(user, "email", "") or "").strip().lower() == email:
        return True
    return EmailAddress.objects.filter(user=user, email__iexact=email).exists()


def accept_pending(request: HttpRequest) -> Membership | None:
    """After a login or sign-up: accept the invitation the session holds, if any and if it
    was sent to this user's address, and make its tenant the current one."""
    from portal.tenancy import SESSION_KEY as TENANT_KEY

    invitation = pending_invitation(request)
    if invitation is None or not request.user.is_authenticated:
        return None
    if not is_for(invitation, request.user):
        return None
    membership = accept(invitation, request.user)
    request.session.pop(SESSION_KEY, None)
    request.session[TENANT_KEY] = invitation.tenant_id
    return membership


def send(request: HttpRequest | None, invitation: Invitation) -> None:
    """Email the invitation's link (Django's email backend: console by default, SMTP when
    configured), in the language of the page that sent it."""
    from django.core.mail import send_mail
    from django.template.loader import render_to_string

    from keys.membership import ROLE_LABELS, Role
    from portal.accounts import portal_name

    context = {
        "invitation": invitation,
        "tenant": invitation.tenant,
        "inviter": invitation.invited_by,
        "link": link_for(request, invitation),
        "days": max_age().days,
        "role": ROLE_LABELS[Role(invitation.role)],
        "site_name": portal_name(),
    }
    subject = " ".join(render_to_string("portal/email/invitation_subject.txt", context,
                                        request=request).split())
    body = render_to_string("portal/email/invitation_message.txt", context, request=request)
    prefix = getattr(settings, "ACCOUNT_EMAIL_SUBJECT_PREFIX", "")
    send_mail(prefix + subject, body, None, [invitation.email])
