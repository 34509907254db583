"""Server-sent events: split a byte stream into whole events, and encode events.

The relay forwards upstream events byte for byte (CRLF normalised to LF), so it only needs
to know where each event ends and, for the few events it inspects, what their data is.
"""

from __future__ import annotations

from typing import Any

import orjson

DONE = b"[DONE]"


class SseSplitter:
    """Feed raw chunks; get back the complete events (without their blank-line end)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf + chunk
        if b"\r" in buf:
            # A CRLF split across two chunks leaves "\r" at the end of the buffer; it is
            # joined with its "\n" on the next feed, so replacing on the whole buffer is exact.
            buf = buf.replace(b"\r\n", b"\n")
        parts = buf.split(b"\n\n")
        self._buf = parts.pop()
        return [p for p in parts if p]

    def feed_block(self, chunk: bytes) -> bytes | None:
        """For a relay that passes events on unchanged: the whole events received so far as
        one block of bytes (b"" while there is none), or None when the block is not simply
        events each ended by one blank line (a run of blank lines, or a buffer starting
        with one); ``feed(b"")`` then splits what was received as ``feed`` would.

        A block is exactly what joining ``feed``'s events, each with its blank line, would
        give, and holds ``block.count(b"\\n\\n")`` events: it is taken with two searches,
        not one list of events."""
        buf = received = self._buf + chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._buf = buf
            return b""
        block, rest = buf[:end + 2], buf[end + 2:]
        if block.startswith(b"\n") or rest.startswith(b"\n") or b"\n\n\n" in block:
            self._buf = received  # as received: feed normalises it once, as always
            return None
        self._buf = rest
        return block

    def buffered(self) -> int:
        """Bytes held that are not a whole event yet."""
        return len(self._buf)

    def rest(self) -> bytes:
        """What is left after the stream ended: an event that lacked its final blank line."""
        rest, self._buf = self._buf.strip(b"\n"), b""
        return rest


def split_events(blocks: list[bytes]) -> list[bytes]:
    """The events of blocks of whole events (as ``SseSplitter.feed_block`` gives them, or
    single events), without their blank lines."""
    return [event for block in blocks for event in block.split(b"\n\n") if event]


def event_data(event: bytes) -> bytes | None:
    """The payload of an event's ``data:`` lines (joined by LF), or None if it has none."""
    if event.startswith(b"data:") and b"\n" not in event:  # the common one-line case
        return event[5:].lstrip(b" ")
    lines = [
        line[5:].lstrip(b" ") if line.startswith(b"data:") else None
        for line in event.split(b"\n")
    ]
    data = [line for line in lines if line is not None]
    return b"\n".join(data) if data else None


def event_name(event: bytes) -> str | None:
    """The ``event:`` field, when the event has one."""
    for line in event.split(b"\n"):
        if line.startswith(b"event:"):
            return line[6:].strip().decode("utf-8", "replace")
    return None


def event_json(event: bytes) -> Any:
    data = event_data(event)
    if data is None or data == DONE:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def encode(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"
