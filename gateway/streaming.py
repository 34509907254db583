"""Stream taps: watch an upstream SSE stream as it is relayed, event by event.

A tap returns the bytes to send on (normally the events unchanged), and notes what the
gateway needs: the usage figures, whether the stream reached its proper end, and enough
state to end a broken stream with the client protocol's own error event.

What a tap checks is kept to the two places that decide whether the stream is an answer at
all, so the events in between cost what they did before (a few substring tests):

    the first event   parsed in full, once: it must be the protocol's opening (a Chat chunk
                      with ``choices``, a ``response.*`` event), not an error, not garbage.
                      The relay holds the status line until this is known, so a broken
                      answer is still an HTTP error that may fail over.
    the end           Chat: ``[DONE]`` after a ``finish_reason``; Responses: a terminal
                      ``response.*`` event. A stream that ends otherwise is cut, and the
                      error it ended with (if its last event was one) is what gets reported.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson

from gateway.errors import GatewayError, UpstreamError
from gateway.providers.base import error_answer, is_error_answer
from gateway.wire import usage as usage_wire
from gateway.wire.sse import (
    DONE,
    SseSplitter,
    encode,
    event_data,
    event_json,
    event_name,
    split_events,
)
from gateway.wire.usage import Usage

# What a request with this usage is charged, when the upstream served it (True) or when
# only what reached the client counts (False: see StreamTap.delivered).
Pricer = Callable[[Usage, bool], Decimal]

# SSE lines that carry no data: an event made only of these says nothing yet.
_FIELD_PREFIXES = (b":", b"event:", b"id:", b"retry:")


def bad_response(message: str) -> UpstreamError:
    """The upstream answered, but not with its protocol (garbage, invalid JSON): a 502,
    which fails over (gateway.providers.failures) while the client has nothing yet."""
    return UpstreamError(message, code="upstream_bad_response")


class StreamTap:
    """Base: pass events through; subclasses inspect the ones that matter."""

    def __init__(self, secret: str | None = None) -> None:
        self.splitter = SseSplitter()
        self.secret = secret  # scrubbed from upstream error messages
        # Set: the final usage event gets the request's cost (``usage.cost``); it is parsed
        # anyway for the usage figures, so only that one event is encoded again.
        self.pricer: Pricer | None = None
        self.usage: Usage | None = None
        self.complete = False  # the upstream sent its protocol's proper end
        self.verified = False  # the first event was the protocol's opening
        self.ended_failed = False  # the proper end was the protocol's failure event
        self.failure: GatewayError | None = None  # the first event showed the answer is not one
        self._events = 0  # counted one by one; ``events`` adds the blocks' when asked
        self._counted = 0  # ``relayed`` entries whose blocks ``_events`` includes
        # Every event relayed, kept (not parsed) in case the upstream never reports usage and
        # Turnpike must count the tokens itself: single events, and blocks of quiet events
        # (whole events with their blank lines) as they passed (``relayed_events``).
        self.relayed: list[bytes] = []

    def feed(self, chunk: bytes) -> bytes:
        # Whole events come as one block: once the stream is proved, most of them need no
        # look at all and pass at C speed (``_relay_block``); a fast upstream's whole answer
        # can be a single read, proved by its first event.
        block = self.splitter.feed_block(chunk)
        if block is None:  # runs of blank lines: event by event, as they always were
            return self._on_events(self.splitter.feed(b""))
        if not self.verified:
            return self._prove(block)
        return self._relay_block(block)

    def _prove(self, block: bytes) -> bytes:
        """Event by event until one proves the stream (or shows it is not an answer), then
        the rest of the block as a block."""
        out: list[bytes] = []
        start = 0
        while start < len(block) and not self.verified:
            end = block.find(b"\n\n", start)  # a block's events are each ended by one
            event, start = block[start:end], end + 2
            if not self._check_first(event) and self.failure is not None:
                return b"".join(out)  # nothing of a failed answer is relayed
            kept = self.on_event(event)
            if kept is not None:
                out.append(kept + b"\n\n")
        if start < len(block):
            out.append(self._relay_block(block[start:]))
        return b"".join(out)

    def _relay_block(self, block: bytes) -> bytes:
        """Whole events, each ended by one blank line: the quiet ones at the start pass as
        they are (counted and kept as one block), the rest are taken one by one."""
        if not block:
            return b""
        head = self._quiet_head(block)
        if head:
            self.relayed.append(head)
            if len(head) == len(block):
                return block
        events = block[len(head):].split(b"\n\n")
        events.pop()  # the block ends with a blank line
        return head + self._on_events(events)

    def _on_events(self, events: list[bytes]) -> bytes:
        out = []
        for event in events:
            if not self.verified and not self._check_first(event) and self.failure is not None:
                break  # nothing of a failed answer is relayed
            kept = self.on_event(event)
            if kept is not None:
                out.append(kept + b"\n\n")
        return b"".join(out)

    # Substrings that may make an event matter to the tap (``on_event`` would do more than
    # count and keep it); an event without any of them is surely quiet.
    MARKS: tuple[bytes, ...] = ()

    def quiet(self, block: bytes) -> bool:
        """Whether ``on_event`` would pass every event of this block on unchanged, with
        nothing to note but the count: decided with substring counts, exactly."""
        return False

    def quiet_end(self, block: bytes) -> int:
        """Where the events that may be quiet end (a guess that ``quiet`` then checks): the
        start of the event holding the first mark, or the block's end."""
        first = min((i for i in (block.find(mark) for mark in self.MARKS) if i >= 0),
                    default=-1)
        return len(block) if first < 0 else block.rfind(b"\n\n", 0, first) + 2

    def _quiet_head(self, block: bytes) -> bytes:
        """The whole block if it is quiet (most are: a paced stream's read is one event),
        else the events up to ``quiet_end`` if they are, else nothing."""
        if self.quiet(block):
            return block
        cut = self.quiet_end(block)
        if cut <= 1 or cut >= len(block):
            return b""
        head = block[:cut]
        return head if self.quiet(head) else b""

    @property
    def events(self) -> int:
        """Events relayed so far (a Responses error or keep-alive event takes the next
        sequence number): the blocks' events are counted only when someone asks."""
        for kept in self.relayed[self._counted:]:  # a single event, kept without its blank
            self._events += kept.count(b"\n\n")   # line, adds nothing here
        self._counted = len(self.relayed)
        return self._events

    def relayed_events(self) -> list[bytes]:
        """The events relayed so far, one by one (kept as blocks while relaying)."""
        return split_events(self.relayed)

    def finish(self) -> bytes:
        rest = self.splitter.rest()
        if not rest or (not self.verified and not self._check_first(rest)
                        and self.failure is not None):
            return b""
        kept = self.on_event(rest)
        return kept + b"\n\n" if kept is not None else b""

    def buffered(self) -> int:
        """Bytes received but not yet a whole event."""
        return self.splitter.buffered()

    def _check_first(self, event: bytes) -> bool:
        """Check the first event that carries data; True once it proved the stream (an event
        of comments or fields alone is passed on and the next one checked)."""
        data = event_data(event)
        if data is None:
            if not all(line.startswith(_FIELD_PREFIXES) for line in event.split(b"\n")):
                self.failure = bad_response("The upstream's stream is not server-sent events.")
            return False
        if data == DONE:
            self.failure = bad_response("The upstream ended its stream before any answer.")
            return False
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.failure = bad_response("The upstream's stream carries an event that is not "
                                        "JSON.")
            return False
        if is_error_answer(parsed):
            self.failure = error_answer(data, {}, self.secret)
        elif not self.is_opening(parsed):
            self.failure = bad_response("The upstream's stream does not start like an answer "
                                        "of its protocol.")
        else:
            self.verified = True
        return self.verified

    def is_opening(self, data: Any) -> bool:
        """Whether the parsed first event is one this protocol's streams start with."""
        raise NotImplementedError

    def on_event(self, event: bytes) -> bytes | None:
        self._events += 1
        return event

    def ended_with(self) -> tuple[GatewayError, bool] | None:
        """For a stream that did not end properly (or ended with a failure): the error its
        last event reported, and whether that event already is the client protocol's own
        error (so nothing needs adding). Parses one event, only on this failure path."""
        raise NotImplementedError

    def delivered(self) -> bool:
        """Whether anything usable (text, reasoning, tool arguments) reached the client: a
        failed stream is charged only then. Only called on the failure path."""
        return bool(self.relayed_text())

    def relayed_text(self) -> str:
        """The generated text relayed so far (content, reasoning, tool arguments)."""
        raise NotImplementedError

    def error_event(self, error: GatewayError) -> bytes:
        raise NotImplementedError


class ChatTap(StreamTap):
    """Chat Completions chunks. Turnpike always asks the upstream for the usage chunk (to
    meter the request) and drops it again when the client did not ask for it."""

    def __init__(self, client_wants_usage: bool, secret: str | None = None) -> None:
        super().__init__(secret)
        self.client_wants_usage = client_wants_usage
        self.finished = False  # a choice carried a finish_reason

    def is_opening(self, data: Any) -> bool:
        return isinstance(data, dict) and isinstance(data.get("choices"), list)

    # A finish reason and usage are strings and objects when set: null ones are counted out.
    MARKS = (DONE, b'"finish_reason":"', b'"finish_reason": "', b'"usage":{', b'"usage": {')

    def quiet(self, block: bytes) -> bool:
        # on_event's own tests, over the block: no [DONE], and every "usage" and
        # "finish_reason" key is a null one (JSON strings escape their quotes: only keys match).
        if DONE in block:
            return False
        if b'"usage"' in block and block.count(b'"usage"') != (
                block.count(b'"usage":null') + block.count(b'"usage": null')):
            return False
        reasons = block.count(b'"finish_reason"')
        if not reasons:
            return True
        nulls = block.count(b'"finish_reason":null')
        return reasons == nulls or reasons == nulls + block.count(b'"finish_reason": null')

    def quiet_end(self, block: bytes) -> int:
        # What matters in a Chat stream comes at its end (the finish reason, usage, [DONE]):
        # the quiet events are guessed to end with the last one still unfinished, found
        # from the block's end rather than by searching the whole block for each mark.
        last = block.rfind(b'"finish_reason":null')
        if last < 0:
            return super().quiet_end(block)
        return block.find(b"\n\n", last) + 2

    def on_event(self, event: bytes) -> bytes | None:
        self._events += 1
        data = event_data(event)
        if data is None:
            return event
        self.relayed.append(event)
        if data == DONE:
            if not self.finished:
                # [DONE] without any finish_reason: the answer did not finish (lines that
                # were not chunks, or an error chunk); the relay ends it with an error.
                return None
            self.complete = True
            return event
        has_usage = b'"usage"' in data and b'"usage":null' not in data \
            and b'"usage": null' not in data
        if not has_usage and (b'"finish_reason"' not in data
                              or b'"finish_reason":null' in data
                              or b'"finish_reason": null' in data):
            return event
        chunk: Any = event_json(event)
        if not isinstance(chunk, dict):
            return event
        if has_usage:
            self.usage = usage_wire.from_chat(chunk.get("usage")) or self.usage
            if chunk.get("choices") == []:  # the final usage chunk
                if not self.client_wants_usage:
                    return None
                if self.pricer is not None and isinstance(chunk["usage"], dict) and \
                        self.usage is not None:
                    usage_wire.with_cost(chunk["usage"], self.pricer(self.usage, True))
                    return b"data: " + orjson.dumps(chunk)
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self.finished = True
        return event

    def finish(self) -> bytes:
        out = super().finish()
        if not self.complete and self.finished:
            # Some servers end after the finish_reason chunk without [DONE]; the stream is
            # whole, so close it the way clients expect.
            self.complete = True
            out += b"data: [DONE]\n\n"
        return out

    def error_event(self, error: GatewayError) -> bytes:
        return encode(error.body())

    def ended_with(self) -> tuple[GatewayError, bool] | None:
        datas = (event_data(event) for event in reversed(self.relayed_events()))
        last = next((d for d in datas if d is not None and d != DONE), None)
        if last is None or b'"error"' not in last:
            return None
        try:
            parsed = orjson.loads(last)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(parsed, dict) or parsed.get("error") is None:
            return None
        return error_answer(last, {}, self.secret), True  # Chat's error event is this chunk

    def relayed_text(self) -> str:
        out: list[str] = []
        for event in self.relayed_events():
            chunk = event_json(event)
            for choice in (chunk.get("choices") or []) if isinstance(chunk, dict) else []:
                delta = choice.get("delta") or {} if isinstance(choice, dict) else {}
                for key in ("content", "reasoning_content", "refusal"):
                    if isinstance(delta.get(key), str):
                        out.append(delta[key])
                for call in delta.get("tool_calls") or []:
                    args = (call.get("function") or {}).get("arguments")
                    if isinstance(args, str):
                        out.append(args)
        return "".join(out)


TERMINAL_EVENTS = (b'"response.completed"', b'"response.incomplete"', b'"response.failed"')


class ResponsesTap(StreamTap):
    """Responses events: usage and the end come with the terminal ``response.*`` event."""

    def __init__(self, secret: str | None = None) -> None:
        super().__init__(secret)
        self.response_id: str | None = None
        self.terminal: str | None = None
        self.final: dict[str, Any] | None = None  # the terminal event's response object

    def is_opening(self, data: Any) -> bool:
        return isinstance(data, dict) and str(data.get("type", "")).startswith("response.")

    MARKS = (b'"response.created"', *TERMINAL_EVENTS)

    def quiet(self, block: bytes) -> bool:
        return (self.response_id is not None or b'"response.created"' not in block) and \
            not any(t in block for t in TERMINAL_EVENTS)

    def on_event(self, event: bytes) -> bytes | None:
        self._events += 1
        self.relayed.append(event)
        if self.response_id is None and b'"response.created"' in event:
            data = event_json(event)
            if isinstance(data, dict) and isinstance(data.get("response"), dict):
                self.response_id = data["response"].get("id")
        elif any(t in event for t in TERMINAL_EVENTS):
            data = event_json(event)
            if isinstance(data, dict) and str(data.get("type", "")).startswith("response."):
                self.terminal = data["type"]
                self.complete = True
                self.ended_failed = self.terminal == "response.failed"
                response = data.get("response")
                if isinstance(response, dict):
                    self.final = response
                    self.usage = usage_wire.from_responses(response.get("usage")) or self.usage
                    self.response_id = self.response_id or response.get("id")
                    if self.pricer is not None and self.usage is not None and \
                            isinstance(response.get("usage"), dict):
                        # A failed response is charged only if something reached the client.
                        served = not self.ended_failed or self.delivered()
                        usage_wire.with_cost(response["usage"], self.pricer(self.usage, served))
                        return encode(data, event=event_name(event))[:-2]
        return event

    def ended_with(self) -> tuple[GatewayError, bool] | None:
        events = self.relayed_events()
        data = event_data(events[-1]) if events else None
        if data is None or (not self.ended_failed and b'"error"' not in data):
            return None
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(parsed, dict) or parsed.get("type") not in ("error",
                                                                     "response.failed"):
            return None
        # A relayed response.failed is the protocol's end; a bare error event is not (the
        # Codex CLI ignores it and waits), so response.failed still follows it.
        return error_answer(data, {}, self.secret), parsed["type"] == "response.failed"

    def relayed_text(self) -> str:
        out: list[str] = []
        for event in self.relayed_events():
            if b".delta" not in event:
                continue
            data = event_json(event)
            if isinstance(data, dict) and isinstance(data.get("delta"), str):
                out.append(data["delta"])
        return "".join(out)

    def error_event(self, error: GatewayError) -> bytes:
        """A ``response.failed`` event: the protocol's own terminal error, which both the
        Codex CLI and the SDK understand (an ``error`` event alone leaves them waiting)."""
        return encode(
            {
                "type": "response.failed",
                "sequence_number": self.events,
                "response": {
                    "id": self.response_id or "resp_failed",
                    "object": "response",
                    "status": "failed",
                    "output": [],
                    "error": {"code": error.code, "message": error.message},
                    "incomplete_details": None,
                },
            },
            event="response.failed",
        )
