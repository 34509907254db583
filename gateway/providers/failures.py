"""What an upstream failure means for routing, apart from what the client is told.

The provider layer classifies a failed attempt (``classify``: by the HTTP status the upstream
answered, or the one its error stands for); routing (``gateway.exchange.run``) acts on the
classification: try the next credential or the next upstream, cool or disable the credential,
or stop because the request itself is at fault. The client-facing error travels alongside,
untouched, and only the pipeline renders it, once routing has given up.

    status               meaning              routing does
    401, 403             CREDENTIAL_REFUSED   disable the credential, try the next route
    429                  rate_limited(s)      cool the credential s seconds (Retry-After, else
                                              GATEWAY_COOLDOWN_SECONDS), try the next route
    5xx, no answer,      NEXT_UPSTREAM        skip the rest of this upstream's credentials
    bad answer, 3xx
    other 4xx            CLIENT_FAULT         nothing else: another upstream would answer alike
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.errors import GatewayError


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    # Try another route: "credential" (the next one, this upstream's included), "upstream"
    # (skip this upstream's other credentials too); None: the request's own fault.
    retry: Literal["credential", "upstream"] | None
    cool: bool = False  # cool the credential down
    cool_for: float | None = None  # for this long (the upstream asked); None: the default
    disable: bool = False  # the upstream refused the credential: disable it


CLIENT_FAULT = UpstreamFailure(retry=None)
NEXT_UPSTREAM = UpstreamFailure(retry="upstream")
CREDENTIAL_REFUSED = UpstreamFailure(retry="credential", disable=True)


def rate_limited(asked: float | None) -> UpstreamFailure:
    return UpstreamFailure(retry="credential", cool=True, cool_for=asked)


def classify(status: int, retry_after: float | None = None) -> UpstreamFailure:
    """The meaning of an attempt that failed with ``status`` (the upstream's HTTP status, or
    for an error inside a 2xx answer, the status it stands for; 502/504 for an answer that
    never came or was not the protocol's)."""
    if status in (401, 403):
        return CREDENTIAL_REFUSED
    if status == 429:
        return rate_limited(retry_after)
    if status >= 500 or 300 <= status < 400:
        return NEXT_UPSTREAM
    return CLIENT_FAULT


class UpstreamFailed(Exception):
    """An attempt failed before the client got a byte: ``failure`` is for routing, ``error``
    what the client is told if no other route answers."""

    def __init__(self, failure: UpstreamFailure, error: GatewayError) -> None:
        super().__init__(error.message)
        self.failure = failure
        self.error = error
