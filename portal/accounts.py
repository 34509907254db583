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
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from django.conf import settings
from django.http import HttpRequest

INVITATION_SESSION_KEY = "portal_invitation"


def signup_open(request: HttpRequest) -> bool:
    mode = settings.PORTAL_SIGNUP
    if mode == "open":
        return True
    if mode == "invite":
        from portal.invitations import pending_invitation

        return pending_invitation(request) is not None
    return False


class AccountAdapter(DefaultAccountAdapter):
    def is_open_for_signup(self, request: HttpRequest) -> bool:
        return signup_open(request)

    def get_login_redirect_url(self, request: HttpRequest) -> str:
        from portal.invitations import accept_pending

        accept_pending(request)
        return super().get_login_redirect_url(request)

    def get_signup_redirect_url(self, request: HttpRequest) -> str:
        from portal.invitations import accept_pending

        accept_pending(request)
        return super().get_signup_redirect_url(request)


class SocialAccountAdapter(DefaultSocialAccountAdapter):
    def is_open_for_signup(self, request: HttpRequest, sociallogin: Any) -> bool:
        return signup_open(request)
