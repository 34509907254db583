"""The Keys pages: list, create, detail, edit, disable/enable, rotate, delete.

Reads go through ``portal.selectors.keys`` (always filtered by ``request.tenant``: another
tenant's key id is a 404), writes through ``keys.services`` (so the snapshot invalidation
fires and /v1 applies a change within GATEWAY_SNAPSHOT_TTL). Who may change a key is
decided by ``portal.tenancy.can_change_key`` only.

A new secret (create, rotate) is rendered in the POST's own response, marked
``Cache-Control: no-store``: it is never stored, never in a URL, a cookie or the session.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.cache import add_never_cache_headers
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from keys import services
from keys.models import ApiKey
from keys.patterns import concrete, permits
from portal.selectors import keys as selectors
from portal.tenancy import can, can_change_key, portal_view
from portal.views.key_forms import KeyForm, RotateForm


def _key_for_change(request: HttpRequest, pk: int) -> ApiKey:
    """The tenant's key (404 for another tenant's id), if this user may change it (403)."""
    key = selectors.key_get(request.tenant, pk)  # type: ignore[attr-defined]
    if not can_change_key(request.membership, key):  # type: ignore[attr-defined]
        raise PermissionDenied(_("Your role in this tenant does not allow changing this key."))
    return key


def _secret_page(request: HttpRequest, made: services.CreatedKey, *, rotated: ApiKey | None
                 = None) -> HttpResponse:
    model, codex_model = _example_models(made.key)
    response = render(request, "portal/keys/secret.html", {
        "key": made.key, "secret": made.secret, "rotated": rotated,
        "base_url": f"{request.scheme}://{request.get_host()}/v1",
        "model": model, "codex_model": codex_model,
    })
    add_never_cache_headers(response)
    return response


def _example_models(key: ApiKey) -> tuple[str, str]:
    """Models for the snippets: one this key can call (a codex one for Codex, if any)."""
    names = selectors.callable_models(selectors.effective_group(key.tenant, key.group))
    usable = [m for m in names if permits(key.allowed_models, key.denied_models, m)]
    names = usable or concrete(key.allowed_models) or ["gpt-5"]
    codex = next((m for m in names if "codex" in m), names[0])
    return names[0], codex


@portal_view()
def key_list(request: HttpRequest) -> HttpResponse:
    search = request.GET.get("q", "").strip()
    status = request.GET.get("status", "")
    page, rows = selectors.key_page(request.tenant, request.GET.get("page"),  # type: ignore[attr-defined]
                                    search=search, status=status)
    membership = request.membership  # type: ignore[attr-defined]
    query = request.GET.copy()
    query.pop("page", None)
    return render(request, "portal/keys/list.html", {
        "page": page, "rows": rows, "search": search, "status": status,
        "can_create": can(membership, "own_keys"), "query": query.urlencode(),
    })


@portal_view("own_keys")
def key_create(request: HttpRequest) -> HttpResponse:
    tenant = request.tenant  # type: ignore[attr-defined]
    form = KeyForm(request.POST or None, tenant=tenant)
    if request.method == "POST" and form.is_valid():
        values = form.settings()
        try:
            made = services.key_create(
                tenant=tenant, created_by=request.user, name=values.pop("name"),
                models=values.pop("allowed_models"), **values)
        except services.ApplicationError as exc:
            form.add_error(None, str(exc))
        else:
            return _secret_page(request, made)
    return render(request, "portal/keys/form.html", {"form": form, "key": None})


@portal_view()
def key_detail(request: HttpRequest, pk: int) -> HttpResponse:
    key = selectors.key_get(request.tenant, pk)  # type: ignore[attr-defined]
    row = selectors.key_row(key)
    group = selectors.effective_group(key.tenant, key.group)
    return render(request, "portal/keys/detail.html", {
        "key": key, "row": row, "group": group,
        "successor": selectors.key_successor(key),
        "can_change": can_change_key(request.membership, key),  # type: ignore[attr-defined]
        "rotate_form": RotateForm(),
    })


@portal_view()
def key_edit(request: HttpRequest, pk: int) -> HttpResponse:
    key = _key_for_change(request, pk)
    form = KeyForm(request.POST or None, tenant=request.tenant, instance=key)  # type: ignore[attr-defined]
    if request.method == "POST" and form.is_valid():
        try:
            changed = services.key_update(key=key, **form.settings())
        except services.ApplicationError as exc:
            form.add_error(None, str(exc))
        else:
            if changed:
                messages.success(request, _("Key %(name)s saved.") % {"name": key.name})
            return redirect("portal:key_detail", pk=key.pk)
    return render(request, "portal/keys/form.html", {"form": form, "key": key})


@portal_view()
@require_POST
def key_status(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    key = _key_for_change(request, pk)
    active = action == "enable"
    if services.key_set_status(key=key, active=active):
        messages.success(request, (_("Key %(name)s enabled.") if active else
                                   _("Key %(name)s disabled.")) % {"name": key.name})
    if request.POST.get("next") == "list":
        return redirect("portal:key_list")
    return redirect("portal:key_detail", pk=key.pk)


@portal_view()
def key_rotate(request: HttpRequest, pk: int) -> HttpResponse:
    key = _key_for_change(request, pk)
    form = RotateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        made = services.key_rotate(key=key, grace=form.grace_period())
        key.refresh_from_db()
        return _secret_page(request, made, rotated=key)
    return render(request, "portal/keys/rotate.html", {"key": key, "form": form})


@portal_view()
def key_delete(request: HttpRequest, pk: int) -> HttpResponse:
    key = _key_for_change(request, pk)
    if request.method == "POST":
        name = key.name
        services.key_delete(key=key)
        messages.success(request, _("Key %(name)s deleted.") % {"name": name})
        return redirect("portal:key_list")
    return render(request, "portal/keys/delete.html", {"key": key})
