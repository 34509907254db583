"""A fault-injecting upstream for tests, independent of the demo fake (tests/fakeupstream/)
so that the fake is not the judge of the gateway that was built against it.

It is a raw asyncio HTTP/1.1 server, not a web framework: faults are about bytes on the
wire (a Content-Length that lies, a chunked stream closed mid-event, silence after the
headers), and a framework would fix or hide exactly those. It speaks just enough OpenAI
Chat Completions, Responses, Anthropic Messages and Ollama chat to give a normal answer.

The fault is the first path segment, so an upstream row's base URL selects it:

    openai kinds     http://127.0.0.1:PORT/<fault>/v1      (-> /<fault>/v1/chat/completions)
    anthropic/ollama http://127.0.0.1:PORT/<fault>         (-> /<fault>/v1/messages)

Faults (FAULTS below): ok, s500, s503, s429 (Retry-After: 7), s429bare, hang_headers,
hang_body, hang_after_start, cut_body, cut_after_start, garbage_json, garbage_sse,
error200 (an error in the form asked: JSON, or an SSE/NDJSON error event),
error200json (a JSON error body even for a stream), badjson, badjson_after_start,
cut_after_content (a stream broken after its first text), late_error (a stream silent for
LATE_SECONDS, then an error event), redirect (307 to the sink listener, which records every
call it gets and would answer normally).

    python -m tests.faults.faultupstream --port 9100 --sink-port 9101
    GET /_faults/calls    every request seen by either listener (newest last)
    DELETE /_faults/calls
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import time
from typing import Any

FAULTS = (
    "ok", "s500", "s503", "s429", "s429bare", "hang_headers", "hang_body", "hang_after_start",
    "cut_body", "cut_after_start", "garbage_json", "garbage_sse", "error200", "error200json",
    "badjson", "badjson_after_start", "cut_after_content", "late_error", "redirect",
)
HANG_SECONDS = 30.0
LATE_SECONDS = 1.0
TEXT = "fault-free answer"
USAGE_IN, USAGE_OUT = 5, 2
# Deterministic binary noise without a blank line (so no SSE event ever completes) and
# without anything that looks like an SSE field.
NOISE = bytes(b for b in random.Random(7).randbytes(6000) if b not in (10, 13))[:4096]

calls: list[dict[str, Any]] = []
sink_port = 0


class Request:
    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes,
                 listener: str) -> None:
        self.method, self.path, self.headers, self.body = method, path, headers, body
        self.listener = listener
        try:
            self.json: Any = json.loads(body) if body else {}
        except ValueError:
            self.json = {}
        if not isinstance(self.json, dict):
            self.json = {}

    @property
    def stream(self) -> bool:
        return self.json.get("stream") is True

    @property
    def protocol(self) -> str:
        for tail, protocol in (("/chat/completions", "chat"), ("/responses/compact", "compact"),
                               ("/responses", "responses"), ("/v1/messages", "anthropic"),
                               ("/api/chat", "ollama")):
            if self.path.endswith(tail):
                return protocol
        return "other"


# --- wire ---------------------------------------------------------------------------------

async def read_request(reader: asyncio.StreamReader, listener: str) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length") or 0))
    return Request(method, path, headers, body, listener)


def head(status: int, reason: str, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in headers.items()),
             "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class Reply:
    """Writes one answer; every answer closes its connection (no keep-alive state)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    async def whole(self, status: int, body: bytes, ctype: str = "application/json",
                    reason: str = "OK", extra: dict[str, str] | None = None) -> None:
        headers = {"Content-Type": ctype, "Content-Length": str(len(body)), **(extra or {})}
        self.writer.write(head(status, reason, headers) + body)
        await self.writer.drain()

    async def start_chunked(self, ctype: str) -> None:
        self.writer.write(head(200, "OK", {"Content-Type": ctype,
                                           "Transfer-Encoding": "chunked"}))
        await self.writer.drain()

    async def send(self, data: bytes) -> None:
        self.writer.write(chunk(data))
        await self.writer.drain()

    async def end(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()


# --- normal answers, per protocol -------------------------------------------------------

def sse(data: Any, event: str | None = None) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "").encode() + f"data: {text}\n\n".encode()


def answer_json(protocol: str, model: str) -> dict[str, Any]:
    if protocol == "chat":
        return {"id": "chatcmpl-fault", "object": "chat.completion", "created": int(time.time()),
                "model": model, "choices": [{"index": 0, "finish_reason": "stop",
                                             "message": {"role": "assistant", "content": TEXT}}],
                "usage": {"prompt_tokens": USAGE_IN, "completion_tokens": USAGE_OUT,
                          "total_tokens": USAGE_IN + USAGE_OUT}}
    if protocol in ("responses", "compact"):
        return response_object(model, "completed")
    if protocol == "anthropic":
        return {"id": "msg_fault", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": TEXT}], "stop_reason": "end_turn",
                "usage": {"input_tokens": USAGE_IN, "output_tokens": USAGE_OUT}}
    return {"model": model, "created_at": "2026-01-01T00:00:00Z", "done": True,
            "message": {"role": "assistant", "content": TEXT}, "done_reason": "stop",
            "prompt_eval_count": USAGE_IN, "eval_count": USAGE_OUT}


def response_object(model: str, status: str) -> dict[str, Any]:
    done = status == "completed"
    return {"id": "resp_fault", "object": "response", "created_at": int(time.time()),
            "status": status, "model": model, "error": None, "incomplete_details": None,
            "output": [{"id": "msg_fault", "type": "message", "status": "completed",
                        "role": "assistant", "content": [{"type": "output_text", "text": TEXT,
                                                          "annotations": [], "logprobs": []}]}]
            if done else [],
            "usage": {"input_tokens": USAGE_IN, "output_tokens": USAGE_OUT,
                      "total_tokens": USAGE_IN + USAGE_OUT,
                      "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}} if done else None,
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": []}


def stream_events(protocol: str, model: str, include_usage: bool) -> list[bytes]:
    """A normal streamed answer, one element per event (the first carries no content)."""
    if protocol == "chat":
        base = {"id": "chatcmpl-fault", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": model}

        def choice(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return sse({**base, "choices": [{"index": 0, "delta": delta,
                                             "finish_reason": finish}]})
        events = [choice({"role": "assistant", "content": ""}), choice({"content": TEXT}),
                  choice({}, "stop")]
        if include_usage:
            events.append(sse({**base, "choices": [], "usage": {
                "prompt_tokens": USAGE_IN, "completion_tokens": USAGE_OUT,
                "total_tokens": USAGE_IN + USAGE_OUT}}))
        return [*events, sse("[DONE]")]
    if protocol == "responses":
        item = {"id": "msg_fault", "type": "message", "status": "in_progress",
                "role": "assistant", "content": []}
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        done_part = {**part, "text": TEXT}
        seq = iter(range(100))
        at = {"item_id": "msg_fault", "output_index": 0, "content_index": 0}
        return [sse({"type": t, "sequence_number": next(seq), **d}, event=t) for t, d in (
            ("response.created", {"response": response_object(model, "in_progress")}),
            ("response.output_item.added", {"output_index": 0, "item": item}),
            ("response.content_part.added", {**at, "part": part}),
            ("response.output_text.delta", {**at, "delta": TEXT, "logprobs": []}),
            ("response.output_text.done", {**at, "text": TEXT, "logprobs": []}),
            ("response.content_part.done", {**at, "part": done_part}),
            ("response.output_item.done", {"output_index": 0, "item": {
                **item, "status": "completed", "content": [done_part]}}),
            ("response.completed", {"response": response_object(model, "completed")}),
        )]
    if protocol == "anthropic":
        return [sse(d, event=d["type"]) for d in (
            {"type": "message_start", "message": {
                "id": "msg_fault", "type": "message", "role": "assistant", "model": model,
                "content": [], "usage": {"input_tokens": USAGE_IN, "output_tokens": 0}}},
            {"type": "content_block_start", "index": 0,
             "content_block": {"type": "text", "text": ""}},
            {"type": "content_block_delta", "index": 0,
             "delta": {"type": "text_delta", "text": TEXT}},
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
             "usage": {"output_tokens": USAGE_OUT}},
            {"type": "message_stop"},
        )]
    line = {"model": model, "created_at": "2026-01-01T00:00:00Z"}
    return [json.dumps(d).encode() + b"\n" for d in (
        {**line, "message": {"role": "assistant", "content": ""}, "done": False},
        {**line, "message": {"role": "assistant", "content": TEXT}, "done": False},
        {**line, "message": {"role": "assistant", "content": ""}, "done": True,
         "done_reason": "stop", "prompt_eval_count": USAGE_IN, "eval_count": USAGE_OUT},
    )]


def stream_type(protocol: str) -> str:
    return "application/x-ndjson" if protocol == "ollama" else "text/event-stream"


# --- errors, in each protocol's dialect ---------------------------------------------------

# status -> (OpenAI type, OpenAI code, Anthropic type)
ERROR_KINDS = {
    500: ("server_error", None, "api_error"),
    503: ("server_error", None, "overloaded_error"),
    429: ("requests", "rate_limit_exceeded", "rate_limit_error"),
}


def error_body(protocol: str, status: int, message: str) -> dict[str, Any]:
    openai_type, code, anthropic_type = ERROR_KINDS[status]
    if protocol == "anthropic":
        return {"type": "error", "error": {"type": anthropic_type, "message": message}}
    if protocol == "ollama":
        return {"error": message}
    return {"error": {"message": message, "type": openai_type, "param": None, "code": code}}


def error_event(protocol: str, message: str) -> bytes:
    """The error a streaming upstream sends as its first (and only) event."""
    if protocol == "chat":
        return sse(error_body("chat", 500, message)) + sse("[DONE]")
    if protocol == "responses":
        return sse({"type": "error", "sequence_number": 0, "code": "server_error",
                    "message": message, "param": None}, event="error")
    if protocol == "anthropic":
        return sse(error_body("anthropic", 500, message), event="error")
    return json.dumps(error_body("ollama", 500, message)).encode() + b"\n"


def bad_events(protocol: str) -> list[bytes]:
    """Lines that are not JSON, in the protocol's framing, ending the way it ends."""
    if protocol == "ollama":
        return [b'{"message": {"role": "assistant", "content": \n'] * 3
    if protocol == "anthropic":
        return [b'event: content_block_delta\ndata: {"type": "content_block_delta", \n\n'] * 3
    return [b'data: {"id": "x", "choices": [\n\n'] * 3 + (
        [sse("[DONE]")] if protocol == "chat" else [])


# --- dispatch -----------------------------------------------------------------------------

async def serve(request: Request, reply: Reply) -> None:
    if request.path.startswith("/_faults/calls"):
        if request.method == "DELETE":
            calls.clear()
        await reply.whole(200, json.dumps(calls).encode())
        return
    calls.append({"listener": request.listener, "method": request.method, "path": request.path,
                  "headers": request.headers})
    fault, _, rest = request.path.lstrip("/").partition("/")
    if request.listener == "sink":
        fault = "ok"
    protocol = request.protocol
    model = str(request.json.get("model") or "model")
    if fault == "redirect":
        location = f"http://user:pw@127.0.0.1:{sink_port}/sink/{rest}"
        await reply.whole(307, b"", reason="Temporary Redirect", extra={"Location": location})
        return
    if protocol == "other":  # /models and the like (the health probe)
        await reply.whole(200, json.dumps({"object": "list", "data": []}).encode())
        return
    if fault in ("s500", "s503", "s429", "s429bare"):
        status = int(fault[1:4])
        extra = {"Retry-After": "7"} if fault == "s429" else {}
        body = json.dumps(error_body(protocol, status, f"injected HTTP {status}")).encode()
        await reply.whole(status, body, reason="Injected", extra=extra)
        return
    if fault == "hang_headers":
        await asyncio.sleep(HANG_SECONDS)
        return
    if fault in ("garbage_json", "garbage_sse"):
        ctype = "application/json" if fault == "garbage_json" else stream_type(protocol)
        await reply.start_chunked(ctype)
        await reply.send(NOISE[:2048])
        await reply.send(NOISE[2048:])
        await reply.end()
        return
    if fault == "error200json" or (fault == "error200" and not request.stream):
        await reply.whole(200, json.dumps(error_body(protocol, 500, "injected error in a 200"))
                          .encode())
        return
    if not request.stream:
        await non_stream(fault, protocol, model, reply)
        return
    await stream(fault, protocol, model, request, reply)


async def non_stream(fault: str, protocol: str, model: str, reply: Reply) -> None:
    body = json.dumps(answer_json(protocol, model)).encode()
    if fault in ("ok", "error200"):
        await reply.whole(200, body)
    elif fault in ("badjson", "badjson_after_start"):
        await reply.whole(200, body[: len(body) // 2])  # honest length, invalid JSON
    else:  # hang_* and cut_*: promise the whole body, send part of it
        reply.writer.write(head(200, "OK", {"Content-Type": "application/json",
                                            "Content-Length": str(len(body))}))
        reply.writer.write(body[: len(body) // 3])
        await reply.writer.drain()
        if fault.startswith("hang"):
            await asyncio.sleep(HANG_SECONDS)


async def stream(fault: str, protocol: str, model: str, request: Request, reply: Reply) -> None:
    options = request.json.get("stream_options")
    events = stream_events(protocol, model,
                           isinstance(options, dict) and options.get("include_usage") is True)
    await reply.start_chunked(stream_type(protocol))
    if fault == "ok":
        for event in events:
            await reply.send(event)
        await reply.end()
    elif fault in ("error200", "late_error"):
        if fault == "late_error":
            await asyncio.sleep(LATE_SECONDS)
        await reply.send(error_event(protocol, "injected error event in a 200"))
        await reply.end()
    elif fault == "badjson":
        for event in bad_events(protocol):
            await reply.send(event)
        await reply.end()
    elif fault == "badjson_after_start":
        await reply.send(events[0])
        for event in bad_events(protocol):
            await reply.send(event)
        await reply.end()
    elif fault in ("hang_body", "cut_body"):
        await reply.send(events[0][: len(events[0]) // 2])
        if fault == "hang_body":
            await asyncio.sleep(HANG_SECONDS)
    elif fault == "cut_after_content":
        # Everything up to and including the first text, then the connection breaks.
        upto = {"chat": 2, "responses": 4, "anthropic": 3, "ollama": 2}[protocol]
        for event in events[:upto]:
            await reply.send(event)
    elif fault in ("hang_after_start", "cut_after_start"):
        await reply.send(events[0])
        if fault == "hang_after_start":
            await asyncio.sleep(HANG_SECONDS)
        else:
            await reply.send(events[1][: len(events[1]) // 2])


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 listener: str) -> None:
    try:
        request = await read_request(reader, listener)
        if request is not None:
            await serve(request, Reply(writer))
    except ConnectionError:
        pass
    finally:
        # Closing without the last chunk is how the cut faults cut.
        with contextlib.suppress(Exception):
            writer.close()


async def main(port: int, sink: int) -> None:
    global sink_port
    sink_port = sink
    servers = [
        await asyncio.start_server(lambda r, w: handle(r, w, "main"), "127.0.0.1", port),
        await asyncio.start_server(lambda r, w: handle(r, w, "sink"), "127.0.0.1", sink),
    ]
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sink-port", type=int, required=True)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.port, args.sink_port))
