"""Work to finish before a daphne process stops (Twisted's reactor on asyncio), and the
process-wide "draining" flag: set as the process starts shutting down (SIGTERM, SIGINT),
so /readyz answers 503 from then on and load balancers stop sending it requests.

The graceful drain itself (``portal.drain``: finish the requests in flight, then cut what is
left) runs in the same phase; the work given to ``before_reactor_shutdown`` (flushing the
usage rows, closing upstream sessions) waits for it, so what the drained requests wrote is
flushed too."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable

log = logging.getLogger("turnpike.shutdown")

_draining = False
_watching = False
_drained: asyncio.Future[None] | None = None  # while a drain runs: done when it is over
# Shutdown work registered once the "before shutdown" phase had begun (a writer first used
# during the drain): Twisted no longer calls triggers added then, so the drain runs these.
_late: list[Callable[[], Awaitable[None]]] = []


def draining() -> bool:
    """Has this process begun shutting down?"""
    return _draining


def start_draining() -> None:
    global _draining
    if not _draining:
        _draining = True
        log.warning("shutting down: draining, /readyz answers 503 from now on")


def stop_draining() -> None:
    """Back to serving (tests)."""
    global _draining
    _draining = False


def drain_on_shutdown() -> None:
    """Set the draining flag first thing when daphne's reactor starts shutting down (a
    "before shutdown" trigger registered ahead of daphne's own, which cancels the requests
    in flight). Only where Twisted's reactor is already installed (daphne imported it):
    importing it here would install the default reactor in its place. Once per process."""
    global _watching
    if _watching or "twisted.internet.reactor" not in sys.modules:
        return
    from twisted.internet import reactor

    reactor.addSystemEventTrigger("before", "shutdown", start_draining)
    _watching = True


def drain_started() -> Callable[[], None]:
    """A drain begins (``portal.drain``): shutdown work waits until the returned callable
    is called."""
    global _drained
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    _drained = done

    def finished() -> None:
        if not done.done():
            done.set_result(None)

    return finished


async def run_late_work() -> None:
    """Run the shutdown work registered since the drain began (the drain calls this last)."""
    while _late:
        work = _late.pop(0)
        try:
            await work()
        except Exception:
            log.exception("shutdown work %r failed", work)


async def drained() -> None:
    """Return once the drain under way, if any, is over."""
    if _drained is not None:
        await asyncio.shield(_drained)


async def after_drain(work: Callable[[], Awaitable[None]]) -> None:
    await drained()
    await work()


def before_reactor_shutdown(work: Callable[[], Awaitable[None]]) -> None:
    """Run ``work()`` in the "before shutdown" phase of daphne's reactor, which waits for
    it, once the drain (if one runs) is over. Twisted runs these triggers concurrently.
    Outside daphne (no running reactor), a no-op."""
    try:
        from twisted.internet import reactor
        from twisted.internet.defer import Deferred
    except ImportError:
        return
    if not getattr(reactor, "running", False):
        return
    if _drained is not None:  # the shutdown's "before" triggers have been called already
        _late.append(work)
        return
    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: Deferred.fromFuture(asyncio.ensure_future(after_drain(work))))
