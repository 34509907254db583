"""Process tuning that needs no launcher, applied when the ASGI application loads.

``portal.asgi`` calls ``apply()`` at the end of its import, so ``daphne
portal.asgi:application`` gets the same Content-Type shortcut and settled heap as ``python
-m portal.server`` (which imports portal.asgi itself, before daphne runs). Only uvloop needs
the launcher: it must be the event-loop policy before daphne.server is imported, which
``django.setup()`` already does (daphne is an installed app). Both steps are idempotent:
importing or applying twice changes nothing.
"""

from __future__ import annotations

import gc

# Young-generation threshold once the heap is frozen (CPython's default is 700).
GC_THRESHOLD = (50_000, 20, 100)

_heap_settled = False


def apply() -> None:
    speed_up_twisted_content_type()
    settle_the_heap()


def speed_up_twisted_content_type() -> None:
    """Twisted parses every request's Content-Type with the email package only to compare it
    with the two form types it decodes; profiled, that was ~9% of a /v1 request's CPU. The
    same answer for those comparisons, without the email machinery. Twisted looks the
    function up at call time, so patching after daphne imported twisted.web.http works."""
    from twisted.web import http

    if http._parseContentType is parse_content_type:
        return
    http._parseContentType = parse_content_type


def parse_content_type(line: bytes) -> bytes:
    """The media type, lower-cased, without parameters; ``text/plain`` when there is none
    (what Twisted's own parser answers for a missing or malformed type)."""
    key = line.split(b";", 1)[0].strip().lower()
    return key if b"/" in key else b"text/plain"


def settle_the_heap() -> None:
    """With the application loaded, move everything loaded so far out of the garbage
    collector's sight (gc.freeze) and collect young objects less often: Django's object
    graph otherwise makes full collections pause the event loop for milliseconds, which is
    what a single client sees as its p99 latency. Once per process: a second freeze would
    also pin whatever the first requests allocated."""
    global _heap_settled
    if _heap_settled:
        return
    _heap_settled = True
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
