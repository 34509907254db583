"""Template helpers for the account pages: ``{% signup_mode as mode %}`` gives
``PORTAL_SIGNUP`` (open, invite or closed)."""

from __future__ import annotations

from django import template
from django.conf import settings

register = template.Library()


@register.simple_tag
def signup_mode() -> str:
    return str(settings.PORTAL_SIGNUP)
