"""``{% ops_overview as ops %}``: the operations overview the admin index shows to staff
(computed only when the template renders it; see portal.selectors.overview)."""

from __future__ import annotations

from typing import Any

from django import template

register = template.Library()


@register.simple_tag(takes_context=True)
def ops_overview(context: template.Context) -> dict[str, Any] | None:
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not (user.is_active and user.is_staff):
        return None
    from portal.selectors.overview import overview

    return overview()
