"""Process tuning that needs no launcher, applied when the ASGI application loads
(and daphne's one missing ASGI feature, which the gateway's WebSocket needs).

``portal.asgi`` calls ``apply()`` at the end of its import, so ``daphne
portal.asgi:application`` gets the same Content-Type shortcut and settled heap as ``python
-m portal.server`` (which imports portal.asgi itself, before daphne runs). Only uvloop needs
the launcher: it must be the event-loop policy before daphne.server is imported, which
``django.setup()`` already does (daphne is an installed app). Both steps are idempotent:
importing or applying twice changes nothing.
"""

from __future__ import annotations

import gc
from http import HTTPStatus
from typing import Any

from portal import drain

# Young-generation threshold once the heap is frozen (CPython's default is 700).
GC_THRESHOLD = (50_000, 20, 100)

_heap_settled = False


def apply() -> None:
    speed_up_twisted_content_type()
    skip_unread_twisted_access_lines()
    let_daphne_refuse_websockets()
    drain.install()  # SIGTERM/SIGINT: finish what is in flight first (portal.drain)
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


def skip_unread_twisted_access_lines() -> None:
    """Twisted's HTTP factory formats a Combined Log Format line for every request and, with
    no log path (daphne never gives one), writes it to Twisted's own log. daphne points that
    log at nothing unless run with ``-v 2`` or more (``Server.run``), so at the usual
    verbosity every line was built, escaped and published only to be dropped (~2% of a /v1
    request's CPU, profiled). Skipped then; with ``-v 2`` the lines are written as before.
    daphne's access log (``--access-log``, ``-v 1``) is its own and is not touched."""
    from daphne.http_protocol import HTTPFactory
    from twisted.python import log

    if HTTPFactory.log is _twisted_access_line:
        return
    _base["twisted_log"] = log
    _base["http_log"] = HTTPFactory.log
    HTTPFactory.log = _twisted_access_line


def _twisted_access_line(self: Any, request: Any) -> None:
    if self._logFile is _base["twisted_log"].logfile and getattr(self.server, "verbosity", 2) <= 1:
        return  # to Twisted's log, which daphne sends nowhere at this verbosity
    _base["http_log"](self, request)


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


# --- daphne: refusing a WebSocket with an HTTP answer ------------------------------------

def let_daphne_refuse_websockets() -> None:
    """Give daphne the ASGI "websocket.http.response" extension: instead of accepting an
    upgrade, the application may answer it with ``websocket.http.response.start`` and
    ``websocket.http.response.body``, and the client gets that status, those headers and
    that body. daphne 4.2 can only refuse with a bare 403 (a close before accept) or 500;
    the gateway refuses with OpenAI's error bodies (401 for a bad key; 426 with WebSockets
    turned off, on which the Codex CLI falls back to HTTP at once).

    Also lets the application close a socket with the codes a server sends
    (``SERVER_CLOSE_CODES``: 1001 when a process drains), which autobahn's API refuses;
    caps a WebSocket message at GATEWAY_MAX_BODY_BYTES (autobahn's default is no
    limit; a socket's message is a request body), and writes text frames without
    autobahn's per-frame overhead (``write_text_frames``), one at a time or, with the
    "turnpike.websocket.text_frames" extension, several in one write. Idempotent."""
    from daphne import server, ws_protocol

    protocol = ws_protocol.WebSocketProtocol
    if protocol.handle_reply is _ws_handle_reply:
        return
    _base["handle_reply"] = protocol.handle_reply
    _base["failHandshake"] = protocol.failHandshake
    _base["create_application"] = server.Server.create_application
    _base["factory_init"] = ws_protocol.WebSocketFactory.__init__
    protocol.handle_reply = _ws_handle_reply
    protocol.failHandshake = _ws_fail_handshake
    server.Server.create_application = _create_application
    ws_protocol.WebSocketFactory.__init__ = _ws_factory_init


_base: dict[str, Any] = {}


# ASGI extension (Turnpike's): ``{"type": TEXT_FRAMES, "frames": [bytes, ...]}`` sends each
# item, UTF-8 already, as one text frame, in order, in one write. A Responses turn sends one
# frame per event, and the events of one upstream read go out together.
TEXT_FRAMES = "turnpike.websocket.text_frames"


def _create_application(self: Any, protocol: Any, scope: dict[str, Any]) -> Any:
    if scope.get("type") == "websocket":
        extensions = scope.setdefault("extensions", {})
        extensions["websocket.http.response"] = {}
        extensions[TEXT_FRAMES] = {}
    return _base["create_application"](self, protocol, scope)


def _ws_factory_init(self: Any, *args: Any, **kwargs: Any) -> None:
    from django.conf import settings

    _base["factory_init"](self, *args, **kwargs)
    limit = settings.GATEWAY_MAX_BODY_BYTES
    self.setProtocolOptions(maxMessagePayloadSize=limit, maxFramePayloadSize=limit)


# Close codes a server sends (RFC 6455 7.4.1) that autobahn's sendClose refuses (it allows
# only 1000 and 3000-4999): 1001 "going away" (a draining process, portal.drain), 1011
# internal error, 1012 service restart, 1013 try again later.
SERVER_CLOSE_CODES = frozenset((1001, 1011, 1012, 1013))


def _ws_handle_reply(self: Any, message: dict[str, Any]) -> None:
    kind = message.get("type")
    if kind == "websocket.close" and message.get("code") in SERVER_CLOSE_CODES and \
            self.state == self.STATE_OPEN:
        self.sendCloseFrame(code=message["code"], isReply=False)
        return
    if kind == "websocket.send" and message.get("text") is not None and \
            message.get("bytes") is None:
        write_text_frames(self, [message["text"].encode()])
        return
    if kind == TEXT_FRAMES:
        write_text_frames(self, message["frames"])
        return
    if kind not in ("websocket.http.response.start", "websocket.http.response.body"):
        _base["handle_reply"](self, message)
        return
    if not hasattr(self, "handshake_deferred"):
        raise ValueError(f"{kind} after the WebSocket handshake was answered")
    if kind == "websocket.http.response.start":
        self.turnpike_refusal = (int(message["status"]), list(message.get("headers") or []),
                                 [])
        return
    refusal = getattr(self, "turnpike_refusal", None)
    if refusal is None:
        raise ValueError("websocket.http.response.body before websocket.http.response.start")
    refusal[2].append(message.get("body", b""))
    if message.get("more_body"):
        return
    status, headers, body = refusal
    self.turnpike_refusal_bytes = http_answer(status, headers, b"".join(body))
    # autobahn answers a denied handshake through failHandshake (below), with these bytes.
    from autobahn.websocket.types import ConnectionDeny

    deferred = self.handshake_deferred
    del self.handshake_deferred
    deferred.errback(ConnectionDeny(code=status, reason=_phrase(status)))
    self.server.protocol_disconnected(self)
    self.server.log_action("websocket", "rejected", {
        "path": self.request.path,
        "client": ":".join(map(str, self.client_addr)) if self.client_addr else None})


def write_text_frames(self: Any, frames: list[bytes]) -> None:
    """Text frames straight to the transport: autobahn's sendMessage costs more than the
    gateway's whole handling of an event (it formats debug log arguments for every write,
    logged or not, and copies each payload into its frame). Frames from a server are not
    masked, so a frame is its header and the payload. Anything but an open socket with
    nothing queued and no compression goes through autobahn as before (which accepts an
    implicit accept, refuses a closing socket)."""
    if self.state != self.STATE_OPEN or self.send_queue or self._perMessageCompress is not None \
            or self.send_state != self.SEND_STATE_GROUND:
        for payload in frames:
            self.serverSend(payload.decode(), False)
        return
    out = []
    for payload in frames:
        n = len(payload)
        if n <= 125:
            out.append(_TEXT_HEADERS[n])
        elif n <= 0xFFFF:
            out.append(b"\x81\x7e" + n.to_bytes(2, "big"))
        else:
            out.append(b"\x81\x7f" + n.to_bytes(8, "big"))
        out.append(payload)
    self.transport.write(b"".join(out))


_TEXT_HEADERS = [bytes((0x81, n)) for n in range(126)]  # FIN + text, unmasked, length n


def _ws_fail_handshake(self: Any, reason: str, code: int = 400,
                       responseHeaders: Any = None) -> None:  # noqa: N803 (autobahn's name)
    answer = getattr(self, "turnpike_refusal_bytes", None)
    if answer is None:
        _base["failHandshake"](self, reason, code, responseHeaders)
        return
    self.wasNotCleanReason = reason
    self.sendData(answer)
    self.dropConnection(abort=False)


def http_answer(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection."""
    lines = [f"HTTP/1.1 {status} {_phrase(status)}".encode()]
    for name, value in headers:
        if name.lower() not in (b"content-length", b"connection", b"transfer-encoding"):
            lines.append(name + b": " + value)
    lines.append(b"Content-Length: " + str(len(body)).encode())
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Refused"
