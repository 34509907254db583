"""Outcome: what one request's exchange with its upstreams came to. Written by
``gateway.exchange``, read by the settlement (``gateway.charging``) and the usage row; the
settlement adds only the usage Turnpike counts when the upstream reported none
(``gateway.estimate``, which marks it ``estimated``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.routing import Route
from gateway.wire.usage import Usage


@dataclass(slots=True)
class Outcome:
    route: Route | None = None  # the route tried last (the one that answered, if any)
    attempts: list[dict[str, Any]] = field(default_factory=list)  # every route tried
    usage: Usage | None = None  # as the upstream reported it (or Turnpike counted it)
    # The upstream delivered something usable: the request is charged. False for a failure
    # before anything reached the client (an HTTP error, possibly failed over).
    served: bool = False
    error_code: str = ""  # a failure after the first byte (the stream ended with its error)
    relayed: Callable[[], str] | None = None  # text relayed so far (for estimating usage)
    estimated: bool = False  # usage counted by Turnpike, not reported by the upstream

    @property
    def binding(self) -> str | None:
        """The route to bind the session to: the one that served it (re-set to renew its
        TTL)."""
        return self.route.binding if self.route is not None and self.served else None
