"""Model name -> upstream + credential, from a cached snapshot of the Upstream table.

The table is read through ``LayeredCache`` like key snapshots, so routing costs no SQL;
``gateway.signals`` drops it whenever an upstream or credential changes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from gateway.crypto import decrypt
from keys.snapshots import model_matches
from portal.snapshots import LayeredCache

@dataclass(frozen=True, slots=True)
class CredentialRef:
    id: int
    secret: str


@dataclass(frozen=True, slots=True)
class UpstreamRef:
    id: int
    name: str
    kind: str
    base_url: str
    models: tuple[str, ...]
    priority: int
    weight: int
    created: int  # unix seconds, shown as the models' "created"
    credentials: tuple[CredentialRef, ...]

    def serves(self, model: str) -> bool:
        return any(model_matches(p, model) for p in self.models)


@dataclass(frozen=True, slots=True)
class Route:
    upstream: UpstreamRef
    credential: CredentialRef | None
    model: str  # the name sent upstream


@dataclass(frozen=True, slots=True)
class RouteTable:
    upstreams: tuple[UpstreamRef, ...]

    def serving(self, model: str) -> list[UpstreamRef]:
        return [u for u in self.upstreams if u.serves(model)]

    def listed_models(self) -> dict[str, UpstreamRef]:
        """Concrete model names (wildcards cannot be listed) -> the first upstream serving
        each, in routing order."""
        seen: dict[str, UpstreamRef] = {}
        for upstream in self.upstreams:
            for name in upstream.models:
                if not any(ch in name for ch in "*?["):
                    seen.setdefault(name, upstream)
        return seen


def build_route_table(_ident: str) -> dict[str, Any]:
    from gateway.models import Upstream
    from keys.models import Status

    upstreams = []
    qs = Upstream.objects.filter(status=Status.ACTIVE).prefetch_related("credentials")
    for up in qs:
        creds = [
            {"id": c.pk, "secret_encrypted": c.secret_encrypted}
            for c in up.credentials.all()
            if c.status == Status.ACTIVE
        ]
        upstreams.append({
            "id": up.pk, "name": up.name, "kind": up.kind, "base_url": up.base_url.rstrip("/"),
            "models": list(up.served_models or []), "priority": up.priority, "weight": up.weight,
            "created": int(up.created_at.timestamp()), "credentials": creds,
        })
    return {"upstreams": upstreams}


@lru_cache(maxsize=4096)
def _decrypt_cached(token: str) -> str:
    return decrypt(token)


def decode_route_table(data: dict[str, Any]) -> RouteTable:
    ups = []
    for u in data["upstreams"]:
        creds = tuple(
            CredentialRef(id=c["id"], secret=_decrypt_cached(c["secret_encrypted"]))
            for c in u["credentials"]
        )
        ups.append(UpstreamRef(
            id=u["id"], name=u["name"], kind=u["kind"], base_url=u["base_url"],
            models=tuple(u["models"]), priority=u["priority"], weight=max(1, u["weight"]),
            created=u["created"], credentials=creds,
        ))
    ups.sort(key=lambda u: -u.priority)
    return RouteTable(upstreams=tuple(ups))


route_tables: LayeredCache[RouteTable] = LayeredCache(
    "routes", build_route_table, decode_route_table, negative_ttl=1
)


async def aget_route_table() -> RouteTable:
    table = await route_tables.get("all")
    return table if table is not None else RouteTable(upstreams=())


def pick(candidates: list[UpstreamRef], rng: random.Random | None = None) -> UpstreamRef:
    """Highest priority tier first; weighted random inside the tier."""
    rng = rng or random
    top = max(u.priority for u in candidates)
    tier = [u for u in candidates if u.priority == top]
    if len(tier) == 1:
        return tier[0]
    return rng.choices(tier, weights=[u.weight for u in tier], k=1)[0]


def choose_route(candidates: list[UpstreamRef], model: str) -> Route:
    upstream = pick(candidates)
    credential = random.choice(upstream.credentials) if upstream.credentials else None
    return Route(upstream=upstream, credential=credential, model=model)
