"""Models and prices: what the tenant (or one of its keys) may call, at what price after
its group's multiplier, through which endpoints; and what a request would cost. The same
reads as /portal/models/ (``portal.selectors.models``)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja import Field, Query, Router, Schema

from keys.models import ApiKey
from portal.selectors import keys as key_selectors
from portal.selectors import models as selectors
from portal.tenant_api.auth import Caller, caller_of
from portal.tenant_api.common import currency, money
from portal.tenant_api.errors import ERRORS, not_found

router = Router(tags=["models"])

MAX_TOKENS = 100_000_000


class ModelOut(Schema):
    name: str
    input: str = Field(description="Per million input tokens, after the group's multiplier.")
    cached_input: str
    output: str
    reasoning: str
    per_request: str
    endpoints: dict[str, str] = Field(description="chat, responses, compact → native, "
                                      "translated or turnpike.")


class ModelsOut(Schema):
    group: str | None
    multiplier: str
    currency: str
    models: list[ModelOut]


class CostQuery(Schema):
    input: int = Field(0, ge=0, le=MAX_TOKENS)
    cached: int = Field(0, ge=0, le=MAX_TOKENS)
    output: int = Field(0, ge=0, le=MAX_TOKENS)
    reasoning: int = Field(0, ge=0, le=MAX_TOKENS)
    key: int | None = Field(None, ge=1, description="Price for this key's group.")


class CostOut(Schema):
    model: str
    input: int
    cached: int
    output: int
    reasoning: int
    cost: str
    multiplier: str


def _key(caller: Caller, key_id: int | None) -> ApiKey | None:
    caller.require()
    return key_selectors.key_get(caller.tenant, key_id) if key_id is not None else None


@router.get("/models", response={200: ModelsOut, **ERRORS},
            summary="Models the tenant (or a key) may call, with prices")
def model_list(request: HttpRequest,
               key: int | None = Query(None, ge=1)) -> dict[str, Any]:  # noqa: B008
    caller = caller_of(request)
    chosen = _key(caller, key)
    group = selectors.group_of(caller.tenant, chosen)
    return {"group": group.name if group else None,
            "multiplier": money(selectors.multiplier(group)), "currency": currency(),
            "models": [{"name": m.name, "input": money(m.price.input),
                        "cached_input": money(m.cached), "output": money(m.price.output),
                        "reasoning": money(m.reasoning),
                        "per_request": money(m.price.per_request), "endpoints": m.endpoints}
                       for m in selectors.tenant_models(caller.tenant, chosen)]}


@router.get("/models/{path:model}/cost", response={200: CostOut, **ERRORS},
            summary="What a request with these tokens costs, as the gateway charges it")
def model_cost(request: HttpRequest, model: str, q: Query[CostQuery]) -> dict[str, Any]:
    caller = caller_of(request)
    chosen = _key(caller, q.key)
    if model not in {m.name for m in selectors.tenant_models(caller.tenant, chosen)}:
        raise not_found("model")
    amount = selectors.turn_cost(caller.tenant, model, input_tokens=q.input,
                                 cached_tokens=q.cached, output_tokens=q.output,
                                 reasoning_tokens=q.reasoning, key=chosen)
    group = selectors.group_of(caller.tenant, chosen)
    return {"model": model, "input": q.input, "cached": q.cached, "output": q.output,
            "reasoning": q.reasoning, "cost": money(amount),
            "multiplier": money(selectors.multiplier(group))}
