"""The wire protocols upstreams speak: where a request goes under the base URL, how a
canonical request becomes a body, and how the answer (a JSON body, or a stream of SSE events
or NDJSON lines) becomes canonical events. A provider (``gateway.providers.provider``) says
which of these it speaks for each client operation; several providers share one protocol
(every OpenAI-compatible kind speaks ``chat``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from gateway.translate import anthropic, chat, ollama, responses
from gateway.translate import canonical as c

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class WireProtocol:
    name: str  # as model rules name it (``ModelRule.Protocol``), and the attempt log
    path: str  # under the upstream's base URL
    # canonical request -> this protocol's body (None: only ever relayed, never built)
    build: Callable[[c.CanonicalRequest, str], Json] | None = None
    # a whole JSON answer -> events, and a factory of stream decoders (``feed`` per frame)
    decode_body: Callable[[Json], list[c.Event]] | None = None
    stream_decoder: Callable[[], Any] | None = None
    framing: Literal["sse", "ndjson"] = "sse"
    named_events: bool = False  # the decoder needs each SSE event's name (Anthropic)
    # A stream ends with ``data: [DONE]`` after a finish_reason (Chat); the others end with
    # their final event (a finish or usage report).
    ends_with_done: bool = False


CHAT = WireProtocol("chat", "/chat/completions", chat.build_request, chat.decode_response,
                    chat.StreamDecoder, ends_with_done=True)
RESPONSES = WireProtocol("responses", "/responses", responses.build_request,
                         responses.decode_response, responses.StreamDecoder)
COMPACT = WireProtocol("compact", "/responses/compact")  # relayed as is (plain JSON)
ANTHROPIC = WireProtocol("anthropic", "/v1/messages", anthropic.build_request,
                         anthropic.decode_response, anthropic.StreamDecoder,
                         named_events=True)
OLLAMA = WireProtocol("ollama", "/api/chat", ollama.build_request, ollama.decode_response,
                      ollama.StreamDecoder, framing="ndjson")

PROTOCOLS: dict[str, WireProtocol] = {p.name: p for p in (CHAT, RESPONSES, COMPACT,
                                                          ANTHROPIC, OLLAMA)}

# The protocol a client speaks on each operation (POST /v1/chat/completions, /v1/responses,
# /v1/responses/compact).
CLIENT_PROTOCOL: dict[str, WireProtocol] = {"chat": CHAT, "responses": RESPONSES,
                                            "compact": COMPACT}
