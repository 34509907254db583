"""Reads of the models page: the models a tenant may call and what they cost it.

Built from the same tables the gateway routes and prices with (``gateway.routing``'s route
table and ``billing.pricing``'s price table), read synchronously from the database here:
the portal is not on the hot path."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from billing.pricing import (
    MILLION,
    Price,
    PriceTable,
    build_price_table,
    cost,
    decode_price_table,
)
from gateway.routing import RouteTable, build_route_table, decode_route_table
from keys.models import ApiKey, Group, Tenant
from keys.money import MICRO
from keys.patterns import permits

ENDPOINTS = ("chat", "responses", "compact")
# How each upstream kind serves each client endpoint (README "Upstream kinds").
NATIVE = "native"
TRANSLATED = "translated"
BY_TURNPIKE = "turnpike"  # compaction done by Turnpike with the routed model


@dataclass(frozen=True)
class ModelInfo:
    name: str
    price: Price  # after the group's multiplier
    endpoints: dict[str, str]  # endpoint -> NATIVE / TRANSLATED / BY_TURNPIKE
    kinds: tuple[str, ...]

    @property
    def cached(self) -> Decimal:
        return self.price.input if self.price.cached_input is None else self.price.cached_input

    @property
    def reasoning(self) -> Decimal:
        return self.price.output if self.price.reasoning is None else self.price.reasoning


def route_table() -> RouteTable:
    return decode_route_table(build_route_table("all"))


def price_table() -> PriceTable:
    return decode_price_table(build_price_table("all"))


def group_of(tenant: Tenant, key: ApiKey | None = None) -> Group | None:
    if key is not None and key.group_id is not None:
        return key.group
    return tenant.group


def multiplier(group: Group | None) -> Decimal:
    return group.price_multiplier if group is not None else Decimal(1)


def multiplied(price: Price, factor: Decimal) -> Price:
    def m(value: Decimal | None) -> Decimal | None:
        return None if value is None else (value * factor).quantize(MICRO)

    return Price(input=m(price.input) or Decimal(0), cached_input=m(price.cached_input),
                 output=m(price.output) or Decimal(0), reasoning=m(price.reasoning),
                 per_request=m(price.per_request) or Decimal(0))


def endpoint_support(kinds: set[str]) -> dict[str, str]:
    """Per client endpoint: native when some upstream kind speaks it as is, else translated
    (compaction: done by Turnpike when no upstream compacts natively)."""
    from gateway.providers.protocols import CLIENT_PROTOCOL
    from gateway.providers.registry import PROVIDERS

    providers = [PROVIDERS[k] for k in kinds if k in PROVIDERS]
    out: dict[str, str] = {}
    for endpoint in ENDPOINTS:
        if any(p.protocol(endpoint) is CLIENT_PROTOCOL[endpoint] for p in providers):
            out[endpoint] = NATIVE
        elif endpoint == "compact" and not any(p.native_compaction for p in providers):
            out[endpoint] = BY_TURNPIKE
        else:
            out[endpoint] = TRANSLATED
    return out


def tenant_models(tenant: Tenant, key: ApiKey | None = None,
                  routes: RouteTable | None = None,
                  prices: PriceTable | None = None) -> list[ModelInfo]:
    """Every concrete model the tenant's group (or ``key``'s group, and its allow- and
    deny-lists) may call, sorted by name, with prices after the group's multiplier."""
    group = group_of(tenant, key)
    routes = routes or route_table()
    prices = prices or price_table()
    group_id = group.pk if group else None
    dedicated = bool(group and group.dedicated_upstreams)
    allowed = list((key.allowed_models if key is not None else None) or
                   (group.allowed_models if group else []) or [])
    denied = list(key.denied_models or []) if key is not None else []
    factor = multiplier(group)
    out = []
    for name in sorted(routes.listed_models(group_id, dedicated)):
        if not permits(allowed, denied, name):
            continue
        kinds = {u.kind for u in routes.serving(name, group_id, dedicated)}
        out.append(ModelInfo(name=name, price=multiplied(prices.lookup(name), factor),
                             endpoints=endpoint_support(kinds), kinds=tuple(sorted(kinds))))
    return out


def model_names(tenant: Tenant) -> list[str]:
    return [m.name for m in tenant_models(tenant)]


def turn_cost(tenant: Tenant, model: str, *, input_tokens: int, cached_tokens: int,
              output_tokens: int, reasoning_tokens: int,
              key: ApiKey | None = None) -> Decimal:
    """What a request with these tokens costs the tenant (or ``key``), as the gateway
    charges it: the model's price times the group's multiplier."""
    price = price_table().lookup(model)
    return cost(price, input_tokens=input_tokens, cached_tokens=cached_tokens,
                output_tokens=output_tokens, reasoning_tokens=reasoning_tokens,
                multiplier=multiplier(group_of(tenant, key)))


__all__ = ["MILLION", "ModelInfo", "tenant_models", "turn_cost", "model_names"]
