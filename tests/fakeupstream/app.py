"""The aiohttp application: routes, and the door every protocol request goes through.

A protocol request is recorded, then checked in this order: the key (401, never held), a
per-credential fault (``/_fake/keys``), a JSON object body (400), the directives (400 when
unknown or bad), ``hold=`` and ``status=``; only then does the protocol module answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson
from aiohttp import web

from tests.fakeupstream import control
from tests.fakeupstream.anthropic_messages import reply_anthropic
from tests.fakeupstream.errors import ANTHROPIC, OLLAMA, OPENAI, Protocol
from tests.fakeupstream.ollama_chat import reply_ollama
from tests.fakeupstream.openai_chat import reply_chat
from tests.fakeupstream.openai_responses import reply_compact, reply_responses
from tests.fakeupstream.script import DirectiveError, Script, parse_script
from tests.fakeupstream.state import STATE, FakeState
from tests.fakeupstream.wire import Json, send_json

DEFAULT_MODELS: tuple[str, ...] = (
    "gpt-4o-mini",
    "gpt-5",
    "gpt-5-codex",
    "claude-sonnet-4-5",
    "llama3.2",
)
MODEL_CREATED = 1_700_000_000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ReplyFn = Callable[[web.Request, Json, Script], Awaitable[web.StreamResponse]]
ErrorFn = Callable[[int, str, Mapping[str, str] | None], Awaitable[web.Response]]


def _presented_key(request: web.Request, protocol: Protocol) -> str | None:
    if protocol.accepts_x_api_key and "x-api-key" in request.headers:
        return request.headers["x-api-key"]
    if protocol is OPENAI and "api-key" in request.headers:  # Azure OpenAI's header
        return request.headers["api-key"]
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _scripted_error(status: int, retry_after: Any) -> tuple[int, str, Mapping[str, str] | None]:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return status, f"fake upstream error {status}", headers


async def _credential_fault(state: FakeState, presented: str | None, error: ErrorFn
                            ) -> web.Response | None:
    fault = state.faults.take(presented)
    if fault is None:
        return None
    if fault.get("hold"):
        await asyncio.sleep(float(fault["hold"]))
    if fault.get("status"):
        return await error(*_scripted_error(int(fault["status"]), fault.get("retry_after")))
    return None


async def _serve_protocol(
    request: web.Request, state: FakeState, protocol: Protocol, reply: ReplyFn
) -> web.StreamResponse:
    raw = await request.read()
    body: Any = None
    valid = True
    if raw:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            valid = False
    state.record(request, body)

    async def error(
        status: int, message: str, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        return await send_json(request, protocol.error_body(status, message), status, headers)

    presented = _presented_key(request, protocol)
    if state.api_keys and presented not in state.api_keys:
        return await error(401, "invalid api key")
    faulted = await _credential_fault(state, presented, error)
    if faulted is not None:
        return faulted
    if not valid or (raw and not isinstance(body, dict)):
        return await error(400, "request body must be a JSON object")
    try:
        script = parse_script(request.headers, raw)
    except DirectiveError as exc:
        return await error(400, str(exc))
    if script.hold:
        await asyncio.sleep(script.hold)
    if script.status:
        return await error(*_scripted_error(script.status, script.retry_after))
    return await reply(request, body or {}, script)


def _endpoint(protocol: Protocol, reply: ReplyFn) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        state.total += 1
        state.inflight += 1
        state.max_inflight = max(state.max_inflight, state.inflight)
        try:
            return await _serve_protocol(request, state, protocol, reply)
        except ConnectionError:
            # The client went away while we wrote; there is nobody left to answer.
            return web.Response(status=499)
        finally:
            state.inflight -= 1

    return handle


def _listing(key: str) -> ReplyFn:
    async def reply(request: web.Request, body: Json, script: Script) -> web.StreamResponse:
        state = request.app[STATE]
        return await send_json(request, state.models_body if key == "models" else state.tags_body)

    return reply


def _models_body(models: Sequence[str]) -> Json:
    data = [
        {"id": name, "object": "model", "created": MODEL_CREATED, "owned_by": "fakeupstream"}
        for name in models
    ]
    return {"object": "list", "data": data}


def _tags_body(models: Sequence[str]) -> Json:
    details = {
        "format": "gguf",
        "family": "fake",
        "parameter_size": "1B",
        "quantization_level": "Q4_0",
    }
    tags = [
        {
            "name": name,
            "model": name,
            "modified_at": "2024-01-01T00:00:00Z",
            "size": 1_000_000,
            "digest": f"sha256:{index:064x}",
            "details": details,
        }
        for index, name in enumerate(models)
    ]
    return {"models": tags}


def build_app(
    api_keys: list[str] | None = None, models: list[str] | None = None
) -> web.Application:
    """The fake upstream app. Run it with handler_cancellation=True (as serve() does) so a
    client disconnect cancels the handler at once, even while it sleeps between frames."""
    model_names = tuple(models) if models else DEFAULT_MODELS
    # Codex-sized histories grow past aiohttp's 1 MiB default body limit.
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app[STATE] = FakeState(
        api_keys=frozenset(api_keys or ()),
        models_body=_models_body(model_names),
        tags_body=_tags_body(model_names),
    )
    app.router.add_post("/v1/chat/completions", _endpoint(OPENAI, reply_chat))
    app.router.add_post("/v1/responses", _endpoint(OPENAI, reply_responses))
    app.router.add_post("/v1/responses/compact", _endpoint(OPENAI, reply_compact))
    app.router.add_get("/v1/models", _endpoint(OPENAI, _listing("models")), allow_head=False)
    app.router.add_post("/v1/messages", _endpoint(ANTHROPIC, reply_anthropic))
    app.router.add_post("/api/chat", _endpoint(OLLAMA, reply_ollama))
    app.router.add_get("/api/tags", _endpoint(OLLAMA, _listing("tags")), allow_head=False)
    control.add_routes(app.router)
    return app
