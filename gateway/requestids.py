"""The ids a client may send with a request: ``x-request-id`` and W3C ``traceparent``.

Turnpike's own request id (``req_<hex>``, ``RelayContext.request_id``) is always its own:
the usage row's unique key and the limiter's and the ledger's idempotency key, so a
client-chosen id never takes its place (a client reusing one would otherwise lose rows or
charges). A valid client id is kept beside it (``client_request_id``: echoed back as
``x-request-id``, with Turnpike's own as ``x-turnpike-request-id``, stored on the usage row
and logged). One that is not valid is ignored, not refused.

``traceparent`` (https://www.w3.org/TR/trace-context/) gives the trace id the access line
carries, and the parent of the request's span when tracing is on (``gateway.tracing``).
"""

from __future__ import annotations

import re

# Printable, no spaces, quotes, commas or semicolons: safe in a header, a log line and a
# search box. UUIDs, ULIDs, "req_…", base64 and dotted or slashed ids all fit.
CLIENT_ID_MAX = 64
_CLIENT_ID = re.compile(rb"[A-Za-z0-9._:+=@/-]{1,%d}" % CLIENT_ID_MAX)
# version-traceid-parentid-flags; version ff is invalid, and an all-zero id is invalid.
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def client_request_id(raw: bytes) -> str:
    """The client's ``x-request-id`` if it is valid (1 to 64 characters of a conservative
    set, surrounding spaces ignored), else ""."""
    raw = raw.strip()
    return raw.decode("ascii") if _CLIENT_ID.fullmatch(raw) else ""


def parse_traceparent(raw: bytes) -> tuple[str, str, bool] | None:
    """(trace id, parent span id, sampled) from a ``traceparent`` header, or None when it
    is not valid. A version-00 header is exactly 55 characters; a later version may carry
    more after the four fields (read as version 00, as the specification asks)."""
    raw = raw.strip()
    match = _TRACEPARENT.match(raw)
    if match is None:
        return None
    version, trace_id, span_id, flags = (g.decode("ascii") for g in match.groups())
    if version == "ff" or (version == "00" and len(raw) != 55) or (
            len(raw) > 55 and raw[55:56] != b"-"):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return trace_id, span_id, bool(int(flags, 16) & 1)
