"""Body capture on the request path: cheap by design. ``begin`` keeps a reference to the
headers and a slice of the body; ``Capture.response`` appends what the client is sent until
the cap; ``finish`` queues it all for the writer. Redaction, decoding and storing happen
later, in the writer's thread (``gateway.capture.store``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.conf import settings

from gateway.capture import store
from gateway.capture.records import RawCapture

if TYPE_CHECKING:
    from gateway.context import RelayContext
    from keys.snapshots import KeySnapshot

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Capture:
    """One request's capture while it is served (``RelayContext.capture``)."""

    limit: int  # GATEWAY_CAPTURE_MAX_BYTES, for the request and the response each
    path: str
    headers: dict[bytes, bytes]
    request: bytes  # the body as received, cut at ``limit``
    request_bytes: int
    chunks: list[bytes] = field(default_factory=list)
    kept: int = 0  # bytes of the response kept (at most ``limit``)
    sent: int = 0  # bytes of the response sent

    def response(self, data: bytes) -> None:
        """Bytes the client is sent: a JSON body, or a stream's next frames."""
        self.sent += len(data)
        room = self.limit - self.kept
        if room > 0:
            piece = data if len(data) <= room else data[:room]
            self.chunks.append(piece)
            self.kept += len(piece)


def begin(ctx: RelayContext, key: KeySnapshot, body: bytes) -> Capture | None:
    """A capture for this request if body capture is on for its key now (its window has
    not ended) and GATEWAY_CAPTURE_BODIES allows it. ``body``: as received."""
    if not key.captures_bodies() or not settings.GATEWAY_CAPTURE_BODIES:
        return None
    limit = max(0, int(settings.GATEWAY_CAPTURE_MAX_BYTES))
    return Capture(limit=limit, path=ctx.path, headers=ctx.headers,
                   request=body[:limit], request_bytes=len(body))


def finish(ctx: RelayContext) -> None:
    """Queue the request's capture for the writer, once its answer is over (whatever it
    was: an error, a stream cut short). Never raises, never waits."""
    capture, key = ctx.capture, ctx.key
    if capture is None or key is None:
        return
    try:
        store.queue(RawCapture(
            request_id=ctx.request_id, tenant_id=key.tenant_id, key_id=key.key_id,
            created_at=ctx.started_at.timestamp(),
            method="POST",  # relay() serves POST alone (pipeline.ENDPOINTS)
            path=capture.path, status=ctx.status or 500, stream=ctx.stream,
            headers=capture.headers, request=capture.request,
            request_bytes=capture.request_bytes, response=b"".join(capture.chunks),
            response_bytes=capture.sent))
    except Exception:  # a capture must never cost the request anything
        log.exception("could not queue the body capture of %s", ctx.request_id)
