"""Models and prices, the quickstart and the playground: what the tenant may call, what it
costs, and how to call it from here."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render

from keys.models import ApiKey, Status
from portal.selectors import models as selectors
from portal.tenancy import portal_view

MAX_TOKENS = 100_000_000


@portal_view()
def models_page(request: HttpRequest) -> HttpResponse:
    tenant = request.tenant  # type: ignore[attr-defined]
    group = selectors.group_of(tenant)
    return render(request, "portal/models.html", {
        "models": selectors.tenant_models(tenant),
        "group": group,
        "multiplier": selectors.multiplier(group),
    })


def _int(request: HttpRequest, name: str) -> int | None:
    try:
        value = int(request.GET.get(name) or 0)
    except ValueError:
        return None
    return value if 0 <= value <= MAX_TOKENS else None


@portal_view()
def model_cost(request: HttpRequest, model: str) -> JsonResponse:
    """GET ?input=&cached=&output=&reasoning=[&key=<id>]: the cost of a request with these
    tokens to this tenant (or to that key's group), as the gateway charges it."""
    tenant = request.tenant  # type: ignore[attr-defined]
    key = None
    if request.GET.get("key"):
        key = get_object_or_404(ApiKey.objects.select_related("group"),
                                pk=request.GET["key"] if request.GET["key"].isdigit() else 0,
                                tenant=tenant)
    if model not in {m.name for m in selectors.tenant_models(tenant, key)}:
        raise Http404("no such model for this tenant")
    tokens = {name: _int(request, name) for name in ("input", "cached", "output", "reasoning")}
    bad = [name for name, value in tokens.items() if value is None]
    if bad:
        return JsonResponse({"error": f"Token counts must be whole numbers from 0 to "
                                      f"{MAX_TOKENS}: {', '.join(bad)}."}, status=400)
    amount = selectors.turn_cost(tenant, model, input_tokens=tokens["input"] or 0,
                                 cached_tokens=tokens["cached"] or 0,
                                 output_tokens=tokens["output"] or 0,
                                 reasoning_tokens=tokens["reasoning"] or 0, key=key)
    group = selectors.group_of(tenant, key)
    return JsonResponse({"model": model, **tokens, "cost": str(amount),
                         "multiplier": str(selectors.multiplier(group))})


def _keys(request: HttpRequest) -> list[ApiKey]:
    return list(ApiKey.objects.filter(tenant=request.tenant,  # type: ignore[attr-defined]
                                      status=Status.ACTIVE).order_by("name", "pk")[:500])


def _chosen_key(request: HttpRequest) -> ApiKey | None:
    raw = request.GET.get("key")
    if not raw:
        return None
    if not raw.isdigit():
        raise Http404
    return get_object_or_404(ApiKey, pk=int(raw), tenant=request.tenant)  # type: ignore[attr-defined]


def snippet_context(request: HttpRequest, names: list[str]) -> dict[str, Any]:
    """What ``templates/portal/_snippets.html`` needs: this installation's addresses and
    example models from ``names`` (the models the key or tenant may call). Add ``secret``
    to fill in a key just created."""
    prefixes = [p.rstrip("/") for p in settings.GATEWAY_PATH_PREFIXES if p.strip("/")]
    return {
        "model": next((n for n in names if "codex" not in n), names[0] if names else "gpt-5"),
        "codex_model": next((n for n in names if "codex" in n), names[0] if names else
                            "gpt-5-codex"),
        "base_url": request.build_absolute_uri("/v1"),
        "codex_base_url": request.build_absolute_uri(f"{prefixes[0]}/v1") if prefixes else "",
        "codex_prefix": prefixes[0] if prefixes else "",
    }


def _setup(request: HttpRequest) -> dict[str, Any]:
    tenant = request.tenant  # type: ignore[attr-defined]
    key = _chosen_key(request)
    names = [m.name for m in selectors.tenant_models(tenant, key)]
    return {"key": key, "keys": _keys(request), "model_names": names,
            **snippet_context(request, names)}


@portal_view()
def quickstart(request: HttpRequest) -> HttpResponse:
    return render(request, "portal/quickstart.html", _setup(request))


@portal_view()
def playground(request: HttpRequest) -> HttpResponse:
    return render(request, "portal/playground.html", _setup(request))
