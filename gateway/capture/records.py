"""A captured exchange as the request path leaves it (``RawCapture``: bytes, nothing done
to them yet) and as it is stored (``seal``: text, cut at the size cap, credentials
redacted), and the JSON form the Redis journal holds."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.capture.redact import redact_text, safe_headers
from keys import authn


@dataclass(frozen=True, slots=True)
class RawCapture:
    request_id: str
    tenant_id: int
    key_id: int | None
    created_at: float  # unix seconds, when the request arrived
    method: str
    path: str
    status: int
    stream: bool
    headers: dict[bytes, bytes]  # as received (credentials included: dropped by seal)
    request: bytes  # the body as received, cut at the cap
    request_bytes: int  # its whole size
    response: bytes  # what the client was sent, cut at the cap
    response_bytes: int  # everything it was sent


def _text(data: bytes, secrets: tuple[str, ...]) -> str:
    """Bytes as text PostgreSQL can hold (a cut in the middle of a UTF-8 character, or
    bytes that are no UTF-8, become U+FFFD; so does a NUL), credentials redacted."""
    text = data.decode("utf-8", "replace").replace("\x00", "\ufffd")
    return redact_text(text, secrets)


def seal(raw: RawCapture) -> dict[str, Any]:
    """The row to store (CPU: run it off the event loop). The key the request presented is
    redacted by its exact value as well as by its shape."""
    secret = authn.secret_from_asgi(raw.headers)
    secrets = (secret,) if secret else ()
    headers = safe_headers(
        ((name.decode("latin-1"), value.decode("latin-1").replace("\x00", "\ufffd"))
         for name, value in raw.headers.items()), secrets)
    return {
        "request_id": raw.request_id, "tenant_id": raw.tenant_id, "key_id": raw.key_id,
        "created_at": raw.created_at, "method": raw.method, "path": raw.path[:500],
        "status": raw.status, "stream": raw.stream, "request_headers": headers,
        "request_body": _text(raw.request, secrets), "request_bytes": raw.request_bytes,
        "request_truncated": raw.request_bytes > len(raw.request),
        "response_body": _text(raw.response, secrets), "response_bytes": raw.response_bytes,
        "response_truncated": raw.response_bytes > len(raw.response),
    }


def encode(row: dict[str, Any]) -> bytes:
    """A sealed row as the Redis journal holds it."""
    return orjson.dumps(row)


def decode(doc: bytes) -> dict[str, Any]:
    return dict(orjson.loads(doc))


def model_values(row: dict[str, Any]) -> dict[str, Any]:
    """A sealed row as ``CapturedExchange`` field values."""
    return {**row, "created_at": datetime.fromtimestamp(row["created_at"], UTC)}
