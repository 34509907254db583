"""Responses over WebSocket: ``GET /v1/responses`` upgraded (at every path POST
/v1/responses is served), the transport the Codex CLI's built-in provider tries first.

    handshake        the key from the upgrade request's headers, checked by the HTTP path's
                     own ``pipeline.authenticate``; a refusal is a real HTTP answer with the
                     OpenAI error body (401, 403 ...; 426 when GATEWAY_WEBSOCKETS is off), sent
                     through the ASGI "websocket.http.response" extension (daphne gets it
                     from ``portal.tuning``)
    response.create  one turn, strictly one after another: the message minus ``type`` and
                     the WebSocket-only fields, ``stream`` forced on, is the body of a request
                     through the HTTP path's pipeline (``pipeline.handle``: auth, policy per
                     turn, routing, translation, usage row, cost) with a synthetic receive;
                     ``TurnSender`` turns its answer into frames: each SSE event one text frame
                     carrying the event's JSON, an error answered before the first byte one
                     ``{"type":"error","status":...,"error":{...}}`` frame. The socket stays
                     open after a failed turn; a client that goes away mid-turn cancels it as
                     an HTTP disconnect does (slot freed, usage row written).
    generate: false  a warm-up: a response id to chain from, no upstream call, no charge
    other types      ignored without an answer (``response.processed`` ...): anything sent
                     back would be read as the next turn's first event

Per connection, the last response (its full input and its output items, as sent) is kept
in memory, so a turn that names it as ``previous_response_id`` and sends only the new
input is expanded here when nothing stores it (``store: false``, what the Codex CLI sends,
or a key whose response storage is off) or it was a warm-up. Any other
previous_response_id, and a turn the key stores (so its stored record keeps its chain), is
the stored chain's (``gateway.stored.chain``), as over HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
from django.conf import settings

from billing.usage import record_usage
from gateway import accesslog, pipeline
from gateway.context import RelayContext
from gateway.errors import GatewayError, InvalidJSON, InvalidRequest, MissingModel, NotFound
from gateway.metrics import observe
from gateway.respond import Receive, Send
from gateway.translate.responses import ResponsesEncoder
from gateway.wire.sse import DONE, event_data

log = logging.getLogger(__name__)

# Fields of a response.create message that belong to the socket, not to the request.
SOCKET_FIELDS = ("type", "generate", "client_metadata", "background")
# Handshake headers that mean nothing to a turn (the turn's request is a JSON POST).
HANDSHAKE_HEADERS = frozenset((
    b"upgrade", b"connection", b"sec-websocket-key", b"sec-websocket-version",
    b"sec-websocket-extensions", b"sec-websocket-protocol", b"content-type",
    b"content-length", b"transfer-encoding"))
WS_BETA = b"responses_websockets"  # OpenAI-Beta: responses_websockets=2026-02-06
# Frames for events without data (an SSE comment keep-alive): the Codex CLI's idle timer
# counts data frames only, not pings.
KEEPALIVE = b'{"type":"keepalive"}'
TERMINAL = {b"response.completed": "completed", b"response.incomplete": "incomplete",
            b"response.failed": "failed"}
CHAINABLE = ("completed", "incomplete")
# The events TurnSender looks into; every other one is passed on as it is.
NOTED = frozenset((b"response.output_item.done", *TERMINAL, b"error"))
# A server extension (portal.tuning gives daphne it): several text frames in one message,
# ``{"type": TEXT_FRAMES, "frames": [utf-8 bytes, ...]}``. Without it, one websocket.send
# each.
TEXT_FRAMES = "turnpike.websocket.text_frames"

_open = 0
_turns = 0
_warmups = 0
_connections: weakref.WeakSet[Connection] = weakref.WeakSet()  # this process's open sockets
_draining = False
# The close code a draining process ends its sockets with: 1001 "going away" (RFC 6455: a
# server going down); the client opens a new socket, on another process, for its next turn.
GOING_AWAY = 1001


def drain() -> None:
    """The process is shutting down (``portal.drain``): every socket finishes the turn it is
    in, if any, then closes with 1001; a socket waiting for its next turn closes now."""
    global _draining
    _draining = True
    for conn in list(_connections):
        conn.drain()


def stats() -> dict[str, int]:
    """This process's sockets open now, and the turns and warm-ups they have carried."""
    return {"open": _open, "turns": _turns, "warmups": _warmups}


# --- the handshake ---------------------------------------------------------------------

def websockets_off() -> GatewayError:
    return GatewayError(
        "Responses over WebSocket is turned off on this server (GATEWAY_WEBSOCKETS); "
        "send POST /v1/responses instead.", status=426, type="invalid_request_error",
        code="websockets_disabled")


async def refuse(scope: dict[str, Any], send: Send, error: GatewayError) -> None:
    """Refuse the upgrade with an HTTP answer: the error's status and its OpenAI body (the
    ASGI "websocket.http.response" extension). A server without the extension can only
    close, which it answers with its own status (403 on daphne)."""
    if "websocket.http.response" not in (scope.get("extensions") or {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    body = error.render()
    await send({"type": "websocket.http.response.start", "status": error.status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *error.headers()]})
    await send({"type": "websocket.http.response.body", "body": body})


async def refused_socket(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Any /v1 path but responses, upgraded: 404."""
    if (await receive())["type"] == "websocket.connect":
        await refuse(scope, send, NotFound(
            f"No WebSocket is served at {scope.get('path')!r}; Responses over WebSocket is "
            "at /v1/responses.", code="unknown_url"))


async def responses_socket(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    global _open
    if (await receive())["type"] != "websocket.connect":
        return
    if not settings.GATEWAY_WEBSOCKETS:
        await refuse(scope, send, websockets_off())
        return
    ctx = RelayContext.start(scope, "responses")
    try:
        await pipeline.authenticate(ctx)
    except GatewayError as error:  # the same row, line and counts as a refused HTTP request
        ctx.status, ctx.error_code = error.status, error.code
        record_usage(ctx.usage_event())
        accesslog.emit(ctx)
        observe(ctx)
        await refuse(scope, send, error)
        return
    if _draining:  # shutting down: no new socket (the client retries on another process)
        await send({"type": "websocket.close", "code": GOING_AWAY})
        return
    await send({"type": "websocket.accept"})
    _open += 1
    try:
        key = ctx.key
        conn = Connection(scope, receive, send, stores=key is not None and key.store_days > 0)
        _connections.add(conn)
        await conn.serve()
    finally:
        _open -= 1


# --- the connection ----------------------------------------------------------------------

@dataclass(slots=True)
class LastResponse:
    """The connection's most recent response: what a turn chaining from it continues."""

    id: str
    input: bytes  # the whole input it answered (earlier turns included), a JSON array
    output: list[Any]  # its output items, as the client got them
    warmup: bool = False  # a ``generate: false`` answer (never stored)


class Connection:
    def __init__(self, scope: dict[str, Any], receive: Receive, send: Send, *,
                 stores: bool = False) -> None:
        self.receive = receive
        self.stores = stores  # the key keeps responses (its store_days at the handshake)
        self.send = send
        self.pending: deque[dict[str, Any]] = deque()  # messages that came in mid-turn
        self.closed = False
        self.draining = False  # close once the turn under way is over (drain())
        self.waiting: asyncio.Task[Any] | None = None  # set while waiting for a message
        self.last: LastResponse | None = None
        self.deadline = time.monotonic() + settings.GATEWAY_WEBSOCKET_MAX_AGE
        self.batches = TEXT_FRAMES in (scope.get("extensions") or {})
        # Each turn is a POST of the turn's body with the handshake's headers.
        self.turn_scope = {
            "type": "http", "method": "POST", "path": scope.get("path", ""),
            "headers": turn_headers(scope.get("headers") or []),
            "client": scope.get("client"), "query_string": scope.get("query_string", b""),
            "url_route": {"args": (), "kwargs": {"endpoint": "responses"}},
        }

    def drain(self) -> None:
        self.draining = True
        if self.waiting is not None:  # between turns: stop waiting, close now
            self.waiting.cancel()

    async def serve(self) -> None:
        while not self.closed:
            if self.draining:
                await self.close(GOING_AWAY)
                return
            message = await self.next_message()
            if message is None:
                return
            text = message.get("text")
            if text is None:
                raw = message.get("bytes")
                text = raw.decode("utf-8", "replace") if raw else ""
            await self.on_message(text)

    async def next_message(self) -> dict[str, Any] | None:
        """The next client message; None once the client is gone, or when the socket has
        reached its age limit with no turn asked for (it is closed then, quietly: a client
        finds it closed before its next turn and opens another)."""
        if self.pending:
            return self.pending.popleft()
        left = self.deadline - time.monotonic()
        self.waiting = task = asyncio.current_task()
        assert task is not None
        try:
            async with asyncio.timeout(max(left, 0.0)):
                message = await self.receive()
        except TimeoutError:
            await self.close()
            return None
        except asyncio.CancelledError:
            if not self.draining:
                raise
            task.uncancel()
            await self.close(GOING_AWAY)
            return None
        finally:
            self.waiting = None
        if message["type"] == "websocket.disconnect":
            self.closed = True
            return None
        return message

    async def wait_for_disconnect(self) -> dict[str, Any]:
        """A turn's receive once its body is read (the pipeline watches it for the client
        going away): messages that arrive meanwhile wait for their turn."""
        while not self.closed:
            message = await self.receive()
            if message["type"] == "websocket.disconnect":
                self.closed = True
                break
            self.pending.append(message)
        return {"type": "http.disconnect"}

    async def close(self, code: int = 1000) -> None:
        self.closed = True
        try:
            await self.send({"type": "websocket.close", "code": code})
        except Exception:  # already gone
            log.debug("closing a websocket that was gone", exc_info=True)

    async def send_frames(self, frames: list[bytes]) -> None:
        """Text frames, in order. A client that went away ends the turn as an HTTP
        disconnect does."""
        try:
            if self.batches:
                await self.send({"type": TEXT_FRAMES, "frames": frames})
                return
            for data in frames:
                await self.send({"type": "websocket.send", "text": data.decode()})
        except Exception:
            self.closed = True
            raise pipeline.ClientGone from None

    async def send_error(self, error: GatewayError) -> None:
        """The protocol's error frame, always with its status: the Codex CLI ignores an
        error frame without one and waits out its idle timeout."""
        self.last = None  # like OpenAI: a failed turn evicts the connection's response
        try:
            await self.send_frames([error_frame(error.status, error.body()["error"],
                                                error.headers())])
        except pipeline.ClientGone:
            pass

    # --- one message ----------------------------------------------------------------------

    async def on_message(self, text: str) -> None:
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            await self.send_error(InvalidJSON(f"The message is not valid JSON: {exc}."))
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            await self.send_error(InvalidRequest(
                "Each message must be a JSON object with a 'type', e.g. "
                "{\"type\": \"response.create\", \"model\": ..., \"input\": ...}.",
                param="type"))
            return
        if message["type"] != "response.create":
            log.debug("websocket message %r ignored", message["type"])
            return
        if time.monotonic() >= self.deadline:
            minutes = settings.GATEWAY_WEBSOCKET_MAX_AGE / 60
            await self.send_error(InvalidRequest(
                f"Responses websocket connection limit reached ({minutes:g} minutes). "
                "Create a new websocket connection to continue.",
                code="websocket_connection_limit_reached"))
            await self.close()
            return
        generate = message.get("generate", True)
        body = {k: v for k, v in message.items() if k not in SOCKET_FIELDS}
        body["stream"] = True  # a socket always streams
        history = self.expand(body)
        if isinstance(history, GatewayError):
            await self.send_error(history)
        elif generate is False:
            await self.warm_up(body, history)
        else:
            await self.turn(body, history)

    def expand(self, body: dict[str, Any]) -> bytes | GatewayError | None:
        """The turn's whole input, as JSON (what the next turn may chain from; None: not
        known here). previous_response_id naming this connection's last response: its
        input and output, then the new input (``instructions`` are not carried over, as in
        OpenAI's semantics). Any other id is left to the stored chain, or not found.

        The input goes into the body as JSON already made (``orjson.Fragment``): the
        history is never parsed or encoded again, only joined, so a turn that sends a few
        new items costs what they cost, not what the conversation does."""
        new = input_items(body.get("input"))
        previous = body.get("previous_response_id")
        if previous is None:
            if new is None:  # the pipeline refuses it, as over HTTP
                return None
            history = orjson.dumps(new)
            if isinstance(body.get("input"), list):
                body["input"] = orjson.Fragment(history)
            return history
        if not isinstance(previous, str) or not previous:
            return InvalidRequest("'previous_response_id' must be a response id.",
                                  param="previous_response_id")
        last = self.last
        if last is not None and previous == last.id and (
                last.warmup or body.get("store") is False or not self.stores):
            if new is None:
                return InvalidRequest("'input' must be a string or an array of input items.",
                                      param="input")
            history = join_arrays(last.input, orjson.dumps(last.output), orjson.dumps(new))
            del body["previous_response_id"]
            body["input"] = orjson.Fragment(history)
            return history
        # Anything else is the stored chain's, as over HTTP (gateway.stored.chain): a turn
        # the key stores chains there (so the stored record keeps its chain), and an id
        # neither this socket nor the store holds is previous_response_not_found. The
        # turn's whole input is then not known here: the socket keeps nothing to chain
        # from, and the next turn goes to the store too.
        return None

    async def turn(self, body: dict[str, Any], history: bytes | None) -> None:
        """One request through the HTTP path's pipeline."""
        global _turns
        _turns += 1
        request = {"type": "http.request", "body": orjson.dumps(body), "more_body": False}
        read = False

        async def receive() -> dict[str, Any]:
            nonlocal read
            if not read:
                read = True
                return request
            return await self.wait_for_disconnect()

        sender = TurnSender(self)
        try:
            await pipeline.handle(self.turn_scope, receive, sender)
        except pipeline.ClientGone:  # the error answer found the socket gone
            self.closed = True
        self.remember(sender, history)

    async def warm_up(self, body: dict[str, Any], history: bytes | None) -> None:
        """``generate: false``: a completed response with no output and no usage charged,
        whose id the next turn may chain from; no upstream is called."""
        global _warmups
        model = body.get("model")
        if not isinstance(model, str) or not model.strip():
            await self.send_error(MissingModel(
                "'model' is required: a non-empty string naming the model."))
            return
        _warmups += 1
        encoder = ResponsesEncoder(model, {k: body[k] for k in WARMUP_ECHO
                                           if body.get(k) is not None})
        sender = TurnSender(self)
        try:
            await sender({"type": "http.response.start", "status": 200,
                          "headers": [(b"content-type", b"text/event-stream")]})
            await sender({"type": "http.response.body", "body": encoder.close()})
        except pipeline.ClientGone:
            return
        self.remember(sender, history, warmup=True)

    def remember(self, sender: TurnSender, history: bytes | None,
                 warmup: bool = False) -> None:
        if sender.status in CHAINABLE and sender.response_id and history is not None:
            self.last = LastResponse(sender.response_id, history, sender.output, warmup)
        else:
            self.last = None


WARMUP_ECHO = ("instructions", "tools", "tool_choice", "parallel_tool_calls", "reasoning",
               "store", "text", "metadata")


def input_items(value: Any) -> list[Any] | None:
    """A request's ``input`` as a list of items (a string is one user message)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if isinstance(value, list):
        return value
    return None


def join_arrays(*arrays: bytes) -> bytes:
    """JSON arrays (orjson's compact form) joined into one."""
    items = [a[1:-1] for a in arrays if len(a) > 2]
    return b"[" + b",".join(items) + b"]"


def turn_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The handshake's headers as a turn's request headers: a JSON POST, and without the
    WebSocket beta (each turn goes upstream over HTTP)."""
    out = []
    for name, value in headers:
        if name in HANDSHAKE_HEADERS:
            continue
        if name == b"openai-beta" and WS_BETA in value:
            value = b",".join(t for t in value.split(b",") if WS_BETA not in t).strip()
            if not value:
                continue
        out.append((name, value))
    out.append((b"content-type", b"application/json"))
    return out


def error_frame(status: int, error: Any, headers: list[tuple[bytes, bytes]]) -> bytes:
    frame: dict[str, Any] = {"type": "error", "status": status, "error": error}
    if headers:
        frame["headers"] = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}
    return orjson.dumps(frame)


# --- the answer as frames ----------------------------------------------------------------

_TYPE = b'{"type":"'
_RESPONSE_ID = b'"response":{"id":"'


def event_type(data: bytes) -> bytes:
    """An event's ``type``: read from its start when it is there (orjson, OpenAI),
    parsed otherwise."""
    if data.startswith(_TYPE):
        return data[9:data.find(b'"', 9)]
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return b""
    kind = parsed.get("type") if isinstance(parsed, dict) else None
    return kind.encode() if isinstance(kind, str) else b""


def frame_data(event: bytes) -> bytes | None:
    """An SSE event's data: the common one-line ``data:`` (after an ``event:`` line or
    not) sliced out, anything else read by ``event_data``."""
    at = event.find(b"data: ")
    if (at == 0 or (at > 0 and event[at - 1] == 10)) and event.find(b"\n", at) == -1:
        return event[at + 6:]
    return event_data(event)


def response_id(data: bytes) -> str | None:
    at = data.find(_RESPONSE_ID)
    if at != -1:
        start = at + len(_RESPONSE_ID)
        return data[start:data.find(b'"', start)].decode()
    try:
        response = orjson.loads(data).get("response")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    rid = response.get("id") if isinstance(response, dict) else None
    return rid if isinstance(rid, str) else None


class TurnSender:
    """The ASGI send of a turn's HTTP answer, as frames: each SSE event's data one text
    frame; a JSON error one error frame; a JSON response (an upstream that would not
    stream) the events of its stream. Notes the response's id, status and output items for
    the connection's chain."""

    __slots__ = ("conn", "http_status", "sse", "headers", "buffer", "body", "status",
                 "response_id", "output")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.http_status = 0
        self.sse = False
        self.headers: list[tuple[bytes, bytes]] = []
        self.buffer = b""
        self.body: list[bytes] = []
        self.status = ""  # completed / incomplete / failed once the answer ended
        self.response_id: str | None = None
        self.output: list[Any] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        # The hot path, a stream's events, inline: it runs once per upstream read, and its
        # loop once per event (most of them deltas, sent as they are).
        if self.sse and message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            if not chunk:
                return
            parts = (self.buffer + chunk if self.buffer else chunk).split(b"\n\n")
            self.buffer = parts.pop()
            frames = []
            for event in parts:
                at = event.find(b"\ndata: ")
                if at > 0 and event.startswith(b".delta", at - 6) and \
                        event.find(b"\n", at + 1) == -1 and event.find(b"\n") == at:
                    frames.append(event[at + 7:])  # a delta: "<one field line>\ndata: …"
                elif event:
                    data = self.frame(event)
                    if data is not None:
                        frames.append(data)
            if frames:
                await self.conn.send_frames(frames)
            return
        kind = message["type"]
        if kind == "http.response.body":
            self.body.append(message.get("body", b""))
            if not message.get("more_body"):
                await self.json_answer(b"".join(self.body))
        elif kind == "http.response.start":
            self.http_status = message["status"]
            self.headers = message.get("headers") or []
            ctype = next((v for k, v in self.headers if k == b"content-type"), b"")
            self.sse = ctype.startswith(b"text/event-stream")

    def frame(self, event: bytes) -> bytes | None:
        """An SSE event's frame (its data), noting what the chain needs; None: not sent.
        The common shape, ``event: response.*`` then one data line, is read by its name
        alone (the events Turnpike and OpenAI send are named by their type)."""
        at = event.find(b"\ndata: ")
        if at != -1 and event.startswith(b"event: response.") and event.find(b"\n", at + 1) == -1:
            name = event[7:at]
            return event[at + 7:] if name not in NOTED else self.note(name, event[at + 7:])
        data = frame_data(event)
        if data is None:
            return KEEPALIVE
        if data == DONE:
            return None
        kind = event_type(data)
        return data if kind not in NOTED else self.note(kind, data)

    def note(self, kind: bytes, data: bytes) -> bytes | None:
        if kind == b"response.output_item.done":
            item = orjson.loads(data).get("item")
            if item is not None:
                self.output.append(item)
        elif kind in TERMINAL:
            self.status = TERMINAL[kind]
            self.response_id = response_id(data)
        else:  # b"error"
            # An upstream's bare error event: the response.failed that ends the stream
            # carries it. On a socket an "error" is the turn's end, so it is not relayed.
            return None
        return data

    async def json_answer(self, body: bytes) -> None:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        if self.http_status == 200 and isinstance(parsed, dict) and \
                parsed.get("object") == "response":
            frames = [self.frame(b"data: " + data) for data in response_events(parsed)]
            await self.conn.send_frames([f for f in frames if f is not None])
            return
        self.status = "failed"
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if not isinstance(error, dict):
            error = {"type": "server_error", "code": "internal_error", "param": None,
                     "message": body.decode("utf-8", "replace") or
                     HTTPStatus(self.http_status).phrase}
        retry = [(k, v) for k, v in self.headers if k.startswith(b"retry-after")]
        await self.conn.send_frames([error_frame(self.http_status or 500, error, retry)])


def response_events(response: dict[str, Any]) -> list[bytes]:
    """The stream of a whole Response object: created, each item done, the terminal
    event."""
    status = response.get("status") or "completed"
    output = response.get("output") or []
    seq = 0
    events = [orjson.dumps({"type": "response.created", "sequence_number": seq, "response": {
        **response, "status": "in_progress", "output": []}})]
    for index, item in enumerate(output):
        seq += 1
        events.append(orjson.dumps({"type": "response.output_item.done",
                                    "sequence_number": seq, "output_index": index,
                                    "item": item}))
    terminal = {"failed": "response.failed", "incomplete": "response.incomplete"}.get(
        status, "response.completed")
    events.append(orjson.dumps({"type": terminal, "sequence_number": seq + 1,
                                "response": response}))
    return events
