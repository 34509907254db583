"""Usage for requests the upstream never reported on (a stream cut short, a client that
left): Turnpike counts the tokens of the request and of what it relayed, so a disconnecting
client is still charged for what was generated. The row is marked ``estimated``."""

from __future__ import annotations

import asyncio

from billing.tokens import count_tokens, request_text
from gateway.outcome import Outcome
from gateway.wire.usage import Usage


async def estimate_if_needed(out: Outcome, payload: dict | None) -> None:
    if out.usage is not None or not out.served or payload is None:
        return
    relayed = out.relayed() if out.relayed is not None else ""
    out.usage = await asyncio.to_thread(_estimate, payload, relayed)
    out.estimated = True


def _estimate(payload: dict, relayed: str) -> Usage:
    return Usage(input_tokens=count_tokens(request_text(payload)),
                 output_tokens=count_tokens(relayed))
