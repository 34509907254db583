"""Graceful drain of a daphne process on SIGTERM or SIGINT (issue 16), so that a rolling
restart behind a load balancer loses no request, no stream and no usage row.

Twisted's reactor turns the signal into its "before shutdown" phase; daphne's own trigger
there (``Server.kill_all_applications``) cancels every request in flight within
milliseconds. ``install()`` (called by ``portal.tuning.apply()``, so a plain ``daphne
portal.asgi:application`` has it as well as ``python -m portal.server``) makes that trigger
drain first:

    0 s      the draining flag is set (``portal.infra.shutdown``): /readyz answers 503.
             Requests keep being served, each answered with ``Connection: close`` (and a
             request already in flight closes its connection once answered), so no
             connection is kept alive past its answer. Responses WebSockets finish the turn
             they are in and close with 1001; idle ones close now.
    grace    (GATEWAY_DRAIN_GRACE_SECONDS) the load balancer has had time to see /readyz
             fail and stop sending requests: the process stops listening (a new
             connection is refused, which a proxy retries on another server) and closes
             the kept-alive connections with no request on them.
    drain    the requests in flight finish, until GATEWAY_DRAIN_SECONDS after the signal;
             whatever is left then is cut (``gateway.pipeline.cut_all``): an open stream
             ends with its protocol's error event (``server_shutting_down``), charged for
             what was relayed; an answer not started yet is a 503.
    then     the settlements still running (slots released, balances settled) finish; the
             shutdown work waiting on the drain runs (usage, stored and capture writers
             flushed, upstream sessions closed); daphne's own trigger cancels anything
             left (nothing, normally) and the reactor stops: the process exits 0.

Serving during the grace rather than closing the listening socket at once: a load balancer
(or a Kubernetes Service) still routes new requests to the process until its next failed
check, and only some of them retry a refused connection; answered with ``Connection:
close``, those requests cost nothing and leave no idle connection behind to race with.

GATEWAY_DRAIN_SECONDS=0 keeps daphne's behaviour (readiness 503, then everything in flight
cancelled). A second signal changes nothing: the drain is already under way.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

from django.conf import settings

from portal.infra import shutdown

log = logging.getLogger("turnpike.shutdown")

POLL = 0.05  # seconds between two looks at what is still in flight
SETTLE_WAIT = 10.0  # at most this long for the settlements still running, after the drain
CUT_WAIT = 5.0  # at most this long for the requests that were cut to send their last bytes
CLOSE_WAIT = 5.0  # at most this long for the connections to write what they hold and close

_base: dict[str, Any] = {}
_channels: weakref.WeakSet[Any] = weakref.WeakSet()  # HTTP connections (Twisted protocols)
_ports: list[Any] = []  # the listening ports
_drain: asyncio.Future[None] | None = None


def install() -> None:
    """Patch daphne's server: its shutdown trigger drains first; its connections are
    tracked (to close kept-alive idle ones) and so are its listening ports. Idempotent."""
    from daphne import http_protocol, server
    from twisted.web import http

    if server.Server.kill_all_applications is _kill_all_applications:
        return
    _base["kill"] = server.Server.kill_all_applications
    _base["listen_success"] = server.Server.listen_success
    _base["build"] = http_protocol.HTTPFactory.buildProtocol
    _base["persistence"] = http.HTTPChannel.checkPersistence
    server.Server.kill_all_applications = _kill_all_applications
    server.Server.listen_success = _listen_success
    http_protocol.HTTPFactory.buildProtocol = _build_protocol
    http.HTTPChannel.checkPersistence = _check_persistence  # type: ignore[method-assign]


def _listen_success(self: Any, port: Any) -> None:
    _ports.append(port)
    _base["listen_success"](self, port)


def _build_protocol(self: Any, addr: Any) -> Any:
    protocol = _base["build"](self, addr)
    _channels.add(protocol)
    return protocol


def _check_persistence(self: Any, request: Any, version: bytes) -> bool:
    """Draining: every request is the last on its connection (``Connection: close``)."""
    if shutdown.draining():
        request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        return False
    result: bool = _base["persistence"](self, request, version)
    return result


def _kill_all_applications(self: Any) -> Any:
    from twisted.internet.defer import Deferred

    global _drain
    if _drain is None:
        _drain = asyncio.ensure_future(drain(self))

    async def then_kill() -> None:
        assert _drain is not None
        await asyncio.shield(_drain)
        await _base["kill"](self).asFuture(asyncio.get_running_loop())

    return Deferred.fromFuture(asyncio.ensure_future(then_kill()))


async def drain(server: Any) -> None:
    """The drain, step by step (see the module's docstring)."""
    from gateway import pipeline, policy, websocket
    finished = shutdown.drain_started()
    try:
        shutdown.start_draining()
        seconds = settings.GATEWAY_DRAIN_SECONDS
        if seconds <= 0:
            return
        started = time.monotonic()
        deadline = started + seconds
        log.warning("draining: serving for %gs more, then finishing the %d requests in "
                    "flight (at most %gs in all)", settings.GATEWAY_DRAIN_GRACE_SECONDS,
                    _busy(server), seconds)
        _close_after_answer(server)
        websocket.drain()
        grace_end = started + min(settings.GATEWAY_DRAIN_GRACE_SECONDS, seconds)
        await asyncio.sleep(max(grace_end - time.monotonic(), 0.0))
        for port in _ports:
            port.stopListening()
        _close_idle_connections()
        await _until(lambda: not _busy(server), deadline)
        left = _busy(server)
        if left:
            cut = pipeline.cut_all()
            log.warning("drain time (%gs) is up: %d requests still in flight, %d of them "
                        "cut short", seconds, left, cut)
            await _until(lambda: not pipeline.in_flight(), time.monotonic() + CUT_WAIT)
        running = policy.settling()
        if running:  # slots released, balances settled, rows journaled
            await asyncio.wait(running, timeout=SETTLE_WAIT)
        _close_sockets(server)
        await _close_connections(time.monotonic() + CLOSE_WAIT)
        log.warning("drained in %.1fs", time.monotonic() - started)
    except Exception:
        log.exception("the drain failed; shutting down anyway")
    finally:
        try:
            await shutdown.run_late_work()  # e.g. a writer first used during the drain
        finally:
            finished()


async def _until(done: Callable[[], bool], deadline: float) -> None:
    """Look every POLL seconds until ``done()`` or the deadline: what is watched (daphne's
    connections, the requests in flight, Twisted's transports) signals no event."""
    while not done() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(POLL)


def _busy(server: Any) -> int:
    """Requests still being answered: the gateway's (WebSocket turns included) and any
    other HTTP request's application (the portal's pages and APIs)."""
    from daphne.http_protocol import WebRequest

    from gateway import pipeline

    others = 0
    for protocol, details in list(server.connections.items()):
        instance = details.get("application_instance")
        if isinstance(protocol, WebRequest) and instance is not None and not instance.done() \
                and "disconnected" not in details:
            others += 1
    return max(pipeline.in_flight(), others)


def _close_after_answer(server: Any) -> None:
    """The requests in flight as the drain starts are the last on their connections."""
    from daphne.http_protocol import WebRequest

    for protocol in list(server.connections):
        channel = getattr(protocol, "channel", None)  # None once the request is over
        if isinstance(protocol, WebRequest) and channel is not None:
            channel.persistent = False
            if not protocol.startedWriting:
                protocol.responseHeaders.setRawHeaders(b"connection", [b"close"])


def _close_idle_connections() -> None:
    """Kept-alive HTTP connections with no request on them."""
    for transport in _http_transports():
        if not getattr(transport.protocol._channel, "requests", None):
            transport.loseConnection()


def _http_transports() -> list[Any]:
    """The transports of the HTTP connections still open (not those upgraded to a
    WebSocket: their transport belongs to the socket now)."""
    found = []
    for wrapper in list(_channels):
        channel = getattr(wrapper, "_channel", wrapper)
        transport = getattr(channel, "transport", None)
        if transport is None or getattr(transport, "protocol", None) is not wrapper or \
                getattr(transport, "disconnected", False):
            continue
        found.append(transport)
    return found


async def _close_connections(deadline: float) -> None:
    """Close every HTTP connection and wait until each has written what it holds: the
    reactor's own shutdown drops connections without writing their buffers, which could
    cut the last bytes of an answer that just ended."""
    for transport in _http_transports():
        transport.loseConnection()
    await _until(lambda: not _http_transports(), deadline)


def _close_sockets(server: Any) -> None:
    """Every WebSocket still open (the portal's live pages; a gateway socket closes itself
    after its turn) gets a proper close, 1001 "going away"."""
    from daphne.ws_protocol import WebSocketProtocol

    for protocol in list(server.connections):
        if isinstance(protocol, WebSocketProtocol) and protocol.state == protocol.STATE_OPEN:
            try:  # not serverClose: autobahn's sendClose refuses 1001 (see portal.tuning)
                protocol.sendCloseFrame(code=1001, isReply=False)
            except Exception:
                log.debug("closing a websocket at shutdown failed", exc_info=True)
