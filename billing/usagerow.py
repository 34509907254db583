"""The usage row, one definition: what one /v1 request leaves in the usage log.

``UsageEvent`` is the row. Everything that needs the row's fields takes them from here:

    FIELDS          the columns, in the record's order: ``billing.usage`` COPYs exactly these
                    (``db_values`` gives a row's values in this order) and builds the ORM
                    fallback's rows from them; the ``UsageLog`` model has exactly these
                    columns besides ``id`` (``tests/fast/test_usage_row.py`` checks it)
    LINKS           the foreign keys among them and the model each points to (the writer
                    clears a link whose row was deleted while the request ran)
    TEXT_LIMITS     the text the client chooses, cut to its column's length on the way in
    TOKEN_FIELDS    the four token counts (summed by rollups, totals and live events)
    MEMBER_FIELDS   what a tenant's member may see of a row: no upstream, credential,
                    attempts, client address or user agent
    MODEL_FIELDS    FIELDS as the model's field names (``key`` for ``key_id``), for
                    serializers that expose the whole row (the operations API)
    encode/decode   the journal's wire format (the Redis usage journal, ``usage:dead``, the
                    settle script's argument): one JSON object per row, keyed by field name,
                    ``created_at`` in ISO 8601, ``cost`` as a decimal string. Rows journalled
                    by an older release decode unchanged; a field the reader does not know
                    is ignored, and one the row lacks takes its default.

``gateway.context.RelayContext.usage_event`` fills the row for a request; ``billing.usage``
writes it. This module imports nothing from the gateway (billing sits below it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal
from operator import attrgetter
from typing import Any

import orjson


@dataclass(slots=True)
class UsageEvent:
    created_at: datetime
    request_id: str
    endpoint: str
    status_code: int
    key_id: int | None = None
    key_prefix: str = ""
    tenant_id: int | None = None
    model: str = ""
    upstream_id: int | None = None
    credential_id: int | None = None
    error_code: str = ""
    stream: bool = False
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost: Decimal = field(default_factory=Decimal)
    latency_ms: int = 0
    ttfb_ms: int | None = None
    client_ip: str | None = None
    user_agent: str = ""
    attempts: list[dict[str, object]] = field(default_factory=list)
    estimated: bool = False
    # The client's own x-request-id, when it sent a valid one (never unique: clients reuse).
    client_request_id: str = ""


FIELDS: tuple[str, ...] = tuple(f.name for f in fields(UsageEvent))
LINKS: dict[str, str] = {"key_id": "keys.ApiKey", "tenant_id": "keys.Tenant",
                         "upstream_id": "gateway.Upstream",
                         "credential_id": "gateway.Credential"}
TEXT_LIMITS: dict[str, int] = {"model": 200, "error_code": 64, "user_agent": 300,
                                "client_request_id": 64}
TOKEN_FIELDS = ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens")
# The errors by class: an upstream error is an answer whose error code says the upstream
# failed, was unreachable, timed out, refused Turnpike's credential, answered what could not
# be read, or broke its stream off (whatever the status: a stream cut after its 200 went out
# keeps that status); client and server errors are the other 4xx and 5xx answers. So the
# three never overlap, and together they are the errors: every answer with status >= 400 or
# an upstream code. billing.rollups has the same as database filters.
UPSTREAM_CODES = ("upstream_error", "upstream_unavailable", "upstream_timeout",
                  "upstream_stream_cut", "upstream_bad_response", "upstream_auth_failed")


def error_class(status_code: int, error_code: str) -> str | None:
    """The class of one row (``client_errors``, ``server_errors``, ``upstream_errors``);
    None for a success."""
    if error_code in UPSTREAM_CODES:
        return "upstream_errors"
    if status_code >= 500:
        return "server_errors"
    return "client_errors" if status_code >= 400 else None


def status_class(status_code: int, error_code: str) -> str:
    """What the usage log's status filter and badge call the row: ``success``,
    ``client_error`` or ``upstream_error`` (a server or upstream error, e.g. a stream the
    upstream broke off after its 200 went out)."""
    found = error_class(status_code, error_code)
    return ("success" if found is None else "client_error" if found == "client_errors"
            else "upstream_error")


MEMBER_FIELDS = ("request_id", "created_at", "model", "endpoint", "status_code",
                 "error_code", "stream", *TOKEN_FIELDS, "cost", "latency_ms", "ttfb_ms",
                 "estimated")
MODEL_FIELDS: tuple[str, ...] = tuple(name.removesuffix("_id") if name in LINKS else name
                                      for name in FIELDS)

_values = attrgetter(*FIELDS)
_CUTS = tuple((FIELDS.index(name), limit) for name, limit in TEXT_LIMITS.items())
_ATTEMPTS = FIELDS.index("attempts")
_KNOWN = frozenset(FIELDS)


def db_values(e: UsageEvent, *, attempts_as_text: bool = True) -> list[Any]:
    """The row's values in FIELDS order, as the database takes them: client-chosen text cut
    to its column, the attempts as JSON text (COPY) or as they are (the ORM's JSONField).
    One C-level attribute fetch for the whole row: the writer runs this per row while
    holding the GIL."""
    row = list(_values(e))
    for index, limit in _CUTS:
        row[index] = row[index][:limit]
    if attempts_as_text:
        row[_ATTEMPTS] = orjson.dumps(row[_ATTEMPTS]).decode()
    return row


def encode(e: UsageEvent) -> bytes:
    """A row as the journal holds it: orjson writes the dataclass itself (times as RFC 3339),
    the cost as a decimal string; half the time of building a dict first."""
    return orjson.dumps(e, default=str)


def decode(raw: bytes | str) -> UsageEvent:
    """A journalled row back (any release's: see the module docstring)."""
    data = orjson.loads(raw)
    known = {name: value for name, value in data.items() if name in _KNOWN}
    known["created_at"] = datetime.fromisoformat(str(known["created_at"]))
    known["cost"] = Decimal(str(known.get("cost", "0")))
    return UsageEvent(**known)
