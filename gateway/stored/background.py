"""Background responses: ``background: true`` on POST /v1/responses (issue 14).

    check()     before admission: a background response must be stored (the key's response
                storage on, the body not ``store: false``), else 400, as OpenAI requires
                store=true.
    start()     after admission (RPM, RPD, TPM, concurrency and quota are taken at the POST
                like any request's; a refusal is the usual 429): the record is staged with
                ``status: "queued"`` and its first events (``response.created`` and
                ``response.queued``), the run is dispatched, and the POST is answered at once
                with the queued response object, or, with ``stream: true``, with the run's
                events as they come (the client may leave; the run goes on).
    dispatch    with a Celery broker, the task ``gateway.tasks.run_background`` (a worker
                runs it on its process's event loop); with CELERY_TASK_ALWAYS_EAGER (the
                embedded default, no Redis) an asyncio task in the serving process. The POST
                never waits for the run.
    execute()   the run: queued -> in_progress, then the same steps as any request
                (``pipeline.plan_routes``, ``exchange.run``: routing, translation, failover;
                the ``Settlement``: cost, usage row, the concurrency slot held until it
                ends), with a Send (``Recorder``) that records each event with its
                ``sequence_number`` instead of writing to a socket. It ends completed,
                failed, incomplete or cancelled; the final record, events included, is
                staged for the database (``gateway.stored.store``).
    follow()    ``GET /v1/responses/{id}?stream=true&starting_after=N`` (and a streamed
                POST): the events after N, then the live ones until the terminal event.
    cancel()    ``POST /v1/responses/{id}/cancel``: a queued run is ended at once; a running
                one is flagged, its runner (polling the flag with its heartbeat) aborts the
                upstream request, charges what was produced and ends it ``cancelled``.
                Idempotent: an ended response is returned as it is.
    reap()      the beat task ``gateway.reap_background``: a run whose heartbeat stopped
                (its worker died) or that no worker started in time is failed; its slot and
                reservation come back by the limiter's own leases.

The shared state (status, cancel flag, lease, events) is ``gateway.stored.runs``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings

from billing import pricing
from gateway import policy
from gateway.charging import Settlement
from gateway.context import RelayContext
from gateway.errors import GatewayError, InvalidRequest, ModelNotFound
from gateway.metrics import BACKGROUND, observe
from gateway.outcome import Outcome
from gateway.respond import Receive, Send, send_chunk, send_json, start_stream
from gateway.stored import runs as runstate
from gateway.stored import store
from gateway.stored.chain import resolved_input
from gateway.stored.records import StoredRecord, new_id
from gateway.stored.runs import TERMINAL
from gateway.translate.responses import ResponsesEncoder
from gateway.wire import usage as usage_wire
from gateway.wire.sse import SseSplitter, encode, event_data
from keys import limits
from keys.snapshots import KeySnapshot

if TYPE_CHECKING:
    from gateway.stored.chain import Turn

log = logging.getLogger(__name__)

CANCEL_POLL = 0.25  # seconds between a runner's heartbeats (each also reads the cancel flag)
FOLLOW_POLL = 0.1  # seconds between reads of a run's events by a stream in another process
CANCEL_WAIT = 10.0  # longest a cancel waits for a running run to end before answering
READ_BATCH = 1000

# The events that end a run, by the status they end it with.
TERMINAL_EVENTS = {"response.completed": "completed", "response.failed": "failed",
                   "response.incomplete": "incomplete", "response.cancelled": "cancelled"}
EVENT_OF = {status: event for event, status in TERMINAL_EVENTS.items()}
# Headers a run never carries into the queue: the client's credentials.
SECRET_HEADERS = frozenset({b"authorization", b"x-api-key", b"api-key", b"cookie",
                            b"proxy-authorization"})
# Response fields echoed from the request, as the translated encoder does.
ECHOED = ("instructions", "tools", "tool_choice", "parallel_tool_calls", "max_output_tokens",
          "reasoning", "temperature", "top_p", "text", "metadata", "user")


def wants_background(operation: str, payload: dict[str, Any]) -> bool:
    return operation == "responses" and payload.get("background") is True


def check(key: KeySnapshot, payload: dict[str, Any]) -> None:
    """A background response is stored: refuse one that cannot be (before admission)."""
    if key.store_days <= 0:
        raise InvalidRequest(
            "Background responses must be stored, and response storage is off for this API "
            "key (zero data retention). Send the request without background=true.",
            code="response_storage_disabled", param="background")
    if payload.get("store") is False:
        raise InvalidRequest(
            "Background responses must be stored: send store=true (or leave store out) "
            "with background=true.", param="store")


# --- the job: what a run needs, as JSON (it crosses the Celery broker) -----------------------

@dataclasses.dataclass(slots=True)
class Job:
    response_id: str
    request_id: str
    started_at: float  # unix seconds of the POST
    client_ip: str | None
    headers: list[tuple[str, str]]  # latin-1; never the client's credentials
    key: dict[str, Any]  # the KeySnapshot
    client_model: str  # the model as the client named it
    model: str  # the model routed (an effort suffix taken off)
    effort: str | None
    session: str  # the routing session (sticky binding)
    payload: dict[str, Any]  # the body the run sends: streamed, not background
    record: dict[str, Any]  # the queued StoredRecord
    admission: dict[str, Any]
    price: dict[str, str | None]
    multiplier: str
    binding: str | None
    cooled: dict[str, int]

    def encode(self) -> str:
        return orjson.dumps(self).decode()

    @classmethod
    def decode(cls, text: str | bytes) -> Job:
        data = orjson.loads(text)
        data["headers"] = [tuple(h) for h in data["headers"]]
        return cls(**data)

    def stored(self) -> StoredRecord:
        return StoredRecord(**self.record)

    def ticket(self) -> policy.Ticket:
        values: dict[str, Any] = {k: Decimal(v) if v is not None else None
                                  for k, v in self.price.items()}
        price = pricing.Price(**values)
        return policy.Ticket(
            admission=limits.Admission(**self.admission), price=price,
            multiplier=Decimal(self.multiplier), headers=[], limiter=limits.limiter(),
            binding=self.binding, cooled={int(k): v for k, v in self.cooled.items()})

    def context(self) -> RelayContext:
        headers = {k.encode("latin-1"): v.encode("latin-1") for k, v in self.headers}
        ctx = RelayContext(
            request_id=self.request_id, endpoint="responses", started=time.perf_counter(),
            started_at=datetime.fromtimestamp(self.started_at, UTC), client_ip=self.client_ip,
            user_agent=headers.get(b"user-agent", b"").decode("latin-1"), headers=headers)
        ctx.key = KeySnapshot.from_dict(dict(self.key))
        ctx.model = self.client_model
        ctx.effort = self.effort
        ctx.stream = True  # a run always streams: its events are what it keeps
        return ctx


def _price_fields(price: pricing.Price) -> dict[str, str | None]:
    return {f.name: None if getattr(price, f.name) is None else str(getattr(price, f.name))
            for f in dataclasses.fields(price)}


def queued_response(ctx: RelayContext, turn: Turn, response_id: str,
                    created: int) -> dict[str, Any]:
    """The response object the POST answers with: status queued, the request echoed."""
    payload = turn.payload
    echo = {k: payload[k] for k in ECHOED if payload.get(k) is not None}
    body = ResponsesEncoder(ctx.model, echo).response("queued")
    body.update(id=response_id, created_at=created, background=True, store=True,
                previous_response_id=turn.previous.id if turn.previous is not None else None)
    return body


def lifecycle(kind: str, seq: int, response: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "sequence_number": seq, "response": response}


# --- the POST ----------------------------------------------------------------------------------

async def start(ctx: RelayContext, key: KeySnapshot, model: str, session: str,
                payload: dict[str, Any], receive: Receive, send: Send) -> Outcome:
    """Queue an admitted background request and answer at once (see the module's doc)."""
    from gateway import pipeline

    turn = ctx.turn
    ticket = ctx.ticket
    assert turn is not None and turn.storing and ticket is not None
    if turn.pin is not None:  # a run never passes through to the upstream's own copy
        payload = (await turn.expand())[0]
    if turn.references:  # nor to the item references': every route gets the items
        items = resolved_input(payload.get("input"),
                               {i: item for i, (item, _) in turn.references.items()})
        if items is not None:
            payload = {**payload, "input": items}
    response_id = new_id("resp")
    created = int(time.time())
    response = queued_response(ctx, turn, response_id, created)
    turn.response = response
    record = turn.record()
    assert record is not None
    # The run settles this request: nothing is charged or written for the POST itself.
    settle = ctx.settlement = Settlement(ticket, ctx.outcome, payload, ctx.usage_event)
    job = Job(
        response_id=response_id, request_id=ctx.request_id,
        started_at=ctx.started_at.timestamp(), client_ip=ctx.client_ip,
        headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in ctx.headers.items()
                 if k not in SECRET_HEADERS],
        key=key.to_dict(), client_model=ctx.model, model=model, effort=ctx.effort,
        session=session,
        payload={**{k: v for k, v in payload.items() if k != "background"}, "stream": True},
        record=dataclasses.asdict(record), admission=dataclasses.asdict(ticket.admission),
        price=_price_fields(ticket.price), multiplier=str(ticket.multiplier),
        binding=ticket.binding, cooled={str(k): v for k, v in ticket.cooled.items()})
    state = runstate.runs()
    events = [lifecycle("response.created", 0, response),
              lifecycle("response.queued", 1, response)]
    queue_until = runstate.now_ms() + int(settings.GATEWAY_BACKGROUND_QUEUE_SECONDS * 1000)
    try:
        await state.create(record, events, queue_until, job.admission)
    except Exception:
        await settle()  # nothing was queued: the slot and the reservation go back now
        raise
    try:
        await dispatch(job)
    except Exception:
        log.exception("could not queue background response %s", response_id)
        await _end_unstarted(record, "failed", {
            "code": "background_queue_unavailable",
            "message": "Turnpike could not queue this background response."})
        await settle()
        raise GatewayError("Turnpike could not queue the background response; try again.",
                           code="background_queue_unavailable") from None
    settle.done = True  # handed over: the run charges it and writes its usage row
    if not ctx.stream:
        await send_json(ctx, send, 200, orjson.dumps(response))
        return ctx.outcome
    await pipeline.watch_disconnect(ctx, receive, follow(ctx, record, -1, send))
    return ctx.outcome


_spawned: set[asyncio.Task[None]] = set()


async def dispatch(job: Job) -> None:
    """Run ``job`` elsewhere: a Celery worker, or (eager mode) this process's loop."""
    if settings.CELERY_TASK_ALWAYS_EAGER:
        task = asyncio.get_running_loop().create_task(execute(job))
        _spawned.add(task)
        task.add_done_callback(_spawned.discard)
        return
    from gateway.tasks import run_background

    await sync_to_async(run_background.apply_async, thread_sensitive=False)(
        args=[job.encode()])
    # Until a worker starts it the beat task renews the slot and the reservation (reap);
    # the worker does while it runs (gateway.policy.leases).
    policy.leases.release(limits.Admission(**job.admission))


def running() -> int:
    """Background runs on this process's loop (eager mode, or a worker's loop)."""
    return len(_spawned)


# --- the run -----------------------------------------------------------------------------------

class RunStopped(Exception):
    """The run was ended elsewhere (reaped, or its record cancelled) while it ran."""


class Assembler:
    """The response as the events so far describe it: the last lifecycle snapshot and the
    output items (a half-streamed item with the text it has)."""

    def __init__(self, response: dict[str, Any]) -> None:
        self.response = response
        self.items: dict[int, dict[str, Any]] = {}
        self.done: set[int] = set()

    def feed(self, event: dict[str, Any]) -> None:  # noqa: C901 (one branch per event kind)
        kind = event.get("type")
        index = event.get("output_index")
        if isinstance(event.get("response"), dict):
            self.response = event["response"]
            return
        if not isinstance(index, int):
            return
        item = self.items.get(index)
        if kind == "response.output_item.added" and isinstance(event.get("item"), dict):
            self.items[index] = orjson.loads(orjson.dumps(event["item"]))
        elif kind == "response.output_item.done" and isinstance(event.get("item"), dict):
            self.items[index] = event["item"]
            self.done.add(index)
        elif item is None or index in self.done:
            return
        elif kind == "response.content_part.added" and isinstance(event.get("part"), dict):
            content = item.setdefault("content", [])
            if isinstance(content, list):
                content.append(dict(event["part"]))
        elif kind == "response.output_text.delta":
            content = item.get("content")
            at = event.get("content_index", 0)
            if isinstance(content, list) and isinstance(at, int) and 0 <= at < len(content) \
                    and isinstance(content[at], dict):
                content[at]["text"] = str(content[at].get("text", "")) + \
                    str(event.get("delta", ""))
        elif kind == "response.function_call_arguments.delta":
            item["arguments"] = str(item.get("arguments", "")) + str(event.get("delta", ""))

    def snapshot(self, status: str, **fields: Any) -> dict[str, Any]:
        output = []
        for index in sorted(self.items):
            item = self.items[index]
            if index not in self.done and "status" in item:
                item = {**item, "status": "incomplete"}
            output.append(item)
        return {**self.response, "status": status, "output": output, **fields}


class Recorder:
    """The run's Send: what the exchange would write to a client's socket, kept as events.

    The upstream's first lifecycle event becomes ``response.in_progress`` (the POST already
    recorded ``response.created`` and ``response.queued``); every response object carries
    the run's id; keep-alives are dropped; the terminal event is held for ``Runner.finish``
    (it goes out with the status change, in one step). A JSON answer (an error before the
    stream started, or an upstream that answered a stream with JSON) is kept whole."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.status = 0
        self.sse = False
        self.body = b""
        self.splitter = SseSplitter()
        self.started = False  # the run's in_progress event is out
        self.terminal: dict[str, Any] | None = None

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            ctype = dict(message.get("headers") or []).get(b"content-type", b"")
            self.sse = ctype.startswith(b"text/event-stream")
            return
        body = message.get("body", b"")
        if not self.sse:
            self.body += body
            return
        raws = self.splitter.feed(body)
        if not message.get("more_body"):
            rest = self.splitter.rest()
            if rest:
                raws.append(rest)
        events = [e for e in (self.event(r) for r in raws) if e is not None]
        if events:
            await self.runner.emit(events)

    def event(self, raw: bytes) -> dict[str, Any] | None:
        data = event_data(raw)
        if data is None or data.strip() == b"[DONE]":
            return None
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(event, dict):
            return None
        kind = event.get("type")
        if kind == "keepalive":
            return None
        if kind in ("response.created", "response.in_progress", "response.queued"):
            if self.started:
                return None
            self.started = True
            event["type"] = "response.in_progress"
        if isinstance(event.get("response"), dict):
            event["response"] = self.runner.patch(event["response"])
        if kind in TERMINAL_EVENTS:
            self.terminal = event
            return None
        return event


class Runner:
    """One background run in this process (see ``execute``)."""

    def __init__(self, job: Job, state: Any, seq: int, ctx: RelayContext,
                 record: StoredRecord) -> None:
        self.job = job
        self.state = state
        self.seq = seq  # the last event's sequence number
        self.ctx = ctx
        self.record = record
        self.recorder = Recorder(self)
        self.assembler = Assembler(record.response)
        self.cancelled = False  # asked to (a cancel, or the response was deleted)
        self.stopped = False  # ended elsewhere meanwhile: nothing more to record

    def patch(self, response: dict[str, Any]) -> dict[str, Any]:
        base = self.record.response
        return {**response, "id": base["id"], "created_at": base["created_at"],
                "background": True, "store": True,
                "previous_response_id": base.get("previous_response_id")}

    async def emit(self, events: list[dict[str, Any]]) -> None:
        first = self.seq + 1
        numbered = []
        for event in events:
            self.seq += 1
            event = {"type": event.get("type"), "sequence_number": self.seq,
                     **{k: v for k, v in event.items() if k not in ("type", "sequence_number")}}
            self.assembler.feed(event)
            numbered.append(event)
        if not await self.state.append(self.job.response_id, first, numbered):
            self.stopped = True
            raise RunStopped

    async def run(self) -> None:
        ctx = self.ctx
        settle = ctx.settlement
        assert settle is not None
        work = asyncio.get_running_loop().create_task(self.exchange())
        heart = asyncio.get_running_loop().create_task(self.heartbeat(work))
        try:
            try:
                await asyncio.wait([work])
            except asyncio.CancelledError:  # this process is stopping: the reaper ends it
                work.cancel()
                raise
            if work.cancelled() or isinstance(work.exception(), RunStopped):
                # Cancelled (or ended elsewhere) mid-run: the upstream request was closed;
                # charged for what was produced (counted when the upstream reported none).
                ctx.error_code = "cancelled" if self.cancelled else "background_stopped"
                ctx.status = ctx.status or 499
                await settle()
            elif work.exception() is not None:  # exchange() answers every error; still:
                log.error("background response %s: the run broke", self.job.response_id,
                          exc_info=work.exception())
        finally:
            heart.cancel()
            from gateway import pipeline

            pipeline.record(ctx)  # settles in the background if nothing did
        if not self.stopped:
            await self.finish()

    async def exchange(self) -> None:
        """The request's own steps, as ``pipeline.relay`` takes them after admission."""
        from gateway import exchange, pipeline
        from gateway.providers.failures import UpstreamFailed
        from gateway.routing import aget_route_table

        ctx, job = self.ctx, self.job
        settle = ctx.settlement
        assert settle is not None and ctx.key is not None and ctx.ticket is not None
        send = self.recorder
        try:
            table = await aget_route_table()
            candidates = table.serving(job.model, ctx.key.group_id,
                                       ctx.key.dedicated_upstreams)
            if not candidates:
                raise ModelNotFound(
                    f"The model '{job.model}' does not exist or no upstream serves it.")
            routes = pipeline.plan_routes(job.model, candidates, job.session, ctx.ticket)
            await exchange.run(ctx, "responses", routes, job.payload,
                               orjson.dumps(job.payload), ctx.outcome, send, settle)
        except UpstreamFailed as exc:
            await pipeline.answer_error(ctx, send, exc.error)
        except GatewayError as exc:
            await pipeline.answer_error(ctx, send, exc)
        except (RunStopped, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("background response %s: unhandled error", job.response_id)
            ctx.error_code = ctx.error_code or "internal_error"
            await pipeline.answer_error(ctx, send, GatewayError(
                "Turnpike hit an internal error; the background response was not completed. "
                f"Request id: {ctx.request_id}."))

    async def heartbeat(self, work: asyncio.Task[None]) -> None:
        """Renew the run's lease and watch for a cancel (or a delete) while it works."""
        lease = int(settings.GATEWAY_CONCURRENCY_LEASE_SECONDS * 1000)
        while not work.done():
            await asyncio.sleep(CANCEL_POLL)
            try:
                verdict = await self.state.beat(self.job.response_id,
                                                runstate.now_ms() + lease)
            except Exception:
                log.warning("background response %s: heartbeat failed", self.job.response_id,
                            exc_info=True)
                continue
            if verdict == "run":
                continue
            self.cancelled = verdict == "cancel"
            self.stopped = verdict == "stop"
            work.cancel()
            return

    async def finish(self) -> None:
        """End the run with what it came to, in one step with its last event, and stage its
        record (with its events) for the database."""
        ctx, recorder = self.ctx, self.recorder
        settle = ctx.settlement
        cost = settle.cost if settle is not None else Decimal(0)
        response: dict[str, Any] | None = None
        status = "failed"
        if self.cancelled:
            status = "cancelled"
            response = self.assembler.snapshot(status, usage=_usage(ctx.outcome, cost))
        elif recorder.terminal is not None:
            status = TERMINAL_EVENTS[recorder.terminal["type"]]
            response = recorder.terminal.get("response")
        elif recorder.status == 200 and recorder.body:  # a whole JSON response
            answer = _json(recorder.body)
            if answer is not None:
                response = self.patch(answer)
                status = str(answer.get("status"))
                status = status if status in TERMINAL - {"cancelled"} else "completed"
        if not isinstance(response, dict):
            response = self.assembler.snapshot(
                "failed", error=_error_of(recorder.body), usage=_usage(ctx.outcome, cost))
        response = {**response, "status": status}
        route = ctx.outcome.route
        final = dataclasses.replace(
            self.record, status=status, response=response,
            upstream_id=route.upstream.id if route is not None else None,
            credential_id=route.credential.id if route is not None and route.credential
            else None)
        await end(self.state, final, ("in_progress",))


def _usage(out: Outcome, cost: Decimal) -> dict[str, Any] | None:
    if out.usage is None:
        return None
    return orjson.loads(orjson.dumps(usage_wire.with_cost(
        usage_wire.to_responses(out.usage), cost)))


def _json(body: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _error_of(body: bytes) -> dict[str, Any]:
    error = (_json(body) or {}).get("error")
    if not isinstance(error, dict):
        return {"code": "internal_error", "message": "The background response failed."}
    return {"code": error.get("code") or error.get("type") or "error",
            "message": str(error.get("message") or "")}


async def end(state: Any, final: StoredRecord, from_: tuple[str, ...],
              stale_before: int | None = None) -> bool:
    """Move a run to ``final.status`` (if it is in one of ``from_``) with its terminal event
    and record, then stage the record with every event for the database. False when the
    run was elsewhere (someone else ended it)."""
    event = (EVENT_OF[final.status], {"response": final.response})
    seq = await state.move(final.id, from_, final.status, record=final, event=event,
                           stale_before=stale_before)
    if seq is None:
        return False
    events = await _all_events(state, final.id)
    await store.stage(dataclasses.replace(final, events=events))
    return True


async def _all_events(state: Any, rid: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while True:
        _, batch = await state.read(rid, events[-1]["sequence_number"] if events else -1,
                                    READ_BATCH)
        if not batch:
            return events
        events.extend(batch)


async def execute(job: Job) -> None:
    """Run one background response on this loop (the worker's, or the serving process's)."""
    state = runstate.runs()
    record = job.stored()
    ctx = job.context()
    ticket = ctx.ticket = job.ticket()
    settle = ctx.settlement = Settlement(ticket, ctx.outcome, job.payload, ctx.usage_event)
    lease = int(settings.GATEWAY_CONCURRENCY_LEASE_SECONDS * 1000)
    running_record = dataclasses.replace(
        record, status="in_progress", response={**record.response, "status": "in_progress"})
    try:
        seq = await state.move(record.id, ("queued",), "in_progress", record=running_record,
                               deadline_ms=runstate.now_ms() + lease)
    except Exception:
        log.exception("background response %s could not start", record.id)
        seq = None
    if seq is None:  # cancelled (or failed) before it started: the slot goes back
        ctx.status = 499
        ctx.error_code = "cancelled" if await _status(state, record.id) == "cancelled" \
            else "background_not_started"
        await settle()
        observe(ctx, BACKGROUND)
        return
    a = ticket.admission
    if a.concurrency or a.reserve:
        policy.leases.hold(a)  # renewed while it runs, on whichever process runs it
    try:
        await Runner(job, state, seq, ctx, running_record).run()
    finally:
        observe(ctx, BACKGROUND)  # its attempts, tokens and cost (README, "Metrics")


async def _status(state: Any, rid: str) -> str:
    try:
        return str(await state.status(rid))
    except Exception:
        return ""


# --- a Celery worker's loop ----------------------------------------------------------------

class WorkerLoop:
    """One event loop per worker process, in a thread: every run the process takes runs on
    it, so runs share the pooled upstream connections, the Redis connection and the usage
    and store writers, as requests do in a gateway process."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="turnpike-background",
                                 daemon=True).start()
                self._loop = loop
            return self._loop

    def run(self, work: Coroutine[Any, Any, Any]) -> Any:
        future: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(
            work, self.loop())
        return future.result()


worker_loop = WorkerLoop()


def run_job(text: str) -> None:
    """The Celery task's body (``gateway.tasks.run_background``)."""
    worker_loop.run(execute(Job.decode(text)))


# --- streaming the events ----------------------------------------------------------------------

def starting_after(query: list[tuple[str, str]]) -> int:
    values = [v for k, v in query if k == "starting_after"]
    if not values or values[-1] == "":
        return -1
    try:
        after = int(values[-1])
    except ValueError:
        after = -2
    if after < -1:
        raise InvalidRequest(f"Invalid 'starting_after': {values[-1]!r}. It must be a "
                             "sequence number (a whole number, 0 or more).",
                             param="starting_after")
    return after


async def replay(ctx: RelayContext, key: KeySnapshot, record: StoredRecord,
                 query: list[tuple[str, str]], send: Send,
                 receive: Receive | None = None) -> None:
    """``GET /v1/responses/{id}?stream=true[&starting_after=N]`` of a background response."""
    after = starting_after(query)
    if receive is None:
        await follow(ctx, record, after, send)
        return
    from gateway import pipeline

    await pipeline.watch_disconnect(ctx, receive, follow(ctx, record, after, send))


async def follow(ctx: RelayContext, record: StoredRecord, after: int, send: Send) -> None:
    """Send the run's events after sequence number ``after``, then the live ones, until its
    terminal event. A run that ended long ago is replayed from its record."""
    state = runstate.runs()
    rid = record.id
    await start_stream(ctx, send)
    keepalive = settings.GATEWAY_KEEPALIVE_SECONDS
    poll = FOLLOW_POLL if settings.REDIS_URL else keepalive
    stale_after = settings.GATEWAY_CONCURRENCY_LEASE_SECONDS
    cursor = after
    last_sent = quiet_since = time.monotonic()
    while True:
        status, events = await state.read(rid, cursor, READ_BATCH)
        if events is None:  # no live log: the record's events (the database's copy)
            latest = await store.get(rid, record.tenant_id) or record
            await _send_events(ctx, send, [e for e in latest.events or ()
                                           if e.get("sequence_number", -1) > cursor])
            break
        if events:
            await _send_events(ctx, send, events)
            cursor = events[-1]["sequence_number"]
            last_sent = quiet_since = time.monotonic()
            if events[-1].get("type") in TERMINAL_EVENTS:
                break
            continue
        if status in TERMINAL:  # ended, and the client has every event it asked for
            break
        now = time.monotonic()
        if now - last_sent >= keepalive:
            await send_chunk(ctx, send, b": keepalive\n\n")
            last_sent = now
        if now - quiet_since >= stale_after:  # is its runner still there?
            quiet_since = now
            await reap_one(rid)
        await runstate.wait(rid, min(poll, keepalive))
    ctx.stream_open = False
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _send_events(ctx: RelayContext, send: Send, events: list[dict[str, Any]]) -> None:
    if events:
        await send_chunk(ctx, send, b"".join(encode(e, event=e.get("type")) for e in events))


# --- cancel ------------------------------------------------------------------------------------

async def cancel(ctx: RelayContext, key: KeySnapshot, record: StoredRecord, send: Send) -> None:
    """``POST /v1/responses/{id}/cancel`` of a background response (the caller checked the
    tenant and that it is one): the response object, ``cancelled`` unless it had ended."""
    state = runstate.runs()
    if record.status not in TERMINAL:
        await _cancel(state, record)
        latest = await store.get(record.id, key.tenant_id)
        record = latest or record
    await send_json(ctx, send, 200, orjson.dumps(record.response))


async def _cancel(state: Any, record: StoredRecord) -> None:
    if await _end_unstarted(record, "cancelled", None, state=state):
        return
    if await state.cancel(record.id) != "in_progress":
        return
    deadline = time.monotonic() + CANCEL_WAIT
    while time.monotonic() < deadline:  # its runner ends it within a heartbeat or two
        if await state.status(record.id) in TERMINAL:
            return
        await runstate.wait(record.id, FOLLOW_POLL)
    log.warning("background response %s: no runner ended it within %ss of its cancel",
                record.id, CANCEL_WAIT)


async def _end_unstarted(record: StoredRecord, status: str, error: dict[str, Any] | None,
                         state: Any = None) -> bool:
    """End a run still queued (nobody runs it yet): ``cancelled`` or ``failed``."""
    state = state or runstate.runs()
    response = {**record.response, "status": status, "error": error}
    final = dataclasses.replace(record, status=status, response=response)
    return await end(state, final, ("queued",))


# --- reaping ------------------------------------------------------------------------------------

async def _current(rid: str) -> StoredRecord | None:
    """A run's record as it stands, whoever's tenant (the reaper's view)."""
    if settings.REDIS_URL:
        from portal.infra.redis import fast_redis

        client = fast_redis()
        raw = await client.execute("GET", store.doc_key(rid)) if client is not None else None
        return StoredRecord.decode(raw) if raw is not None else None
    return store.local.pending.get(rid)


async def reap_one(rid: str) -> bool:
    """Fail the run ``rid`` if its lease ran out: its worker died, or none started it."""
    state = runstate.runs()
    now = runstate.now_ms()
    record = await _current(rid)
    if record is None:  # deleted meanwhile: only its state is left to end
        return await state.move(rid, ("queued", "in_progress"), "failed",
                                stale_before=now) is not None
    status = await state.status(rid)
    if status not in ("queued", "in_progress"):
        return False
    events = await _all_events(state, rid)
    assembler = Assembler(record.response)
    for event in events:
        assembler.feed(event)
    if status == "queued":
        error = {"code": "background_not_started",
                 "message": "No worker started this background response in time "
                            f"({settings.GATEWAY_BACKGROUND_QUEUE_SECONDS:g} s)."}
    else:
        error = {"code": "background_worker_lost",
                 "message": "The worker running this background response stopped before it "
                            "ended."}
    response = assembler.snapshot("failed", error=error)
    final = dataclasses.replace(record, status="failed", response=response)
    done = await end(state, final, ("queued", "in_progress"), stale_before=now)
    if done:
        log.warning("background response %s failed: %s", rid, error["message"])
    return done


async def reap() -> int:
    """The beat task ``gateway.reap_background``: fail every run whose lease ran out, and
    renew the concurrency slots and reservations of the runs still waiting for a worker
    (nobody else does until one starts them; the beat runs well within their lease)."""
    state = runstate.runs()
    now = runstate.now_ms()
    failed = 0
    for rid in await state.stale(now):
        try:
            failed += await reap_one(rid)
        except Exception:
            log.exception("could not reap background response %s", rid)
    waiting = await state.queued(now)
    if waiting:
        await limits.limiter().renew([limits.Admission(**a) for a in waiting])
    return failed


def reap_now() -> int:
    """The beat task's body (sync): reap on the worker's loop."""
    return int(worker_loop.run(reap()))
