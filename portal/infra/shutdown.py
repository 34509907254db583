"""Work to finish before a daphne process stops (Twisted's reactor on asyncio)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


def before_reactor_shutdown(work: Callable[[], Awaitable[None]]) -> None:
    """Run ``work()`` in the "before shutdown" phase of daphne's reactor, which waits for
    it. Twisted runs these triggers concurrently. Outside daphne (no running reactor), a
    no-op."""
    try:
        from twisted.internet import reactor
        from twisted.internet.defer import Deferred
    except ImportError:
        return
    if not getattr(reactor, "running", False):
        return
    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: Deferred.fromFuture(asyncio.ensure_future(work())))
