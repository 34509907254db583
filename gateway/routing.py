"""Model name -> an ordered list of routes (upstream + credential), from a cached snapshot of
the Upstream table (no SQL on the hot path; ``gateway.signals`` drops it on any change).

Order of the routes a request tries:
  1. the session's sticky binding, when it still serves the model and is not cooling down;
  2. then by priority tier, highest first; inside a tier upstreams by weighted rendezvous
     hashing of the session, and inside an upstream its credentials likewise.
Rendezvous hashing makes the choice a pure function of (session, candidates): every gateway
process picks the same credential for a conversation, conversations spread over upstreams in
proportion to their weights, and when a credential drops out only its sessions move.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from gateway.crypto import decrypt
from gateway.providers.provider import Provider
from gateway.providers.registry import PROVIDERS
from keys.patterns import is_pattern, matches
from portal.infra.snapshots import LayeredCache


@dataclass(frozen=True, slots=True)
class CredentialRef:
    id: int
    secret: str
    rpm: int = 0  # the upstream's limit for this key; 0: none known


@dataclass(frozen=True, slots=True)
class UpstreamRef:
    id: int
    name: str
    kind: str
    base_url: str
    models: tuple[str, ...]
    model_map: tuple[tuple[str, str], ...]
    priority: int
    weight: int
    created: int  # unix seconds, shown as the models' "created"
    credentials: tuple[CredentialRef, ...]
    groups: frozenset[int] = frozenset()
    timeout_connect: float | None = None
    timeout_first_byte: float | None = None
    timeout_idle: float | None = None
    proxy: str | None = None

    @property
    def provider(self) -> Provider:
        """Everything kind-specific about calling this upstream (``gateway.providers``)."""
        return PROVIDERS[self.kind]

    def serves(self, model: str) -> bool:
        if model in self._exact:
            return True
        return any(matches(p, model) for p in self._patterns)

    @property
    def _exact(self) -> frozenset[str]:
        return _exact_names(self.models, self.model_map)

    @property
    def _patterns(self) -> tuple[str, ...]:
        return _wildcards(self.models)

    def upstream_model(self, model: str) -> str:
        for name, target in self.model_map:
            if name == model:
                return target
        return model

    def open_to(self, group_id: int | None, dedicated: bool) -> bool:
        """Whether a key of this group may use this upstream."""
        if dedicated:
            return group_id is not None and group_id in self.groups
        return not self.groups or group_id in self.groups


@lru_cache(maxsize=4096)
def _exact_names(models: tuple[str, ...], model_map: tuple[tuple[str, str], ...]) -> frozenset[str]:
    return frozenset([*(m for m in models if not is_pattern(m)),
                      *(name for name, _ in model_map)])


@lru_cache(maxsize=4096)
def _wildcards(models: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(m for m in models if is_pattern(m))


@dataclass(frozen=True, slots=True)
class Route:
    upstream: UpstreamRef
    credential: CredentialRef | None
    model: str  # the name sent upstream

    @property
    def binding(self) -> str:
        """How a sticky session records this route."""
        return f"{self.upstream.id}:{self.credential.id if self.credential else 0}"


@dataclass(frozen=True)
class RouteTable:
    upstreams: tuple[UpstreamRef, ...]
    # (model, group, dedicated) -> candidates; the table is immutable, so answers keep.
    _serving: dict[tuple[str, int | None, bool], list[UpstreamRef]] = field(
        default_factory=dict, compare=False, repr=False)

    def serving(self, model: str, group_id: int | None = None,
                dedicated: bool = False) -> list[UpstreamRef]:
        key = (model, group_id, dedicated)
        found = self._serving.get(key)
        if found is None:
            found = [u for u in self.upstreams
                     if u.open_to(group_id, dedicated) and u.serves(model)]
            if len(self._serving) < 10_000:
                self._serving[key] = found
        return list(found)

    def listed_models(self, group_id: int | None = None,
                      dedicated: bool = False) -> dict[str, UpstreamRef]:
        """Concrete client-facing model names (wildcards cannot be listed) -> the first
        upstream serving each, over every upstream this group may use."""
        seen: dict[str, UpstreamRef] = {}
        for upstream in self.upstreams:
            if not upstream.open_to(group_id, dedicated):
                continue
            names = [*upstream.models, *(name for name, _ in upstream.model_map)]
            for name in names:
                if not is_pattern(name):
                    seen.setdefault(name, upstream)
        return seen


def build_route_table(_ident: str) -> dict[str, Any]:
    from gateway.models import Upstream, upstream_base_url
    from keys.models import Status

    upstreams = []
    qs = (Upstream.objects.filter(status=Status.ACTIVE, auto_disabled=False)
          .prefetch_related("credentials", "groups"))
    for up in qs:
        all_creds = list(up.credentials.all())
        creds = [
            {"id": c.pk, "secret_encrypted": c.secret_encrypted, "rpm": c.rpm or 0}
            for c in all_creds
            if c.status == Status.ACTIVE
        ]
        if all_creds and not creds:
            continue  # every credential disabled: unusable (an upstream with none is keyless)
        upstreams.append({
            "id": up.pk, "name": up.name, "kind": up.kind,
            "base_url": upstream_base_url(up.kind, up.base_url),
            "models": list(up.served_models or []),
            "model_map": sorted((str(k), str(v)) for k, v in (up.model_map or {}).items()),
            "priority": up.priority, "weight": up.weight,
            "created": int(up.created_at.timestamp()), "credentials": creds,
            "groups": sorted(g.pk for g in up.groups.all()),
            "timeouts": [up.timeout_connect, up.timeout_first_byte, up.timeout_idle],
            "proxy": up.proxy_url or None,
        })
    return {"upstreams": upstreams}


@lru_cache(maxsize=4096)
def _decrypt_cached(token: str) -> str:
    return decrypt(token)


def decode_route_table(data: dict[str, Any]) -> RouteTable:
    ups = []
    for u in data["upstreams"]:
        creds = tuple(
            CredentialRef(id=c["id"], secret=_decrypt_cached(c["secret_encrypted"]) if
                          c["secret_encrypted"] else "", rpm=c.get("rpm", 0))
            for c in u["credentials"]
        )
        connect, first_byte, idle = u.get("timeouts") or (None, None, None)
        ups.append(UpstreamRef(
            id=u["id"], name=u["name"], kind=u["kind"], base_url=u["base_url"],
            models=tuple(u["models"]), model_map=tuple(tuple(p) for p in u.get("model_map", [])),
            priority=u["priority"], weight=max(1, u["weight"]), created=u["created"],
            credentials=creds, groups=frozenset(u.get("groups", [])),
            timeout_connect=connect, timeout_first_byte=first_byte, timeout_idle=idle,
            proxy=u.get("proxy"),
        ))
    ups.sort(key=lambda u: -u.priority)
    return RouteTable(upstreams=tuple(ups))


route_tables: LayeredCache[RouteTable] = LayeredCache(
    "routes", build_route_table, decode_route_table, negative_ttl=1
)


async def aget_route_table() -> RouteTable:
    table = await route_tables.get("all")
    return table if table is not None else RouteTable(upstreams=())


# --- ordering -----------------------------------------------------------------------------

def _unit(session: str, node: str) -> float:
    """A uniform number in (0, 1) from (session, node): the same in every process."""
    digest = hashlib.blake2b(f"{session}\x00{node}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 1) / (2**64 + 1)


def rendezvous(session: str, nodes: list[Any], key: Any, weight: Any) -> list[Any]:
    """Weighted rendezvous (highest random weight) order: node n wins with probability
    weight(n) / sum(weights) over sessions, and a session's order is stable."""
    if len(nodes) < 2:  # one node (the usual tier): nothing to hash
        return list(nodes)
    return sorted(nodes, key=lambda n: weight(n) / -math.log(_unit(session, key(n))),
                  reverse=True)


def plan(candidates: list[UpstreamRef], model: str, session: str,
         sticky: str | None = None, cooled: Collection[int] = frozenset()) -> list[Route]:
    """Every route this request may try, best first (see the module docstring)."""
    routes: list[Route] = []
    priorities = [candidates[0].priority] if len(candidates) == 1 else sorted(
        {u.priority for u in candidates}, reverse=True)
    for priority in priorities:
        tier = candidates if len(priorities) == 1 else [
            u for u in candidates if u.priority == priority]
        for upstream in rendezvous(session, tier, lambda u: f"u{u.id}", lambda u: u.weight):
            name = upstream.upstream_model(model)
            if not upstream.credentials:
                routes.append(Route(upstream=upstream, credential=None, model=name))
                continue
            creds = [c for c in upstream.credentials if c.id not in cooled]
            for cred in rendezvous(session, creds, lambda c: f"c{c.id}", lambda c: 1):
                routes.append(Route(upstream=upstream, credential=cred, model=name))
    if sticky:
        for index, route in enumerate(routes):
            if route.binding == sticky:
                routes.insert(0, routes.pop(index))
                break
    return routes


def shortest_cooldown(candidates: list[UpstreamRef], cooled: Mapping[int, int],
                      now_ms: int) -> float | None:
    """Seconds until the first of the candidates' cooling credentials is usable again
    (None if none of them is cooling)."""
    ends = [cooled[c.id] for u in candidates for c in u.credentials if c.id in cooled]
    return max(0.0, (min(ends) - now_ms) / 1000) if ends else None
