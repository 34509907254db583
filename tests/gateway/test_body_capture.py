"""Body capture end to end (issue 15): HTTP clients -> Turnpike (daphne, PostgreSQL, Redis)
-> the fake upstream, over loopback. With capture on for a key, a JSON request, a streamed
one and a Responses WebSocket turn each leave one ``CapturedExchange``: the request body as
the client sent it, the answer as the client got it, both with every credential redacted
(the key's own secret, an upstream key, a password field), cut at
GATEWAY_CAPTURE_MAX_BYTES. With it off (the default, a key's ``off`` against its tenant's
window, a window that has ended) nothing is kept. Retention deletes what is due and nothing
else.

Captures are written off the response path: a test waits for a row with a deadline
(``wait_capture``); one that checks a capture was *not* written waits instead for a later
request's capture (``sentinel``), which the same writer writes no earlier.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from django.utils import timezone

from billing.models import UsageLog
from gateway.models import CapturedExchange
from gateway.tasks import expire_captures
from keys.models import ApiKey, Tenant
from keys.services import CreatedKey, key_create, key_update, tenant_update
from keys.snapshots import KeySnapshot, build_key_snapshot
from tests.conftest import UPSTREAM_SECRET, wait_for_usage
from tests.gateway.test_embedded_default import embedded_env, until
from tests.gateway.test_websocket import Socket, run_socket, ws_url
from tests.servers import ROOT, start_fake_upstream, start_gateway, stop

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

UPSTREAM_CREDENTIAL = "sk-proj-R7tY2uI9oP4aS6dF1gH3jK5lZ8xC0vB2nM4qW6eR"
PASSWORD = "correct-horse-battery-staple-42"
CAP = 64 * 1024  # GATEWAY_CAPTURE_MAX_BYTES's default (the test gateway keeps it)


def wait_capture(request_id: str, timeout: float = 10.0) -> CapturedExchange:
    deadline = time.monotonic() + timeout
    while True:
        row = CapturedExchange.objects.filter(request_id=request_id).first()
        if row is not None:
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"no capture of {request_id} after {timeout}s")
        time.sleep(0.02)


def post(gateway: Any, key: CreatedKey, body: dict[str, Any] | bytes,
         path: str = "/chat/completions") -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return httpx.post(gateway.base_url + path, content=content, timeout=30, headers={
        "Authorization": f"Bearer {key.secret}", "Content-Type": "application/json",
        "User-Agent": "capture-test/1", "X-Debug-Note": f"via {UPSTREAM_CREDENTIAL}"})


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def secret_message(key: CreatedKey) -> str:
    """A message carrying the key's own secret and an upstream credential, which the fake
    upstream echoes back ([[fake echo=1]]), in one piece ([[fake chunks=1]])."""
    return (f"[[fake echo=1 chunks=1]] my turnpike key {key.secret} and my openai key "
            f"{UPSTREAM_CREDENTIAL} both fail")


def redacted(text: str, key: CreatedKey) -> str:
    for secret in (key.secret, UPSTREAM_CREDENTIAL, PASSWORD):
        text = text.replace(secret, "[redacted]")
    return text


def capture_on(key: ApiKey, hours: float = 1) -> None:
    key_update(key=key, capture_bodies="on",
               capture_bodies_until=timezone.now() + timedelta(hours=hours))


def sentinel(gateway: Any, tenant: Tenant) -> CapturedExchange:
    """A request whose capture is written: once it is in the database, so is any capture
    of a request answered before it (one writer, in order)."""
    probe = key_create(tenant=tenant, name="sentinel", capture_bodies="on",
                       capture_bodies_until=timezone.now() + timedelta(hours=1))
    answer = post(gateway, probe, chat("sentinel"))
    assert answer.status_code == 200
    return wait_capture(answer.headers["x-request-id"])


# --- capture on ---------------------------------------------------------------------------

def test_a_json_exchange_is_captured_as_sent_and_received_with_credentials_redacted(
        gateway: Any, upstream: Any, make_key: Any, fake_upstream: Any) -> None:
    key = make_key(capture_bodies="on",
                   capture_bodies_until=timezone.now() + timedelta(hours=1))
    sent = orjson.dumps(chat(secret_message(key), user="ann", password=PASSWORD))
    answer = post(gateway, key, sent)
    assert answer.status_code == 200
    assert key.secret in answer.text and UPSTREAM_CREDENTIAL in answer.text  # echoed back
    row = wait_capture(answer.headers["x-request-id"])

    assert (row.method, row.path, row.status, row.stream) == (
        "POST", "/v1/chat/completions", 200, False)
    assert (row.tenant_id, row.key_id) == (key.key.tenant_id, key.key.pk)
    # The request exactly as the client sent it, but for its credentials.
    assert row.request_body == redacted(sent.decode(), key)
    assert row.request_body.count("[redacted]") == 3
    assert row.request_bytes == len(sent) and not row.request_truncated
    # The answer exactly as the client got it, but for the credentials it echoed.
    assert row.response_body == redacted(answer.text, key)
    assert row.response_body.count("[redacted]") == 2
    assert row.response_bytes == len(answer.content) and not row.response_truncated
    for secret in (key.secret, UPSTREAM_CREDENTIAL, PASSWORD, UPSTREAM_SECRET):
        assert secret not in row.request_body + row.response_body + str(row.request_headers)
    assert "authorization" not in row.request_headers
    assert row.request_headers["user-agent"] == "capture-test/1"
    assert row.request_headers["x-debug-note"] == "via [redacted]"
    # The upstream got the real request: capture changes nothing on the way.
    assert fake_upstream.requests()[-1]["body"]["password"] == PASSWORD
    assert wait_for_usage(row.request_id).request_id == row.request_id


def test_a_stream_is_captured_as_relayed(gateway: Any, upstream: Any, make_key: Any) -> None:
    key = make_key(capture_bodies="on",
                   capture_bodies_until=timezone.now() + timedelta(hours=1))
    sent = chat(secret_message(key), stream=True)
    with httpx.stream("POST", gateway.base_url + "/chat/completions", json=sent, timeout=30,
                      headers={"Authorization": f"Bearer {key.secret}"}) as answer:
        assert answer.status_code == 200
        received = answer.read().decode()
    assert received.endswith("data: [DONE]\n\n")
    row = wait_capture(answer.headers["x-request-id"])
    assert (row.status, row.stream) == (200, True)
    assert orjson.loads(row.request_body) == orjson.loads(redacted(
        orjson.dumps(sent).decode(), key))
    assert row.response_body == redacted(received, key)
    assert row.response_body.count("[redacted]") == 2 and key.secret not in row.response_body
    assert row.response_bytes == len(received.encode()) and not row.response_truncated


def test_bodies_are_cut_at_the_cap_and_marked(gateway: Any, upstream: Any,
                                              make_key: Any) -> None:
    key = make_key(capture_bodies="on",
                   capture_bodies_until=timezone.now() + timedelta(hours=1))
    sent = orjson.dumps(chat("[[fake chunks=4000]] " + "x" * 100_000, stream=True))
    with httpx.stream("POST", gateway.base_url + "/chat/completions", content=sent,
                      timeout=30, headers={"Authorization": f"Bearer {key.secret}",
                                           "Content-Type": "application/json"}) as answer:
        received = answer.read()
    assert answer.status_code == 200 and len(received) > CAP
    row = wait_capture(answer.headers["x-request-id"])
    assert (row.request_truncated, row.response_truncated) == (True, True)
    assert (row.request_bytes, row.response_bytes) == (len(sent), len(received))
    assert row.request_body == sent[:CAP].decode()
    assert row.response_body == received[:CAP].decode()


def test_an_error_answer_is_captured_too(gateway: Any, upstream: Any, make_key: Any) -> None:
    key = make_key(capture_bodies="on",
                   capture_bodies_until=timezone.now() + timedelta(hours=1))
    answer = post(gateway, key, b'{"model": "gpt-4o-mini", "messages": [')
    assert answer.status_code == 400
    row = wait_capture(answer.headers["x-request-id"])
    assert row.status == 400 and row.request_body == '{"model": "gpt-4o-mini", "messages": ['
    assert row.response_body == answer.text and "invalid_json" in row.response_body


def test_a_websocket_turn_is_captured_as_its_request_and_its_events(
        gateway: Any, upstream: Any, make_key: Any) -> None:
    key = make_key(capture_bodies="on",
                   capture_bodies_until=timezone.now() + timedelta(hours=1))

    async def scenario(sock: Socket) -> list[dict[str, Any]]:
        return await sock.turn(model="gpt-5", input=f"[[fake chunks=2]] key {key.secret}",
                               store=False)

    frames = run_socket(ws_url(gateway.url), key.secret, scenario)
    assert frames[-1]["type"] == "response.completed"
    row = wait_capture(request_id_of(key))
    assert (row.path, row.stream, row.status) == ("/v1/responses", True, 200)
    assert key.secret not in row.request_body
    assert orjson.loads(row.request_body)["input"] == "[[fake chunks=2]] key [redacted]"
    assert "event: response.completed" in row.response_body
    assert "tok0 " in row.response_body and "tok1 " in row.response_body


def request_id_of(key: CreatedKey) -> str:
    """The request id of the key's one request, once its usage row is written."""
    deadline = time.monotonic() + 10
    while True:
        ids = list(UsageLog.objects.filter(key_id=key.key.pk).values_list("request_id",
                                                                          flat=True))
        if ids:
            assert len(ids) == 1, ids
            return ids[0]
        assert time.monotonic() < deadline, "no usage row"
        time.sleep(0.02)


# --- who is captured ----------------------------------------------------------------------

def snapshot(key: ApiKey) -> KeySnapshot:
    data = build_key_snapshot(key.secret_hash)
    assert data is not None
    return KeySnapshot.from_dict(data)


def test_nothing_is_captured_by_default(gateway: Any, upstream: Any, api_key: CreatedKey,
                                        tenant: Tenant) -> None:
    assert snapshot(api_key.key).capture_until == 0
    assert not snapshot(api_key.key).captures_bodies()
    answer = post(gateway, api_key, chat("not kept"))
    assert answer.status_code == 200
    sentinel(gateway, tenant)
    assert not CapturedExchange.objects.filter(
        request_id=answer.headers["x-request-id"]).exists()
    assert CapturedExchange.objects.count() == 1  # the sentinel's


def test_the_tenant_window_captures_its_keys_unless_a_key_says_off(
        gateway: Any, upstream: Any, make_key: Any, tenant: Tenant) -> None:
    inherit = make_key(name="inherit")
    off = make_key(name="off", capture_bodies="off")
    until = timezone.now() + timedelta(hours=2)
    tenant_update(tenant=tenant, capture_bodies_until=until)
    assert snapshot(inherit.key).capture_until == until.timestamp()
    assert snapshot(off.key).capture_until == 0
    kept = post(gateway, inherit, chat("kept"))
    dropped = post(gateway, off, chat("dropped"))
    assert kept.status_code == dropped.status_code == 200
    assert wait_capture(kept.headers["x-request-id"]).key_id == inherit.key.pk
    sentinel(gateway, tenant)
    assert not CapturedExchange.objects.filter(
        request_id=dropped.headers["x-request-id"]).exists()


def test_a_window_that_has_ended_captures_nothing(gateway: Any, upstream: Any,
                                                 make_key: Any, tenant: Tenant) -> None:
    """The window ends by the clock, with no snapshot rebuild: the key's and the
    tenant's."""
    ended = timezone.now() - timedelta(seconds=1)
    key = make_key(capture_bodies="on", capture_bodies_until=ended)
    tenant_update(tenant=tenant, capture_bodies_until=ended)
    inherit = make_key(name="inherit")
    assert 0 < snapshot(key.key).capture_until < time.time()
    assert not snapshot(inherit.key).captures_bodies()
    answers = [post(gateway, k, chat("late")) for k in (key, inherit)]
    sentinel(gateway, tenant)
    ids = [a.headers["x-request-id"] for a in answers]
    assert not CapturedExchange.objects.filter(request_id__in=ids).exists()


def test_switching_a_key_off_stops_capture(gateway: Any, upstream: Any, make_key: Any,
                                           tenant: Tenant) -> None:
    key = make_key()
    capture_on(key.key)
    first = post(gateway, key, chat("one"))
    wait_capture(first.headers["x-request-id"])
    key_update(key=key.key, capture_bodies="off")
    key.key.refresh_from_db()
    assert key.key.capture_bodies_until is None  # "off" keeps no window
    second = post(gateway, key, chat("two"))
    sentinel(gateway, tenant)
    assert not CapturedExchange.objects.filter(
        request_id=second.headers["x-request-id"]).exists()


def test_the_embedded_default_captures_with_the_in_process_writer(tmp_path: Path) -> None:
    """SQLite and no Redis (``make run``): switched on by the CLI, written by the
    in-process writer through the ORM."""
    sqlite = tmp_path / "turnpike.sqlite3"
    env = embedded_env(sqlite)
    fake = start_fake_upstream()
    gateway = None
    try:
        manage = [sys.executable, "manage.py"]
        subprocess.run([*manage, "migrate", "--noinput", "-v0"], cwd=ROOT, env=env,
                       check=True)
        seeded = subprocess.run(
            [*manage, "demo", "--json", "--upstream-url", fake.url + "/v1"],
            cwd=ROOT, env=env, check=True, capture_output=True, text=True)
        secret = json.loads(seeded.stdout)["secret"]
        subprocess.run([*manage, "key", "update", secret[:10], "--capture-bodies", "1h"],
                       cwd=ROOT, env=env, check=True, capture_output=True)
        gateway = start_gateway(env)
        answer = httpx.post(gateway.url + "/v1/chat/completions", timeout=30,
                            headers={"Authorization": f"Bearer {secret}"},
                            json=chat(f"[[fake echo=1 chunks=1]] is {secret} right?"))
        assert answer.status_code == 200 and secret in answer.text

        def captured() -> Any:
            with sqlite3.connect(sqlite) as db:
                return db.execute("SELECT request_body, response_body, status FROM "
                                  "gateway_capturedexchange WHERE request_id = ?",
                                  (answer.headers["x-request-id"],)).fetchone()

        request_body, response_body, status = until(captured, 10, "the capture")
        assert status == 200
        assert secret not in request_body and "is [redacted] right?" in request_body
        assert secret not in response_body and "is [redacted] right?" in response_body
    finally:
        if gateway is not None:
            stop(gateway.proc)
        stop(fake.proc)


# --- retention ----------------------------------------------------------------------------

def test_retention_deletes_old_captures_only(tenant: Tenant, settings: Any) -> None:
    settings.GATEWAY_CAPTURE_RETENTION_HOURS = 72
    now = timezone.now()
    for name, age in (("old", timedelta(hours=73)), ("due", timedelta(hours=72, seconds=5)),
                      ("young", timedelta(hours=71)), ("new", timedelta(0))):
        CapturedExchange.objects.create(request_id=f"req_{name}", tenant=tenant,
                                        created_at=now - age, method="POST", path="/v1/x")
    assert expire_captures.delay().get() == 2
    assert sorted(CapturedExchange.objects.values_list("request_id", flat=True)) == [
        "req_new", "req_young"]
    settings.GATEWAY_CAPTURE_RETENTION_HOURS = 1
    assert expire_captures.delay().get() == 1
    assert list(CapturedExchange.objects.values_list("request_id", flat=True)) == ["req_new"]
