"""Charging one admitted request: price what its exchange came to and settle it with the
limiter (free the concurrency slot, close the reservation, charge the balance and the key's
quota, renew the session binding, journal the usage row).

The settle is awaited just before the answer's last bytes go out: the pipeline hands
``Settlement`` to the exchange as its ``settle`` step, and the sender calls it right before
writing them (``respond.send_json``, ``end_stream``, ``abort_stream``). So a client that has
its whole answer finds its slot free on any process, and a crash after that point loses
nothing. One Redis round trip, which the answer waits for (measured in BENCHMARKS.md). An
error answer is settled the same way as it is sent, and a client that left is settled by the
pipeline as soon as it is noticed (usage counted if unreported); only a request cut off
before either (cancelled, say at shutdown) is settled in the background by ``later()``."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from gateway import policy
from gateway.estimate import estimate_if_needed
from gateway.outcome import Outcome

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from billing.usage import UsageEvent


class Settlement:
    """``await settle()``: price and settle, once. ``await settle.price()``: the cost alone
    (idempotent, so a stream can announce it in its last event and settling, just after,
    charges the same amount)."""

    __slots__ = ("ticket", "outcome", "payload", "row", "cost", "done", "stage")

    def __init__(self, ticket: policy.Ticket, outcome: Outcome, payload: dict[str, Any],
                 row: Callable[[], UsageEvent],
                 stage: Callable[[], Awaitable[None]] | None = None) -> None:
        self.ticket = ticket
        self.outcome = outcome
        self.payload = payload
        self.row = row  # the request's usage row as it stands when settled
        self.cost = Decimal(0)
        self.done = False
        # Run with the settle, concurrently (their Redis calls share one round trip): the
        # stored response's staging (gateway.stored.chain.Turn.stage).
        self.stage = stage

    async def price(self) -> Decimal:
        """What the request is charged: counted tokens when the upstream reported none
        (the tokenizer runs in a thread then), priced by the ticket."""
        await estimate_if_needed(self.outcome, self.payload)
        self.cost = policy.charge(self.ticket, self.outcome.usage, self.outcome.served)
        return self.cost

    async def __call__(self) -> Decimal:
        if not self.done:
            out = self.outcome
            if out.usage is None and out.served:  # price(), without a coroutine when no
                await self.price()                # estimate is needed (the usual case)
            else:
                self.cost = policy.charge(self.ticket, out.usage, out.served)
            self.done = True
            settling = policy.settle(self.ticket, self.cost, self.outcome.usage,
                                     self.outcome.binding, self.row())
            if self.stage is None:
                await settling
            else:
                await asyncio.gather(settling, self.stage())
        return self.cost

    def later(self) -> None:
        """Settle in the background, where a cancelled request cannot interrupt it (no
        estimate: the answer did not end normally)."""
        if self.done:
            return
        self.done = True
        self.cost = policy.charge(self.ticket, self.outcome.usage, self.outcome.served)
        policy.settle_later(self.ticket, self.cost, self.outcome.usage, self.outcome.binding,
                            self.row())
