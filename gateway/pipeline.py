"""The /v1 request flow, one function per step, readable top to bottom.

    handle()            any /v1 request: context, auth, dispatch, error rendering, usage row
      authenticate()    key from the headers -> KeySnapshot (no SQL for a known key),
                        checked by keys.authn
      list_models()     GET /v1/models[/{id}]
      dashboard.*       GET /v1/dashboard/billing/subscription|usage (balance for chat clients)
      stored_api.serve  GET|DELETE /v1/responses/{id}, GET …/input_items, POST …/cancel
      relay()           POST /v1/responses, /v1/responses/compact, /v1/chat/completions
        read_body(), parse_request()   the checks every endpoint shares
        capture.begin() the body as received, when body capture is on for the key
                        (gateway.capture; the answer is captured as it is sent)
        resolve_model() model permission, model -> upstreams
        stored.prepare() /v1/responses: previous_response_id (pinned route, or the chain
                        expanded from the store) and what the store keeps (gateway.stored)
        policy.admit()  quota, rate limits, concurrency, max_tokens (one limiter call)
        background.start()  ``background: true``: queued and answered at once; the run
                        takes the steps below elsewhere (gateway.stored.background)
        plan_routes()   the upstream + credential routes to try, in order (routing.plan)
        Settlement      charging: priced and settled by the sender just before the answer's
                        last bytes (gateway.charging), by handle() when the client left,
                        or in the background by record()
        exchange.run()  send upstream; relay or translate the answer as it arrives; its
                        Outcome (route, attempts, usage, served) is what is charged
      record()          the usage row (settled with it when admitted); the body capture,
                        if any, queued for its writer
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
from django.conf import settings

from billing.usage import record_usage
from gateway import accesslog, dashboard, exchange, policy, routing, tracing, validate
from gateway.capture import recorder as capture
from gateway.charging import Settlement
from gateway.context import RelayContext
from gateway.errors import (
    AuthenticationFailed,
    BodyTooLarge,
    GatewayError,
    InvalidJSON,
    InvalidRequest,
    MethodNotAllowed,
    MissingModel,
    ModelNotAllowed,
    ModelNotFound,
    NotFound,
    PermissionDenied,
    RateLimited,
    ShuttingDown,
    UnsupportedContentType,
)
from gateway.metrics import observe
from gateway.outcome import Outcome
from gateway.providers.failures import UpstreamFailed
from gateway.providers.registry import FORWARDED_HEADERS
from gateway.respond import (
    Receive,
    Send,
    abort_stream,
    send_error,
    send_json,
)
from gateway.routing import Route, UpstreamRef, aget_route_table
from gateway.stored import api as stored_api
from gateway.stored import background
from gateway.stored import chain as stored
from gateway.translate import codex
from keys import authn
from keys.secrets import hash_secret
from keys.snapshots import KeySnapshot, aget_key_snapshot
from portal.infra.hotsettings import hot

log = logging.getLogger(__name__)
T = TypeVar("T")

# endpoint name (from the URL router) -> (HTTP method, operation)
ENDPOINTS: dict[str, tuple[str, str]] = {
    "responses": ("POST", "responses"),
    "responses/compact": ("POST", "compact"),
    "chat/completions": ("POST", "chat"),
    "models": ("GET", "models"),
    "dashboard/billing/subscription": ("GET", "billing_subscription"),
    "dashboard/billing/usage": ("GET", "billing_usage"),
    # /v1/responses/{id}[/input_items|/cancel]: methods checked by gateway.stored.api
    "responses/stored": ("", "stored"),
}


class ClientGone(Exception):
    """The client disconnected; nothing more can be sent."""


# --- steps ------------------------------------------------------------------------------

_REFUSED: dict[int, type[GatewayError]] = {401: AuthenticationFailed, 403: PermissionDenied}


def refused(why: authn.Refusal) -> GatewayError:
    """A key refusal (``keys.authn``) as the OpenAI error it is answered with."""
    return _REFUSED[why.status](why.message, code=why.code)


async def authenticate(ctx: RelayContext) -> KeySnapshot:
    """Checks 1-3 (``keys.authn``): the presented key, from the snapshot cache."""
    with tracing.span(ctx, "authenticate"):
        secret = authn.secret_from_asgi(ctx.headers)
        if secret is None:
            raise refused(authn.MISSING)
        key = await aget_key_snapshot(hash_secret(secret))
        if key is not None:
            ctx.key = key
        why = authn.refusal(key, ctx.client_ip)
        if why is not None:
            raise refused(why)
        assert key is not None
        return key


async def read_body(receive: Receive, ctx: RelayContext) -> bytes:
    limit = hot.GATEWAY_MAX_BODY_BYTES
    declared = ctx.headers.get(b"content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"The request body is over the {limit}-byte limit.")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            raise BodyTooLarge(f"The request body is over the {limit}-byte limit.")
        chunks.append(body)
        if not message.get("more_body"):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_request(ctx: RelayContext, body: bytes, operation: str) -> dict[str, Any]:
    """The body as a JSON object, refused with a 400 unless every field Turnpike or the
    limiter reads has the right type and range (``gateway.validate``)."""
    ctype = ctx.headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    if ctype and ctype != b"application/json" and not ctype.endswith(b"+json"):
        raise UnsupportedContentType(
            f"Content-Type must be application/json, not {ctype.decode('latin-1')!r}."
        )
    if not body.strip():
        raise InvalidJSON("The request body is empty; send a JSON object.")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(payload, dict):
        raise InvalidJSON("The request body must be a JSON object.")
    validate.check_depth(body, payload)
    model = payload.get("model")
    if not isinstance(model, str) or not model.strip():
        raise MissingModel("'model' is required: a non-empty string naming the model.")
    ctx.model = model
    stream = payload.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be true or false.", param="stream")
    ctx.stream = stream
    validate.check_fields(operation, payload)
    return payload


async def resolve_model(ctx: RelayContext, key: KeySnapshot) -> tuple[str, list[UpstreamRef]]:
    """Check 4 (model permission), then the upstreams this key may use for the model. A
    name no upstream serves but that ends in an effort suffix (``gpt-5-high``) means the
    base model with that reasoning effort."""
    model = ctx.model
    table = await aget_route_table()
    group, dedicated = key.group_id, key.dedicated_upstreams
    candidates = table.serving(model, group, dedicated)
    if not candidates:
        split = codex.split_effort_suffix(model)
        if split is not None and table.serving(split[0], group, dedicated):
            model, ctx.effort = split
            candidates = table.serving(model, group, dedicated)
    if not key.allows(ctx.model) and not key.allows(model):
        raise ModelNotAllowed(f"This API key may not use the model '{ctx.model}'.")
    if not candidates:
        raise ModelNotFound(f"The model '{model}' does not exist or no upstream serves it.")
    return model, candidates


def session_of(ctx: RelayContext, key: KeySnapshot,
               payload: dict[str, Any]) -> tuple[str | None, str]:
    """(the explicit session id, if the client sent one; the routing session).

    Explicit: ``prompt_cache_key`` (or its alias ``session_id``) in the body, or a
    ``session_id``/``session-id`` header (the Codex CLI sends both). Without one, the key
    plus the conversation's first user message: stable across a conversation's turns."""
    explicit = payload.get("prompt_cache_key") or payload.get("session_id")
    if not isinstance(explicit, str) or not explicit:
        raw = ctx.headers.get(b"session_id") or ctx.headers.get(b"session-id")
        explicit = raw.decode("latin-1") if raw else None
    if explicit:
        return explicit[:200], f"{key.key_id}:s:{explicit}"
    return None, f"{key.key_id}:m:{first_user_text(payload)[:2000]}"


def first_user_text(payload: dict[str, Any]) -> str:
    items = payload.get("messages")
    if items is None:
        items = payload.get("input")
    if isinstance(items, str):
        return items
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


# --- the relay --------------------------------------------------------------------------

def plan_routes(model: str, candidates: list[UpstreamRef], session: str,
                ticket: policy.Ticket) -> list[Route]:
    """The routes to try, in order: the session's binding first, then by priority and
    weight, skipping credentials that are cooling down (all cooling: a 429)."""
    routes = routing.plan(candidates, model, session, ticket.binding, ticket.cooled)
    if not routes:
        wait = routing.shortest_cooldown(candidates, ticket.cooled, int(time.time() * 1000))
        raise RateLimited(
            f"Every upstream credential for the model '{model}' is cooling down after the "
            "upstream rate-limited it; retry after the time in Retry-After.",
            code="upstream_rate_limited", retry_after=max(wait or 0.0, 0.001))
    return routes


async def relay(ctx: RelayContext, operation: str, receive: Receive,
                send: Send) -> Outcome:
    key = await authenticate(ctx)
    validate.check_headers(ctx.headers, FORWARDED_HEADERS)
    body = await read_body(receive, ctx)
    if key.capture_until:  # body capture (issue 15): 0 when off, one attribute check
        ctx.capture = capture.begin(ctx, key, body)
    payload = parse_request(ctx, body, operation)
    model, candidates = await resolve_model(ctx, key)
    size = len(body)
    queue = background.wants_background(operation, payload)
    if queue:  # a background response must be stored (400 otherwise), like OpenAI's
        background.check(key, payload)
    if operation == "responses":  # the store: previous_response_id, what is kept
        payload, body, size = await stored.prepare(ctx, key, payload, body, candidates)
    explicit, session = session_of(ctx, key, payload)
    with tracing.span(ctx, "admit"):
        ticket = ctx.ticket = await policy.admit(key, ctx.request_id, model, payload, size,
                                                 session=explicit)
    ctx.extra_headers = ticket.headers
    if queue:  # admitted: queued, answered at once, run elsewhere (gateway.stored.background)
        return await background.start(ctx, key, model, session, payload, receive, send)
    routes = plan_routes(model, candidates, session, ticket)
    # Charging, by name: whatever ends the answer awaits ``settle`` right before its last
    # bytes (respond.send_json / end_stream / abort_stream), handle() settles a client that
    # left, and record() anything cut off before either. The store's
    # staging goes with the settle.
    outcome = ctx.outcome
    turn = ctx.turn
    settle = ctx.settlement = Settlement(ticket, outcome, payload, ctx.usage_event,
                                         stage=turn.stage if turn is not None else None)
    run = stored.run_pinned if turn is not None and turn.pin is not None else exchange.run
    return await watch_disconnect(ctx, receive, run(
        ctx, operation, routes, payload, body, outcome, send, settle))


async def watch_disconnect(ctx: RelayContext, receive: Receive, work: Awaitable[T]) -> T:
    """Run ``work``; if the client disconnects first, cancel it (which closes the upstream
    request too) and raise ClientGone.

    Under daphne ``receive`` is the ``get`` of the request's asyncio.Queue: the queue is
    then watched by a callback (``_QueueWatch``), not by a task of its own per request;
    any other ``receive`` is watched by a task that awaits it."""
    task = asyncio.current_task()
    assert task is not None
    queue = getattr(receive, "__self__", None)
    watch: _QueueWatch | asyncio.Task[None]
    if type(queue) is asyncio.Queue and isinstance(getattr(queue, "_getters", None),
                                                   collections.deque):
        watch = _QueueWatch(ctx, queue, task)
    else:
        watch = asyncio.get_running_loop().create_task(_watch(ctx, receive, task))
    try:
        return await work
    except asyncio.CancelledError:
        if not ctx.client_gone:
            raise
        task.uncancel()
        raise ClientGone from None
    finally:
        watch.cancel()


async def _watch(ctx: RelayContext, receive: Receive, task: asyncio.Task[Any]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            ctx.client_gone = True
            task.cancel()
            return


class _QueueWatch:
    """What ``_watch`` does, as a waiter on the queue itself: a future in the queue's
    waiting getters (where ``Queue.get`` puts its own), woken by the next message put in.
    Each message is taken as ``receive()`` would have taken it; a disconnect cancels the
    task. ``cancel()`` takes the waiter out again (as a cancelled ``get`` does) and leaves
    any message not yet taken in the queue."""

    __slots__ = ("ctx", "queue", "task", "waiter")

    def __init__(self, ctx: RelayContext, queue: asyncio.Queue[dict[str, Any]],
                 task: asyncio.Task[Any]) -> None:
        self.ctx = ctx
        self.queue = queue
        self.task = task
        self.waiter: asyncio.Future[None] | None = None
        self._take()

    def _take(self) -> None:
        queue = self.queue
        while not queue.empty():
            if queue.get_nowait()["type"] == "http.disconnect":
                self.ctx.client_gone = True
                self.task.cancel()
                return
        waiter = self.waiter = self.task.get_loop().create_future()
        queue._getters.append(waiter)  # type: ignore[attr-defined]
        waiter.add_done_callback(self._woken)

    def _woken(self, waiter: asyncio.Future[None]) -> None:
        if waiter is self.waiter and not waiter.cancelled():
            self._take()

    def cancel(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is None:
            return
        if not waiter.done():  # never woken: out of the getters, and forgotten
            try:
                self.queue._getters.remove(waiter)  # type: ignore[attr-defined]
            except ValueError:
                pass
        elif not self.queue.empty():  # woken, not yet run: wake the next getter instead,
            self.queue._wakeup_next(self.queue._getters)  # type: ignore[attr-defined]
        #                                                   as a cancelled get does


# --- models -----------------------------------------------------------------------------

def _model_object(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "turnpike"}


async def list_models(ctx: RelayContext, model_id: str | None, send: Send) -> None:
    key = await authenticate(ctx)
    table = await aget_route_table()
    if model_id is not None:
        ctx.model = model_id
        serving = table.serving(model_id, key.group_id, key.dedicated_upstreams)
        if not serving or not key.allows(model_id):
            raise ModelNotFound(f"The model '{model_id}' does not exist.")
        body = orjson.dumps(_model_object(model_id, min(u.created for u in serving)))
    else:
        data = [_model_object(name, up.created)
                for name, up in table.listed_models(key.group_id,
                                                    key.dedicated_upstreams).items()
                if key.allows(name)]
        body = orjson.dumps({"object": "list", "data": data})
    await send_json(ctx, send, 200, body)


# --- entry ------------------------------------------------------------------------------

_active: dict[str, RelayContext] = {}  # this process's requests being answered
_tasks: dict[str, asyncio.Task[Any]] = {}  # the task answering each of them
_cut: set[str] = set()  # requests being cut short by the end of a drain (cut_all)


def in_flight() -> int:
    return len(_active)


def open_streams() -> int:
    """Requests whose streamed answer has started and not ended (read by the metrics)."""
    return sum(1 for ctx in _active.values() if ctx.stream_open)


def cut_all() -> int:
    """End every request still being answered (the drain's time is up, ``portal.drain``):
    each is cancelled where it waits and answers ShuttingDown: an open stream ends with
    its protocol's error event, charged for what was relayed; an answer not yet started is
    a 503. Returns how many were cut."""
    cut = 0
    for request_id, task in list(_tasks.items()):
        if request_id not in _cut and not task.done():
            _cut.add(request_id)
            task.cancel()
            cut += 1
    return cut


async def handle(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    kwargs = scope.get("url_route", {}).get("kwargs", {})
    endpoint = kwargs.get("endpoint") or ""
    ctx = RelayContext.start(scope, endpoint or scope.get("path", ""))
    ctx.trace = tracing.start_request(ctx)
    _active[ctx.request_id] = ctx
    task = _tasks[ctx.request_id] = asyncio.current_task()  # type: ignore[assignment]
    assert task is not None
    try:
        spec = ENDPOINTS.get(endpoint)
        if spec is None:
            raise NotFound(f"Unknown API path {scope.get('path')!r}.", code="unknown_url")
        method, operation = spec
        if method and scope["method"] != method:
            raise MethodNotAllowed(f"Use {method} for this path, not {scope['method']}.")
        if operation == "models":
            await list_models(ctx, kwargs.get("model_id"), send)
        elif operation == "billing_subscription":
            await dashboard.subscription(ctx, await authenticate(ctx), send)
        elif operation == "billing_usage":
            await dashboard.usage(ctx, await authenticate(ctx), scope, send)
        elif operation == "stored":
            await stored_api.serve(ctx, await authenticate(ctx), scope, kwargs, receive, send)
        else:
            await relay(ctx, operation, receive, send)
    except asyncio.CancelledError:
        if ctx.request_id not in _cut:
            raise
        task.uncancel()  # cut by the drain (cut_all): the client gets a proper end
        await answer_error(ctx, send, ShuttingDown(
            "This Turnpike process is shutting down and the request did not finish within "
            f"its drain time ({settings.GATEWAY_DRAIN_SECONDS:g} s); retry it."))
    except ClientGone:
        ctx.status = ctx.status or 499
        ctx.error_code = ctx.error_code or "client_disconnected"
        if ctx.settlement is not None:  # charged for what was generated (counted if unreported)
            await ctx.settlement()
    except UpstreamFailed as exc:  # no route answered: the last failure is the client's error
        await answer_error(ctx, send, exc.error)
    except GatewayError as exc:
        await answer_error(ctx, send, exc)
    except Exception:
        log.exception("unhandled error on %s %s (%s)", scope["method"], scope.get("path"),
                      ctx.request_id)
        await answer_error(ctx, send, GatewayError(
            "Turnpike hit an internal error; the request was not completed. "
            f"Request id: {ctx.request_id}."))
        ctx.error_code = ctx.error_code or "internal_error"
    finally:
        del _active[ctx.request_id]
        del _tasks[ctx.request_id]
        _cut.discard(ctx.request_id)
        record(ctx)
        observe(ctx)
        if ctx.capture is not None:
            capture.finish(ctx)


async def answer_error(ctx: RelayContext, send: Send, error: GatewayError) -> None:
    """The one place an error becomes the client's answer: the OpenAI error envelope, or,
    once a stream has started, the protocol's error event that ends it (settled first, like
    any answer's end)."""
    if ctx.status:  # headers already sent: end an open stream with the error event
        ctx.error_code = ctx.error_code or error.code
        await abort_stream(ctx, send, error, ctx.settlement)
    else:
        await send_error(ctx, send, error, ctx.settlement)


def record(ctx: RelayContext) -> None:
    """The request's usage row. An admitted request's row goes with its settlement (see
    gateway.charging); one that nothing settled (cancelled before its answer's last send)
    is settled here, in the background, where a cancelled request cannot interrupt it.
    Anything refused before the limiter is queued for the writer. Then the request's
    access line (``gateway.accesslog``) and the end of its trace (``gateway.tracing``)."""
    if ctx.settlement is None:
        record_usage(ctx.usage_event())
    else:
        ctx.settlement.later()
    accesslog.emit(ctx)
    tracing.end_request(ctx)
