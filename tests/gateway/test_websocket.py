"""Responses over WebSocket through a real gateway process (daphne) and the fake upstream,
with a raw websocket client (aiohttp's): turns on one socket, failures, policy, a client
that leaves mid-turn, previous_response_id on the socket, warm-ups, and the handshake's
refusals with their real statuses, on both launch commands."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import pytest

from billing.models import UsageLog
from gateway.services import upstream_create
from keys.models import Status
from tests.conftest import TEST_BODY_LIMIT, UPSTREAM_SECRET, gateway_env
from tests.servers import ROOT, free_port, start_gateway, stop, wait_for_port

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

TERMINAL = ("response.completed", "response.incomplete", "response.failed", "error")
WS_BETA = {"OpenAI-Beta": "responses_websockets=2026-02-06"}


def ws_url(http_url: str, path: str = "/v1/responses") -> str:
    return "ws" + http_url.removeprefix("http") + path


class Socket:
    """One client socket: ``turn`` sends a response.create and reads its frames up to the
    terminal event (or an error frame)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, **message: Any) -> None:
        await self.ws.send_str(orjson.dumps(message).decode())

    async def create(self, **body: Any) -> None:
        await self.send(type="response.create", **body)

    async def frame(self) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=15)
        assert msg.type == aiohttp.WSMsgType.TEXT, (msg.type, msg.data)
        return orjson.loads(msg.data)

    async def read_turn(self) -> list[dict[str, Any]]:
        frames = []
        while True:
            frames.append(await self.frame())
            if frames[-1]["type"] in TERMINAL:
                return frames

    async def turn(self, **body: Any) -> list[dict[str, Any]]:
        await self.create(**body)
        return await self.read_turn()


def run_socket(url: str, key: str | None, scenario: Callable[[Socket], Awaitable[Any]],
               headers: dict[str, str] | None = None) -> Any:
    """Open the socket (with the key as a bearer token), run ``scenario`` on it."""
    async def main() -> Any:
        hdrs = {**WS_BETA, **(headers or {})}
        if key is not None:
            hdrs["Authorization"] = f"Bearer {key}"
        async with aiohttp.ClientSession() as session, \
                session.ws_connect(url, headers=hdrs, autoping=True) as ws:
            return await scenario(Socket(ws))

    return asyncio.run(main())


def text_of(frames: list[dict[str, Any]]) -> str:
    return "".join(f.get("delta", "") for f in frames if f["type"] == "response.output_text.delta")


def status(url: str) -> dict[str, Any]:
    return httpx.get(url + "/_gateway/status", timeout=5).json()


def wait_for_rows(timeout: float = 10, **filters: Any) -> list[UsageLog]:
    """Usage rows are written off the response path: poll until one matches."""
    deadline = time.monotonic() + timeout
    while True:
        rows = list(UsageLog.objects.filter(**filters).order_by("created_at"))
        if rows:
            return rows
        assert time.monotonic() < deadline, f"no usage row matching {filters}"
        time.sleep(0.05)


def handshake(url: str, path: str, headers: dict[str, str]) -> httpx.Response:
    """The upgrade request as plain HTTP: a refusal's status, headers and body."""
    return httpx.get(url + path, timeout=10, headers={
        "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", **headers})


# --- turns ---------------------------------------------------------------------------------

def test_many_turns_on_one_socket_each_a_metered_request(gateway, upstream, api_key,
                                                          fake_upstream):
    before = status(gateway.url)["websockets"]["turns"]

    async def scenario(sock: Socket) -> list[list[dict[str, Any]]]:
        turns = [await sock.turn(model="gpt-5", input=f"turn {i} [[fake chunks={i + 1}]]",
                                 store=False) for i in range(3)]
        # Sent back to back: the second waits for the first; an unknown type is ignored.
        await sock.create(model="gpt-5", input="[[fake chunks=2 delay=0.05]]")
        await sock.send(type="response.processed", response_id="resp_x")
        await sock.create(model="gpt-5", input="[[fake chunks=1]]")
        turns.append(await sock.read_turn())
        turns.append(await sock.read_turn())
        return turns

    turns = run_socket(ws_url(gateway.url), api_key.secret, scenario)
    assert [text_of(t) for t in turns] == ["tok0 ", "tok0 tok1 ", "tok0 tok1 tok2 ",
                                           "tok0 tok1 ", "tok0 "]
    for frames in turns:
        assert frames[0]["type"] == "response.created"
        assert frames[-1]["type"] == "response.completed"
        assert [f["sequence_number"] for f in frames] == list(range(len(frames)))
        assert frames[-1]["response"]["usage"]["output_tokens"] > 0
    assert len({t[-1]["response"]["id"] for t in turns}) == 5
    rows = wait_for_rows(key_id=api_key.key.id, status_code=200)
    deadline = time.monotonic() + 10
    while len(rows) < 5:
        assert time.monotonic() < deadline, rows
        rows = wait_for_rows(key_id=api_key.key.id, status_code=200)
    assert len(rows) == 5 and all(r.endpoint == "responses" and r.stream for r in rows)
    assert status(gateway.url)["websockets"]["turns"] == before + 5
    sent = [r for r in fake_upstream.requests() if r["path"] == "/v1/responses"]
    assert len(sent) == 5
    assert all("type" not in r["body"] and r["body"]["stream"] is True for r in sent)
    # The handshake's WebSocket beta is not passed upstream on the turns' HTTP requests.
    assert all("responses_websockets" not in r["headers"].get("openai-beta", "") for r in sent)


def test_the_prefixed_and_unprefixed_paths_take_sockets_too(gateway, upstream, api_key):
    for path in ("/responses", "/codex/v1/responses", "/codex/responses"):
        frames = run_socket(ws_url(gateway.url, path), api_key.secret,
                            lambda sock: sock.turn(model="gpt-5", input="hi"))
        assert frames[-1]["type"] == "response.completed", path


def test_a_failed_turn_is_an_error_frame_with_status_and_the_socket_stays_usable(
        gateway, upstream, api_key):
    async def scenario(sock: Socket) -> list[list[dict[str, Any]]]:
        return [await sock.turn(model="no-such-model", input="hi"),
                await sock.turn(model="gpt-5", input="[[fake status=400]]"),
                await sock.turn(model="gpt-5", input="[[fake chunks=5 cut=1]]"),
                await sock.turn(input="no model"),
                await sock.turn(model="gpt-5", input="[[fake chunks=2]]")]

    missing, refused, cut, no_model, good = run_socket(ws_url(gateway.url), api_key.secret,
                                                       scenario)
    assert missing == [{"type": "error", "status": 404, "error": {
        "message": "The model 'no-such-model' does not exist or no upstream serves it.",
        "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}]
    assert len(refused) == 1 and refused[0]["status"] == 400
    assert refused[0]["error"]["message"] == "fake upstream error 400"
    assert cut[0]["type"] == "response.created" and cut[-1]["type"] == "response.failed"
    assert no_model[0]["status"] == 400 and no_model[0]["error"]["code"] == "missing_model"
    assert text_of(good) == "tok0 tok1 " and good[-1]["type"] == "response.completed"


def test_bad_messages_get_an_error_frame_and_unknown_types_no_answer(gateway, upstream,
                                                                     api_key):
    async def scenario(sock: Socket) -> list[dict[str, Any]]:
        await sock.ws.send_str("{not json")
        bad = await sock.frame()
        await sock.ws.send_str("[1, 2]")
        untyped = await sock.frame()
        await sock.send(type="response.cancel")  # not a type Turnpike answers
        first = await sock.turn(model="gpt-5", input="hi")
        return [bad, untyped, first[0]]

    bad, untyped, first = run_socket(ws_url(gateway.url), api_key.secret, scenario)
    assert (bad["type"], bad["status"], bad["error"]["code"]) == ("error", 400, "invalid_json")
    assert (untyped["status"], untyped["error"]["param"]) == (400, "type")
    assert first["type"] == "response.created"

    async def too_big(sock: Socket) -> Any:
        try:
            await sock.create(model="gpt-5", input="x" * TEST_BODY_LIMIT)
        except (ConnectionError, aiohttp.ClientError):
            return "cut"  # the server closed while the frame was still being written
        msg = await sock.ws.receive(timeout=15)
        return "cut" if msg.type == aiohttp.WSMsgType.ERROR else (msg.type, msg.data)

    # A message is a request body: over GATEWAY_MAX_BODY_BYTES the socket is closed (1009,
    # message too big) as soon as the frame's header says its size, before it is read.
    before = status(gateway.url)["websockets"]["turns"]
    closed = run_socket(ws_url(gateway.url), api_key.secret, too_big)
    assert closed in ("cut", (aiohttp.WSMsgType.CLOSE, 1009)), closed
    assert status(gateway.url)["websockets"]["turns"] == before


def test_the_key_is_checked_at_every_turn_so_disabling_it_stops_an_open_socket(
        gateway, upstream, make_key):
    made = make_key()

    def disable() -> None:
        made.key.status = Status.DISABLED
        made.key.save()  # the snapshot is dropped on commit (the gateway's TTL is 0 here)

    async def scenario(sock: Socket) -> list[list[dict[str, Any]]]:
        served = await sock.turn(model="gpt-5", input="hi", stream=False)  # always streamed
        await asyncio.to_thread(disable)
        return [served, await sock.turn(model="gpt-5", input="hi")]

    served, refused = run_socket(ws_url(gateway.url), made.secret, scenario)
    assert served[0]["type"] == "response.created" and served[-1]["type"] == "response.completed"
    assert refused == [{"type": "error", "status": 403, "error": {
        "message": "The API key is disabled.", "type": "permission_error", "param": None,
        "code": "api_key_disabled"}}]


def test_each_turn_is_a_request_for_the_rate_limit(gateway, upstream, make_key):
    made = make_key(rpm=2)

    async def scenario(sock: Socket) -> list[list[dict[str, Any]]]:
        return [await sock.turn(model="gpt-5", input="hi") for _ in range(3)]

    first, second, third = run_socket(ws_url(gateway.url), made.secret, scenario)
    assert first[-1]["type"] == second[-1]["type"] == "response.completed"
    assert third[0]["type"] == "error" and third[0]["status"] == 429
    assert third[0]["error"]["code"] == "rate_limit_rpm"
    assert int(third[0]["headers"]["retry-after"]) >= 1


def test_a_client_leaving_mid_turn_cancels_it_writes_its_row_and_frees_the_slot(
        gateway, upstream, make_key, fake_upstream):
    made = make_key(concurrency=1)

    async def leave(sock: Socket) -> None:
        await sock.create(model="gpt-5", input="[[fake chunks=50 delay=0.2]]")
        while (await sock.frame())["type"] != "response.output_text.delta":
            pass
        await sock.ws.close()

    run_socket(ws_url(gateway.url), made.secret, leave)
    deadline = time.monotonic() + 5  # the upstream request closed well before its 10 s
    while fake_upstream.stats()["inflight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake_upstream.stats()["inflight"] == 0
    [row] = wait_for_rows(key_id=made.key.id, error_code="client_disconnected")
    # As over HTTP: the answer had started (200), and what was relayed is counted.
    assert row.status_code == 200 and row.stream and row.output_tokens > 0, row.__dict__
    # The key's one concurrency slot is free again: a new socket's turn is served.
    frames = run_socket(ws_url(gateway.url), made.secret,
                        lambda sock: sock.turn(model="gpt-5", input="again"))
    assert frames[-1]["type"] == "response.completed"


def test_concurrency_counts_turns_across_sockets(gateway, upstream, make_key, fake_upstream):
    made = make_key(concurrency=1)
    url = ws_url(gateway.url)

    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        hdrs = {"Authorization": f"Bearer {made.secret}"}
        async with aiohttp.ClientSession() as session, \
                session.ws_connect(url, headers=hdrs) as one, \
                session.ws_connect(url, headers=hdrs) as two:
            held, other = Socket(one), Socket(two)
            await held.create(model="gpt-5", input="[[fake chunks=3 delay=0.3]]")
            assert (await held.frame())["type"] == "response.created"
            refused = await other.turn(model="gpt-5", input="hi")
            return refused, await held.read_turn()

    refused, held = asyncio.run(main())
    assert refused == [{"type": "error", "status": 429, "error": refused[0]["error"],
                        "headers": refused[0]["headers"]}]
    assert refused[0]["error"]["code"] == "concurrent_limit"
    assert held[-1]["type"] == "response.completed"


# --- previous_response_id on the socket ----------------------------------------------------

def test_previous_response_id_on_the_socket_sends_the_whole_history_to_a_chat_upstream(
        gateway, api_key, fake_upstream):
    upstream_create(name="chat-only", kind="openai-chat", base_url=fake_upstream.openai_url,
                    models=["m-chat"], api_keys=[UPSTREAM_SECRET])
    fake_upstream.clear()
    tool = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}

    async def scenario(sock: Socket) -> list[list[dict[str, Any]]]:
        first = await sock.turn(model="m-chat", store=False, instructions="be brief",
                                input="first question [[fake chunks=2]]")
        second = await sock.turn(model="m-chat", store=False, tools=[tool],
                                 previous_response_id=first[-1]["response"]["id"],
                                 input=[{"type": "message", "role": "user", "content":
                                         "weather? [[fake tool=get_weather]]"}])
        call = second[-1]["response"]["output"][0]
        third = await sock.turn(model="m-chat", store=False, tools=[tool],
                                previous_response_id=second[-1]["response"]["id"],
                                input=[{"type": "function_call_output",
                                        "call_id": call["call_id"],
                                        "output": "sunny [[fake tool= chunks=1]]"}])
        # Only the connection's last response can be chained from.
        stale = await sock.turn(model="m-chat", store=False, input="x",
                                previous_response_id=first[-1]["response"]["id"])
        return [first, second, third, stale]

    first, second, third, stale = run_socket(ws_url(gateway.url), api_key.secret, scenario)
    assert second[-1]["response"]["output"][0]["type"] == "function_call"
    assert third[-1]["type"] == "response.completed" and text_of(third) == "tok0 "
    sent = [r["body"] for r in fake_upstream.requests() if r["path"] == "/v1/chat/completions"]
    assert len(sent) == 3
    roles = [(m["role"], m.get("content"), bool(m.get("tool_calls"))) for m in sent[2]["messages"]]
    assert roles == [
        ("user", "first question [[fake chunks=2]]", False),
        ("assistant", "tok0 tok1 ", False),
        ("user", "weather? [[fake tool=get_weather]]", False),
        ("assistant", None, True),
        ("tool", "sunny [[fake tool= chunks=1]]", False),
    ]
    # instructions are not carried over (OpenAI's semantics): the first turn's alone had them
    assert sent[0]["messages"][0] == {"role": "system", "content": "be brief"}
    assert stale == [{"type": "error", "status": 404, "error": {
        "message": f"Previous response with id '{first[-1]['response']['id']}' not found.",
        "type": "invalid_request_error", "param": "previous_response_id",
        "code": "previous_response_not_found"}}]


def test_a_warm_up_calls_no_upstream_charges_nothing_and_can_be_chained_from(
        gateway, upstream, api_key, fake_upstream):
    before = status(gateway.url)["websockets"]

    async def scenario(sock: Socket) -> list[list[dict[str, Any]]]:
        warm = await sock.turn(model="gpt-5", store=False, generate=False,
                               instructions="sys", input=[{"type": "message", "role": "user",
                                                          "content": "context"}])
        turn = await sock.turn(model="gpt-5", store=False, input=[],
                               previous_response_id=warm[-1]["response"]["id"])
        return [warm, turn]

    warm, turn = run_socket(ws_url(gateway.url), api_key.secret, scenario)
    assert [f["type"] for f in warm] == ["response.created", "response.in_progress",
                                        "response.completed"]
    assert warm[-1]["response"]["output"] == [] and warm[-1]["response"]["id"].startswith("resp_")
    assert turn[-1]["type"] == "response.completed"
    [sent] = [r["body"] for r in fake_upstream.requests() if r["path"] == "/v1/responses"]
    assert sent["input"] == [{"type": "message", "role": "user", "content": "context"}]
    assert "previous_response_id" not in sent and "generate" not in sent
    after = status(gateway.url)["websockets"]
    assert (after["warmups"], after["turns"]) == (before["warmups"] + 1, before["turns"] + 1)
    assert len(wait_for_rows(key_id=api_key.key.id)) == 1


# --- the handshake ------------------------------------------------------------------------

def test_a_bad_key_is_refused_at_the_handshake_with_401_and_the_openai_body(gateway,
                                                                            upstream):
    resp = handshake(gateway.url, "/v1/responses", {"Authorization": "Bearer sk-tp-nope"})
    assert resp.status_code == 401
    assert resp.headers["content-type"] == "application/json"
    assert resp.json()["error"]["code"] == "invalid_api_key"
    missing = handshake(gateway.url, "/v1/responses", {})
    assert (missing.status_code, missing.json()["error"]["code"]) == (401, "missing_api_key")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        run_socket(ws_url(gateway.url), "sk-tp-nope", lambda sock: sock.frame())
    assert refused.value.status == 401
    rows = wait_for_rows(status_code=401, error_code="invalid_api_key")
    assert rows[0].endpoint == "responses"


def test_other_v1_paths_refuse_the_upgrade_and_the_portal_socket_keeps_its_guards(
        gateway, api_key):
    other = handshake(gateway.url, "/v1/chat/completions",
                      {"Authorization": f"Bearer {api_key.secret}"})
    assert (other.status_code, other.json()["error"]["code"]) == (404, "unknown_url")
    # No Origin (an API client): the portal's live socket still refuses it.
    assert handshake(gateway.url, "/ws/portal/live/", {}).status_code == 403


DAPHNE = str(Path(sys.executable).with_name("daphne"))
LAUNCHERS = {
    "portal.server": [sys.executable, "-m", "portal.server"],
    "plain-daphne": [DAPHNE if os.path.exists(DAPHNE) else shutil.which("daphne") or "daphne"],
}


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_turned_off_the_upgrade_is_answered_426_on_both_launch_commands(launcher, upstream,
                                                                        api_key):
    port = free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings",
           **gateway_env(GATEWAY_WEBSOCKETS="false")}
    proc = subprocess.Popen([*LAUNCHERS[launcher], "-b", "127.0.0.1", "-p", str(port),
                             "portal.asgi:application"], cwd=ROOT, env=env)
    try:
        wait_for_port(port, proc)
        url = f"http://127.0.0.1:{port}"
        resp = handshake(url, "/v1/responses",
                         {"Authorization": f"Bearer {api_key.secret}", **WS_BETA})
        assert resp.status_code == 426, resp.text
        assert resp.json()["error"]["code"] == "websockets_disabled"
        assert resp.headers["connection"] == "close"
        # The refusal closed only that connection: HTTP is served as before.
        ok = httpx.post(url + "/v1/responses", json={"model": "gpt-5", "input": "hi"},
                        headers={"Authorization": f"Bearer {api_key.secret}"}, timeout=20)
        assert ok.status_code == 200, ok.text
        assert status(url)["websockets"]["open"] == 0
    finally:
        stop(proc)


def test_a_socket_past_its_age_limit_takes_no_new_turn(upstream, api_key):
    gw = start_gateway(gateway_env(GATEWAY_WEBSOCKET_MAX_AGE="1.5", GATEWAY_SNAPSHOT_TTL="0"))
    try:
        async def busy(sock: Socket) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Any]:
            # A turn still running at the limit finishes; the one asked for meanwhile is
            # answered with the limit's error, and the socket is closed.
            first = await sock.turn(model="gpt-5", input="hi")
            await sock.create(model="gpt-5", input="[[fake chunks=4 delay=0.5]]")
            await asyncio.sleep(0.1)
            await sock.create(model="gpt-5", input="late")
            return first, await sock.read_turn(), [await sock.frame(),
                                                   await sock.ws.receive(timeout=5)]

        first, running, (limit, closed) = run_socket(ws_url(gw.url), api_key.secret, busy)
        assert first[-1]["type"] == running[-1]["type"] == "response.completed"
        assert limit["status"] == 400
        assert limit["error"]["code"] == "websocket_connection_limit_reached"
        assert "Create a new websocket connection" in limit["error"]["message"]
        assert closed.type == aiohttp.WSMsgType.CLOSE

        async def idle(sock: Socket) -> Any:
            await asyncio.sleep(0.5)
            return await sock.ws.receive(timeout=5)  # closed at the limit, with no answer

        assert run_socket(ws_url(gw.url), api_key.secret, idle).type == aiohttp.WSMsgType.CLOSE
    finally:
        stop(gw.proc)
