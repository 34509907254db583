"""RelayContext: the typed state of one /v1 request, from arrival to its usage row.

Written by the pipeline (who the client is, what it asked for, how it is charged) and by
``gateway.respond`` (what has been sent). What the upstream exchange came to is its own
record, ``outcome`` (``gateway.outcome.Outcome``), written by ``gateway.exchange`` (and by
the settlement's estimate, for usage the upstream never reported)."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from billing.usage import UsageEvent
from gateway.outcome import Outcome
from gateway.policy import Ticket
from gateway.requestids import client_request_id
from gateway.validate import printable
from keys.snapshots import KeySnapshot

if TYPE_CHECKING:
    from gateway.capture.recorder import Capture
    from gateway.charging import Settlement
    from gateway.stored.chain import Turn
    from gateway.tracing import Trace


@dataclass(slots=True)
class RelayContext:
    request_id: str
    endpoint: str
    started: float  # perf_counter
    started_at: datetime
    client_ip: str | None
    user_agent: str
    headers: dict[bytes, bytes]
    path: str = ""  # as requested (/v1/chat/completions, /codex/v1/responses …)
    key: KeySnapshot | None = None
    model: str = ""
    effort: str | None = None  # from a model-name suffix (gpt-5-high)
    stream: bool = False
    status: int = 0
    error_code: str = ""
    first_byte_at: float | None = None
    client_gone: bool = False
    ticket: Ticket | None = None  # set once the policy admitted the request
    settlement: Settlement | None = None  # how an admitted request is charged
    extra_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    outcome: Outcome = field(default_factory=Outcome)  # the upstream exchange's record
    stream_open: bool = False  # an SSE response has started and not yet ended
    # SSE events sent so far (the next Responses sequence_number; the trace's stream span):
    # counted on Responses streams and traced requests only (gateway.respond.send_chunk)
    events_sent: int = 0
    turn: Turn | None = None  # a /v1/responses request the store follows (gateway.stored)
    capture: Capture | None = None  # set while body capture is on for the key (gateway.capture)
    method: str = ""
    client_request_id: str = ""  # the client's valid x-request-id (gateway.requestids)
    trace: Trace | None = None  # its trace (gateway.tracing), when traced or traceparent sent

    @classmethod
    def start(cls, scope: dict[str, Any], endpoint: str) -> RelayContext:
        headers = dict(scope["headers"])
        client = scope.get("client")
        client_id = headers.get(b"x-request-id")
        return cls(
            # 128 bits of the process's generator (reseeded in a forked child), as
            # gateway.stored.records.new_id: uuid4 is a getrandom() system call per request.
            request_id=f"req_{random.getrandbits(128):032x}",
            endpoint=endpoint,
            path=scope.get("path", ""),
            started=time.perf_counter(),
            started_at=datetime.now(UTC),
            client_ip=client[0] if client else None,
            user_agent=headers.get(b"user-agent", b"").decode("latin-1"),
            headers=headers,
            method=scope.get("method", "GET"),  # a WebSocket scope has none: its upgrade is a GET
            client_request_id=client_request_id(client_id) if client_id else "",
        )

    def mark_first_byte(self) -> None:
        if self.first_byte_at is None:
            self.first_byte_at = time.perf_counter()

    def elapsed_ms(self, until: float | None = None) -> int:
        return int(((until or time.perf_counter()) - self.started) * 1000)

    def usage_event(self) -> UsageEvent:
        """The request's usage row as it stands now (the one place a row is described).
        Client-chosen text is cleaned of control characters: one NUL would make PostgreSQL
        refuse the row."""
        key, out = self.key, self.outcome
        usage, route = out.usage, out.route
        cost = self.settlement.cost if self.settlement is not None else Decimal(0)
        return UsageEvent(
            created_at=self.started_at,
            request_id=self.request_id,
            endpoint=self.endpoint,
            status_code=self.status or 500,
            key_id=key.key_id if key else None,
            key_prefix=key.prefix if key else "",
            tenant_id=key.tenant_id if key else None,
            model=printable(self.model),
            upstream_id=route.upstream.id if route else None,
            credential_id=route.credential.id if route and route.credential else None,
            error_code=printable(out.error_code or self.error_code),
            stream=self.stream,
            input_tokens=usage.input_tokens if usage else 0,
            cached_tokens=usage.cached_tokens if usage else 0,
            output_tokens=usage.output_tokens if usage else 0,
            reasoning_tokens=usage.reasoning_tokens if usage else 0,
            cost=cost,
            latency_ms=self.elapsed_ms(),
            ttfb_ms=self.elapsed_ms(self.first_byte_at) if self.first_byte_at else None,
            client_ip=self.client_ip,
            user_agent=printable(self.user_agent),
            attempts=out.attempts,
            estimated=out.estimated,
            client_request_id=self.client_request_id,
        )
