"""Decoding an upstream's answer in any wire protocol into canonical events, checking that it
is the protocol's (the framing and end each ``WireProtocol`` declares)."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.providers.protocols import PROTOCOLS, WireProtocol
from gateway.translate import canonical as c
from gateway.wire.sse import DONE, SseSplitter, event_data, event_name


class EventDecoder:
    """Frames (SSE or NDJSON) of one upstream protocol -> canonical events; notices a
    stream that ends without its protocol's end, and a frame that is not the protocol's
    (garbage, invalid JSON): a translation cannot be trusted past one, so it is a failure."""

    def __init__(self, protocol: WireProtocol | str) -> None:
        if isinstance(protocol, str):
            protocol = PROTOCOLS[protocol]
        if protocol.stream_decoder is None or protocol.decode_body is None:
            raise ValueError(f"the {protocol.name} protocol is relayed, never decoded")
        self.protocol = protocol
        self.splitter = SseSplitter()
        self.buffer = b""
        self.ended = False
        self.finished = False  # a Finish came (for Chat, [DONE] ends only after one)
        self.failed = False  # a Failure came
        self.saw_content = False
        self.decoder: Any = protocol.stream_decoder()

    def decode_body(self, data: dict[str, Any]) -> list[c.Event]:
        assert self.protocol.decode_body is not None
        events = self.protocol.decode_body(data)
        self.ended = True
        return self._note(events)

    def feed(self, chunk: bytes) -> list[c.Event]:
        events: list[c.Event] = []
        if self.protocol.framing == "ndjson":
            lines = (self.buffer + chunk).split(b"\n")
            self.buffer = lines.pop()
            for line in lines:
                if self.failed:
                    break
                events += self._note(self._json_line(line))
            return events
        for frame in self.splitter.feed(chunk):  # noted frame by frame: [DONE] needs it
            if self.failed:
                break  # the first failure is the one reported; nothing after it is read
            events += self._note(self._sse(frame))
        return events

    def finish(self) -> list[c.Event]:
        events: list[c.Event] = []
        if self.failed:
            return events
        if self.protocol.framing == "ndjson":
            events += self._json_line(self.buffer)
            self.buffer = b""
        else:
            rest = self.splitter.rest()
            if rest:
                events += self._sse(rest)
        events = self._note(events)
        if not self.ended and not (self.protocol.ends_with_done and self.finished):
            # (Some Chat servers end after the finish_reason chunk without [DONE].)
            events.append(c.Failure("upstream_stream_cut",
                                    "The upstream ended the stream before it was complete."))
        return events

    def _json_line(self, line: bytes) -> list[c.Event]:
        if not line.strip():
            return []
        try:
            parsed = orjson.loads(line)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            return [c.Failure("upstream_bad_response",
                              "The upstream sent a line that is not a JSON object.")]
        return self.decoder.feed(parsed)

    def _sse(self, frame: bytes) -> list[c.Event]:
        data = event_data(frame)
        if data is None:
            if all(line.startswith((b":", b"event:", b"id:", b"retry:"))
                   for line in frame.split(b"\n")):
                return []  # comments (keep-alives) and fields without data
            return [c.Failure("upstream_bad_response",
                              "The upstream's stream is not server-sent events.")]
        if data == DONE:
            if not self.finished:
                return [c.Failure("upstream_stream_cut",
                                  "The upstream ended the stream without finishing the answer.")]
            self.ended = True
            return []
        if not data.strip():
            return []
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            return [c.Failure("upstream_bad_response",
                              "The upstream sent an event that is not a JSON object.")]
        if self.protocol.named_events:
            return self.decoder.feed(event_name(frame), parsed)
        return self.decoder.feed(parsed)

    def _note(self, events: list[c.Event]) -> list[c.Event]:
        ends_with_done = self.protocol.ends_with_done
        for event in events:
            if isinstance(event, c.Finish):
                self.finished = True
            elif isinstance(event, c.Failure):
                self.failed = True
            if isinstance(event, c.Failure) or (
                    isinstance(event, (c.Finish, c.UsageReport)) and not ends_with_done):
                self.ended = True
            elif isinstance(event, (c.TextDelta, c.RefusalDelta, c.ToolCallStart,
                                    c.ReasoningDelta, c.OpaqueItem)):
                self.saw_content = True
        return events
