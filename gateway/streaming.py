"""Stream taps: watch an upstream SSE stream as it is relayed, event by event.

A tap returns the bytes to send on (normally the events unchanged), and notes what the
gateway needs: the usage figures, whether the stream reached its proper end, and enough
state to end a broken stream with the client protocol's own error event.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import GatewayError
from gateway.wire import usage as usage_wire
from gateway.wire.sse import DONE, SseSplitter, encode, event_data, event_json
from gateway.wire.usage import Usage


class StreamTap:
    """Base: pass events through; subclasses inspect the ones that matter."""

    def __init__(self) -> None:
        self.splitter = SseSplitter()
        self.usage: Usage | None = None
        self.complete = False  # the upstream sent its protocol's proper end
        self.events = 0
        # Every event relayed, kept (not parsed) in case the upstream never reports usage and
        # Turnpike must count the tokens itself.
        self.relayed: list[bytes] = []

    def feed(self, chunk: bytes) -> bytes:
        out = []
        for event in self.splitter.feed(chunk):
            kept = self.on_event(event)
            if kept is not None:
                out.append(kept + b"\n\n")
        return b"".join(out)

    def finish(self) -> bytes:
        rest = self.splitter.rest()
        if not rest:
            return b""
        kept = self.on_event(rest)
        return kept + b"\n\n" if kept is not None else b""

    def on_event(self, event: bytes) -> bytes | None:
        self.events += 1
        return event

    def relayed_text(self) -> str:
        """The generated text relayed so far (content, reasoning, tool arguments)."""
        raise NotImplementedError

    def error_event(self, error: GatewayError) -> bytes:
        raise NotImplementedError


class ChatTap(StreamTap):
    """Chat Completions chunks. Turnpike always asks the upstream for the usage chunk (to
    meter the request) and drops it again when the client did not ask for it."""

    def __init__(self, client_wants_usage: bool) -> None:
        super().__init__()
        self.client_wants_usage = client_wants_usage
        self.finished = False  # a choice carried a finish_reason

    def on_event(self, event: bytes) -> bytes | None:
        self.events += 1
        data = event_data(event)
        if data is None:
            return event
        self.relayed.append(data)
        if data == DONE:
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
            if not self.client_wants_usage and chunk.get("choices") == []:
                return None
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

    def relayed_text(self) -> str:
        out: list[str] = []
        for data in self.relayed:
            chunk = event_json(b"data: " + data)
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

    def __init__(self) -> None:
        super().__init__()
        self.response_id: str | None = None
        self.terminal: str | None = None

    def on_event(self, event: bytes) -> bytes | None:
        self.events += 1
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
                response = data.get("response")
                if isinstance(response, dict):
                    self.usage = usage_wire.from_responses(response.get("usage")) or self.usage
                    self.response_id = self.response_id or response.get("id")
        return event

    def relayed_text(self) -> str:
        out: list[str] = []
        for event in self.relayed:
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
