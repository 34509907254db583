"""``{% load portal_dashboard %}``: one key's usage for templates that have the key, e.g.
the key's own page (``{% include "portal/keys/_usage.html" %}`` with ``key`` in context)."""

from __future__ import annotations

from typing import Any

from django import template

from portal.selectors.dashboard import overview

register = template.Library()


@register.simple_tag(takes_context=True)
def key_usage(context: dict[str, Any], key: Any) -> Any:
    """The key's Overview (30 days, today by hour), or None unless the key belongs to the
    request's tenant (the page fetched it by tenant already; this never trusts it)."""
    request = context.get("request")
    tenant = getattr(request, "tenant", None)
    if key is None or tenant is None or key.tenant_id != tenant.pk:
        return None
    return overview(tenant, key=key)


@register.filter
def percent(value: float | None) -> float | None:
    return None if value is None else value * 100
