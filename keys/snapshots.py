"""KeySnapshot: everything the gateway needs to know about a key, without the database.

Built from ApiKey + Tenant + Group, cached by ``portal.infra.snapshots.LayeredCache`` under the
key's secret hash, and invalidated by ``keys.signals`` whenever one of those rows changes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from keys.patterns import permits
from portal.infra.snapshots import LayeredCache

if TYPE_CHECKING:
    from keys.models import ApiKey


@dataclass(frozen=True, slots=True)
class KeySnapshot:
    key_id: int
    tenant_id: int
    prefix: str
    key_active: bool
    tenant_active: bool
    expires_at: float | None  # unix seconds
    allowed_models: tuple[str, ...]  # empty: any model
    denied_models: tuple[str, ...]
    allowed_ips: tuple[str, ...]
    rpm: int  # effective limits after group fallback; 0 = unlimited
    rpd: int
    tpm: int
    concurrency: int
    max_tokens: int
    group_id: int | None
    price_multiplier: str  # Decimal as text: exact, and JSON-safe
    has_quota: bool
    dedicated_upstreams: bool = False  # the group uses only upstreams assigned to it
    # Days its /v1/responses answers are stored (the tenant's retention); 0: storage off
    # (zero data retention). The default is the model's, for snapshots cached before it.
    store_days: int = 30
    # Unix seconds until which its request and response bodies are captured (issue 15,
    # ``gateway.capture``); 0: off. The gateway compares it with the clock, so a window
    # ends on time without a snapshot rebuild.
    capture_until: float = 0.0

    @property
    def active(self) -> bool:
        return self.key_active and self.tenant_active

    def is_expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or time.time())

    def captures_bodies(self, now: float | None = None) -> bool:
        """Body capture is on for this key right now."""
        return self.capture_until > (now or time.time())

    def allows(self, model: str) -> bool:
        """The model passes the key's deny-list and allow-list (``keys.patterns``)."""
        return permits(self.allowed_models, self.denied_models, model)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KeySnapshot:
        for name in ("allowed_models", "denied_models", "allowed_ips"):
            data[name] = tuple(data[name])
        return cls(**data)


def _effective(key_value: int | None, group_value: int | None) -> int:
    if key_value is not None:
        return key_value
    return group_value or 0


SNAPSHOT_RELATED = ("tenant", "group", "tenant__group")  # what snapshot_of() reads


def snapshot_of(key: ApiKey) -> KeySnapshot:
    """The snapshot of one ApiKey row (loaded with ``select_related(*SNAPSHOT_RELATED)``):
    what the cache holds, and what the Django-side key checks (``keys.authn``) decide from."""
    from keys.models import Status, capture_until, store_days

    group = key.group or key.tenant.group
    return KeySnapshot(
        key_id=key.pk,
        tenant_id=key.tenant_id,
        prefix=key.prefix,
        key_active=key.status == Status.ACTIVE,
        tenant_active=key.tenant.status == Status.ACTIVE,
        expires_at=key.expires_at.timestamp() if key.expires_at else None,
        allowed_models=tuple(key.allowed_models or (group.allowed_models if group else []) or []),
        denied_models=tuple(key.denied_models or []),
        allowed_ips=tuple(key.allowed_ips or []),
        rpm=_effective(key.rpm, group.rpm if group else None),
        rpd=_effective(key.rpd, group.rpd if group else None),
        tpm=key.tpm or 0,
        concurrency=_effective(key.concurrency, group.concurrency if group else None),
        max_tokens=_effective(key.max_tokens, group.max_tokens if group else None),
        group_id=group.pk if group else None,
        price_multiplier=str(group.price_multiplier if group else 1),
        has_quota=key.quota is not None,
        dedicated_upstreams=bool(group and group.dedicated_upstreams),
        store_days=store_days(key.response_storage, key.tenant.response_storage,
                              key.tenant.response_retention_days),
        capture_until=capture_until(key.capture_bodies, key.capture_bodies_until,
                                    key.tenant.capture_bodies_until),
    )


def build_key_snapshot(secret_hash: str) -> dict[str, Any] | None:
    """Read one key from the database (sync). None when no key has this hash."""
    from keys.models import ApiKey

    key = ApiKey.objects.select_related(*SNAPSHOT_RELATED).filter(secret_hash=secret_hash).first()
    return None if key is None else snapshot_of(key).to_dict()


key_snapshots: LayeredCache[KeySnapshot] = LayeredCache(
    "key", build_key_snapshot, KeySnapshot.from_dict
)


async def aget_key_snapshot(secret_hash: str) -> KeySnapshot | None:
    return await key_snapshots.get(secret_hash)
