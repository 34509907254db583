"""django-allauth adapters: who may sign up (``PORTAL_SIGNUP``), and where users land.

Sign-up modes:
    open     anyone may create an account (and then needs an invitation, or a tenant made
             for them, to see anything)
    invite   only someone holding a valid invitation link (``portal.invitations``)
    closed   nobody: accounts come from an operator (``manage.py user create``) or SSO for
             users who already exist
"""

from __future__ import annotations

from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from allauth.mfa.adapter import DefaultMFAAdapter
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from django.conf import settings
from django.http import HttpRequest

INVITATION_SESSION_KEY = "portal_invitation"


def portal_name() -> str:
    return str(getattr(settings, "MFA_TOTP_ISSUER", "") or "Turnpike")


class PortalSite:
    """What allauth's emails call ``current_site``: the portal's name and the host the
    request came to (not the ``django.contrib.sites`` row, which says example.com)."""

    def __init__(self, request: HttpRequest | None) -> None:
        self.name = portal_name()
        self.domain = request.get_host() if request is not None else "localhost"

    def __str__(self) -> str:
        return self.name


def signup_open(request: HttpRequest) -> bool:
    mode = settings.PORTAL_SIGNUP
    if mode == "open":
        return True
    if mode == "invite":
        from portal.invitations import pending_invitation

        return pending_invitation(request) is not None
    return False


def _landing(request: HttpRequest, default: str) -> str:
    """Accept the invitation the session holds, if any; a user who belongs to no tenant
    lands on the welcome page (which says how to get invited) rather than a 404."""
    from django.urls import reverse

    from keys.models import Membership
    from portal.invitations import accept_pending

    accept_pending(request)
    user = request.user
    if user.is_authenticated and not Membership.objects.filter(user=user).exists():
        return reverse("portal:welcome")
    return default


class AccountAdapter(DefaultAccountAdapter):
    def is_open_for_signup(self, request: HttpRequest) -> bool:
        return signup_open(request)

    def clean_email(self, email: str) -> str:
        """In ``invite`` mode, sign-up is open only to the address the invitation went to."""
        from allauth.core import context as allauth_context
        from django import forms
        from django.utils.translation import gettext as _

        from portal.invitations import pending_invitation

        request = allauth_context.request
        if settings.PORTAL_SIGNUP == "invite" and request is not None:
            invitation = pending_invitation(request)
            if invitation is not None and invitation.email.lower() != email.strip().lower():
                raise forms.ValidationError(
                    _("This invitation is for %(email)s: sign up with that address.")
                    % {"email": invitation.email})
        return super().clean_email(email)

    def get_login_redirect_url(self, request: HttpRequest) -> str:
        return _landing(request, super().get_login_redirect_url(request))

    def get_signup_redirect_url(self, request: HttpRequest) -> str:
        return _landing(request, super().get_signup_redirect_url(request))

    def send_mail(self, template_prefix: str, email: str, context: dict[str, Any]) -> None:
        from allauth.core import context as allauth_context

        context = {"current_site": PortalSite(allauth_context.request), **context}
        super().send_mail(template_prefix, email, context)


class MFAAdapter(DefaultMFAAdapter):
    def _get_site_name(self) -> str:
        """The name authenticator apps and passkeys show: ``PORTAL_NAME``."""
        return portal_name()


class SocialAccountAdapter(DefaultSocialAccountAdapter):
    def is_open_for_signup(self, request: HttpRequest, sociallogin: Any) -> bool:
        return signup_open(request)
