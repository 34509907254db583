"""RelayContext: the typed state of one /v1 request, from arrival to its usage row."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from gateway.policy import Ticket
from gateway.routing import Route
from gateway.wire.usage import Usage
from keys.snapshots import KeySnapshot


@dataclass(slots=True)
class RelayContext:
    request_id: str
    endpoint: str
    started: float  # perf_counter
    started_at: datetime
    client_ip: str | None
    user_agent: str
    headers: dict[bytes, bytes]
    key: KeySnapshot | None = None
    model: str = ""
    effort: str | None = None  # from a model-name suffix (gpt-5-high)
    stream: bool = False
    route: Route | None = None
    status: int = 0
    error_code: str = ""
    usage: Usage | None = None
    first_byte_at: float | None = None
    client_gone: bool = False
    ticket: Ticket | None = None  # set once the policy admitted the request
    upstream_ok: bool = False  # the upstream answered 2xx: the request is charged
    settled: bool = False
    cost: Decimal = Decimal(0)
    extra_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)  # every upstream tried
    payload: dict[str, Any] | None = None  # the parsed request body
    relayed: Callable[[], str] | None = None  # text relayed so far (for estimating usage)
    estimated: bool = False  # usage counted by Turnpike, not reported by the upstream
    stream_open: bool = False  # an SSE response has started and not yet ended
    events_sent: int = 0  # SSE events sent so far (the next Responses sequence_number)

    @classmethod
    def start(cls, scope: dict[str, Any], endpoint: str) -> RelayContext:
        headers = dict(scope["headers"])
        client = scope.get("client")
        return cls(
            request_id="req_" + uuid.uuid4().hex,
            endpoint=endpoint,
            started=time.perf_counter(),
            started_at=datetime.now(UTC),
            client_ip=client[0] if client else None,
            user_agent=headers.get(b"user-agent", b"").decode("latin-1"),
            headers=headers,
        )

    def mark_first_byte(self) -> None:
        if self.first_byte_at is None:
            self.first_byte_at = time.perf_counter()

    def elapsed_ms(self, until: float | None = None) -> int:
        return int(((until or time.perf_counter()) - self.started) * 1000)
