"""Live usage events for the portal: a channels WebSocket per tenant, fed by the usage writer.

Publisher: ``publish_usage(rows)`` receives ``billing.usage.usage_written`` (connected in
portal/apps.py): rows ``write_events`` has committed (in the writer's worker thread, never on
a /v1 response path). It sends ONE message per tenant per batch to the group
``tenant-<id>`` (``channel_layer.group_send``; ``async_to_sync`` from the worker thread:
inside daphne that runs on the process's event loop, where an in-memory layer's consumers
live). Failures are logged (at most once a minute) and swallowed: publishing never breaks
usage writing.

Message (what the browser receives as JSON, ``type: "usage"``)::

    {"type": "usage", "tenant": 7, "count": 3,            # rows in this batch (all of them)
     "totals": {"requests": 3, "errors": 1, "input_tokens": .., "cached_tokens": ..,
                "output_tokens": .., "reasoning_tokens": .., "cost": "0.0123"},
     "rows": [{"request_id", "created_at", "model", "key_id", "key_prefix", "endpoint",
               "status", "error_code", "stream", "cost", "input_tokens", "cached_tokens",
               "output_tokens", "reasoning_tokens", "latency_ms", "ttfb_ms"}, ...]}

``rows`` holds at most LIVE_MAX_ROWS rows (the newest); ``totals`` and ``count`` always
cover the whole batch. No upstream or credential: members never see upstream internals.

Consumer: ``LiveConsumer`` at ``/ws/portal/live/`` (portal/asgi.py: AuthMiddlewareStack in
AllowedHostsOriginValidator). An anonymous socket, or a user with no tenant, is refused;
the tenant is the one chosen in the session (the header's switcher), and the user's
membership of it is checked at connect and again at most every MEMBERSHIP_RECHECK seconds
while events flow (a removed member stops receiving).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer

from billing.usagerow import TOKEN_FIELDS, error_class, status_class

log = logging.getLogger(__name__)

LIVE_MAX_ROWS = 50
MEMBERSHIP_RECHECK = 60.0
PUBLISH_TIMEOUT = 2.0
_last_failure_log = 0.0


def group_name(tenant_id: int) -> str:
    return f"tenant-{tenant_id}"


def _row(e: Any) -> dict[str, Any]:
    return {
        "request_id": e.request_id, "created_at": e.created_at.isoformat(),
        "model": e.model, "key_id": e.key_id, "key_prefix": e.key_prefix,
        "endpoint": e.endpoint, "status": e.status_code, "error_code": e.error_code,
        "status_class": status_class(e.status_code, e.error_code),
        "stream": e.stream, "cost": str(e.cost), "input_tokens": e.input_tokens,
        "cached_tokens": e.cached_tokens, "output_tokens": e.output_tokens,
        "reasoning_tokens": e.reasoning_tokens, "latency_ms": e.latency_ms,
        "ttfb_ms": e.ttfb_ms,
    }


def messages_for(rows: Iterable[Any]) -> dict[int, dict[str, Any]]:
    """One channel-layer message per tenant for a batch of written usage rows (events of
    billing.usage.UsageEvent); rows without a tenant are nobody's to see."""
    by_tenant: dict[int, list[Any]] = {}
    for e in rows:
        if e.tenant_id is not None:
            by_tenant.setdefault(e.tenant_id, []).append(e)
    out = {}
    for tenant_id, mine in by_tenant.items():
        totals: dict[str, Any] = {"requests": len(mine),
                                  "errors": sum(1 for e in mine
                                                if error_class(e.status_code, e.error_code))}
        for name in TOKEN_FIELDS:
            totals[name] = sum(getattr(e, name) for e in mine)
        totals["cost"] = str(sum((e.cost for e in mine), Decimal(0)))
        newest = sorted(mine, key=lambda e: e.created_at)[-LIVE_MAX_ROWS:]
        out[tenant_id] = {"type": "usage.batch", "tenant": tenant_id, "count": len(mine),
                          "totals": totals, "rows": [_row(e) for e in newest]}
    return out


async def _send_all(messages: dict[int, dict[str, Any]]) -> None:
    import asyncio

    layer = get_channel_layer()
    if layer is None:
        return
    for tenant_id, message in messages.items():
        await asyncio.wait_for(layer.group_send(group_name(tenant_id), message),
                               PUBLISH_TIMEOUT)


def publish_usage(rows: list[Any]) -> None:
    """Send the batch's live events (sync; the usage writer's worker thread). Never
    raises."""
    global _last_failure_log
    if not rows:
        return
    try:
        from django.conf import settings

        if not getattr(settings, "PORTAL_LIVE", True):
            return
        messages = messages_for(rows)
        if messages:
            async_to_sync(_send_all)(messages)
    except Exception as exc:
        from portal.infra.redishealth import is_outage

        now = time.monotonic()
        if now - _last_failure_log > 60:
            _last_failure_log = now
            # Redis away is an outage, logged once by whoever notices it first; anything
            # else is a bug worth its traceback.
            outage = is_outage(exc) or isinstance(exc, TimeoutError)
            log.warning("could not publish live usage events (usage rows are written): %s",
                        f"{type(exc).__name__}: {exc}" if outage else "", exc_info=not outage)


# --- the consumer -------------------------------------------------------------------------

def _tenant_for(user: Any, chosen: Any) -> int | None:
    """The tenant the portal shows this user (portal.tenancy's rule: the session's choice if
    the user is a member, else the first by name); None without a membership."""
    from portal.tenancy import memberships

    mine = memberships(user)
    for m in mine:
        if m.tenant_id == chosen:
            return m.tenant_id
    return mine[0].tenant_id if mine else None


def _is_member(user_id: int, tenant_id: int) -> bool:
    from keys.models import Membership

    return Membership.objects.filter(user_id=user_id, tenant_id=tenant_id).exists()


class LiveConsumer(AsyncJsonWebsocketConsumer):
    """``/ws/portal/live/``: the usage events of the session's tenant, as JSON."""

    group: str | None = None
    tenant_id: int | None = None
    checked_at = 0.0

    async def connect(self) -> None:
        from portal.tenancy import SESSION_KEY

        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        session = self.scope.get("session")
        chosen = session.get(SESSION_KEY) if session is not None else None
        self.tenant_id = await database_sync_to_async(_tenant_for)(user, chosen)
        if self.tenant_id is None:
            await self.close(code=4403)
            return
        self.group = group_name(self.tenant_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        self.checked_at = time.monotonic()
        await self.accept()
        await self.send_json({"type": "hello", "tenant": self.tenant_id})

    async def disconnect(self, code: int) -> None:
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong"})

    async def usage_batch(self, event: dict[str, Any]) -> None:
        if event.get("tenant") != self.tenant_id:  # belt and braces: the group is per tenant
            return
        if time.monotonic() - self.checked_at > MEMBERSHIP_RECHECK:
            user = self.scope["user"]
            if not await database_sync_to_async(_is_member)(user.pk, self.tenant_id):
                await self.close(code=4403)
                return
            self.checked_at = time.monotonic()
        await self.send_json({"type": "usage", "tenant": event["tenant"],
                              "count": event["count"], "totals": event["totals"],
                              "rows": event["rows"]})
