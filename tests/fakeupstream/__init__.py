"""A scriptable fake LLM upstream: OpenAI (Chat Completions, Responses, Models), Anthropic
Messages and Ollama chat, served by aiohttp on loopback. A test and demo tool, not part of the
gateway: the tests, ``make run`` and the translation matrix drive it.

It is a real HTTP server so that tests and the demo exercise real sockets, real SSE/NDJSON
framing and real disconnects. It must never be the bottleneck: no per-request logging, orjson,
replies precomputed as a list of frames, uvloop when importable.

Start it::

    python -m tests.fakeupstream --port 9100 [--host 127.0.0.1] [--api-key K ...] [--models a,b]
    python manage.py fakeupstream --port 9100 ...

It prints ``fake upstream listening on http://HOST:PORT`` (the real port when ``--port 0``).

Endpoints (upstream base URL ``http://host:port/v1`` for OpenAI kinds, ``http://host:port`` for
Anthropic and Ollama)::

    POST /v1/chat/completions   POST /v1/responses   POST /v1/responses/compact   GET /v1/models
    POST /v1/messages           POST /api/chat       GET /api/tags
    GET|DELETE /_fake/requests  GET /_fake/stats     POST /_fake/stats/reset     GET /_fake/health
    POST|DELETE /_fake/keys     (per-credential failures: {"key", "status", "retry_after",
                                 "hold", "count"})

Auth: with one or more ``--api-key``, protocol requests must present one of them
(``Authorization: Bearer K``; Anthropic also ``x-api-key: K``, OpenAI also ``api-key: K``),
else 401 in the protocol's error shape. Without ``--api-key`` anything is accepted.
``/_fake/*`` never needs a key.

The modules, in the order a request meets them:

=====================  ====================================================================
server.py              ``serve()``, ``main()``: the process, its event loop and signals
app.py                 routes; the door (key, per-credential fault, body, directives)
control.py             ``/_fake/*``: recorded requests, stats, health, credential faults
faults.py              per-credential faults set through ``/_fake/keys``
script.py              the per-request directives (``x-fake-*`` / ``[[fake ...]]``), with
                       their table
reply.py               the protocol-neutral answer and the deterministic usage rule
openai_chat.py         Chat Completions JSON and SSE chunks
openai_responses.py    Responses JSON and SSE events, and ``/responses/compact``
anthropic_messages.py  Anthropic Messages JSON and SSE events
ollama_chat.py         Ollama chat JSON and NDJSON lines
errors.py              each protocol's error body and auth headers
wire.py                sending JSON and precomputed frames (``cut=``, ``delay=``)
=====================  ====================================================================
"""

from tests.fakeupstream.app import build_app
from tests.fakeupstream.server import main, serve, split_models

__all__ = ["build_app", "main", "serve", "split_models"]
