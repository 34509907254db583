"""The access line (gateway.accesslog) and request ids (gateway.requestids), read from a real
gateway process's output: LOG_FORMAT=json, one JSON object a line, one access line per /v1
request with the fields the usage row has; the client's x-request-id echoed, stored and
logged beside Turnpike's own; traceparent's trace id in the line. And the text format, and
JSON logging in Celery."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx
import orjson
import pytest

from billing.models import UsageLog
from tests.conftest import UPSTREAM_SECRET, gateway_env, wait_for_usage
from tests.servers import ROOT, FakeUpstream, Gateway, start_gateway, stop

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


@pytest.fixture(scope="module")
def json_gateway(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Gateway]:
    with django_db_blocker.unblock():
        server = start_gateway(gateway_env(GATEWAY_SNAPSHOT_TTL="0", LOG_FORMAT="json",
                                           LOG_LEVEL="INFO"))
    yield server
    stop(server.proc)


def json_lines(gateway: Gateway) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in gateway.log_lines() if line.strip()]


def access_line(gateway: Gateway, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The access line of ``request_id`` (written just after the answer: polled)."""
    deadline = time.monotonic() + timeout
    while True:
        for line in json_lines(gateway):
            if line.get("logger") == "turnpike.access" and line.get("request_id") == request_id:
                return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no access line for {request_id} after {timeout}s")
        time.sleep(0.05)


def chat(gateway: Gateway, key: str, *, stream: bool = False, model: str = "gpt-4o-mini",
         headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(gateway.base_url + "/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {key}", **(headers or {})},
                      json={"model": model, "stream": stream,
                            "messages": [{"role": "user", "content": "hello"}]})


def assert_matches_row(line: dict[str, Any], row: UsageLog) -> None:
    """The access line says what the usage row says."""
    assert line["request_id"] == row.request_id
    assert line["status"] == row.status_code
    assert line["error_code"] == row.error_code
    assert line["tenant"] == row.tenant_id
    assert line["key_prefix"] == row.key_prefix
    assert line["model"] == row.model
    assert line["endpoint"] == row.endpoint
    assert line["stream"] is row.stream
    for name in ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens"):
        assert line[name] == getattr(row, name), name
    assert line["cost"] == float(row.cost)
    assert line["attempts"] == len(row.attempts)
    assert line["client_ip"] == row.client_ip
    assert line["upstream"] == (row.upstream.name if row.upstream else None)
    assert (line["ttfb_ms"] is None) is (row.ttfb_ms is None)
    assert line["latency_ms"] >= row.latency_ms >= 0


def test_a_success_with_the_clients_request_id(json_gateway, upstream, api_key):
    client_id = f"client-{uuid.uuid4()}"
    resp = chat(json_gateway, api_key.secret, headers={"X-Request-Id": client_id})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-request-id"] == client_id  # echoed
    own = resp.headers["x-turnpike-request-id"]
    assert own.startswith("req_") and own != client_id
    row = wait_for_usage(own)  # the row is Turnpike's id, with the client's beside it
    assert row.client_request_id == client_id
    line = access_line(json_gateway, own)
    assert_matches_row(line, row)
    assert line["client_request_id"] == client_id
    assert (line["level"], line["logger"], line["method"], line["path"]) == (
        "INFO", "turnpike.access", "POST", "/v1/chat/completions")
    assert (line["status"], line["error_code"], line["upstream"], line["attempts"]) == (
        200, "", "fake", 1)
    assert line["tenant"] == api_key.key.tenant_id
    assert line["key_prefix"] == api_key.key.prefix and len(line["key_prefix"]) == 10
    assert line["output_tokens"] > 0 and line["cost"] >= 0
    assert line["message"] == "POST /v1/chat/completions 200"
    assert line["time"].endswith("+00:00")
    assert "trace_id" not in line and "span_id" not in line


def test_a_reused_client_id_keeps_every_row(json_gateway, upstream, api_key):
    """Clients reuse ids: Turnpike's own id stays unique, so no row (or charge) is lost."""
    client_id = f"reused-{uuid.uuid4().hex[:8]}"
    answers = [chat(json_gateway, api_key.secret, headers={"x-request-id": client_id})
               for _ in range(2)]
    own = [a.headers["x-turnpike-request-id"] for a in answers]
    assert len(set(own)) == 2
    rows = [wait_for_usage(i) for i in own]
    assert [r.client_request_id for r in rows] == [client_id, client_id]


@pytest.mark.parametrize("bad", ["has spaces in it", "x" * 65, "quote\"d", "semi;colon",
                                 "ünïcode"])
def test_an_invalid_client_id_is_ignored_not_refused(json_gateway, upstream, api_key, bad):
    resp = httpx.post(json_gateway.base_url + "/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {api_key.secret}",
                               "x-request-id": bad.encode()},
                      json={"model": "gpt-4o-mini",
                            "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200, resp.text
    own = resp.headers["x-request-id"]
    assert own.startswith("req_") and "x-turnpike-request-id" not in resp.headers
    assert wait_for_usage(own).client_request_id == ""
    assert "client_request_id" not in access_line(json_gateway, own)


def test_a_traceparents_trace_id_is_logged(json_gateway, upstream, api_key):
    trace_id, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    resp = chat(json_gateway, api_key.secret,
                headers={"traceparent": f"00-{trace_id}-{parent}-01"})
    line = access_line(json_gateway, resp.headers["x-request-id"])
    assert (line["trace_id"], line["parent_span_id"]) == (trace_id, parent)
    # An invalid one is ignored.
    resp = chat(json_gateway, api_key.secret, headers={"traceparent": f"00-{trace_id}-xyz-01"})
    assert resp.status_code == 200
    assert "trace_id" not in access_line(json_gateway, resp.headers["x-request-id"])


def test_a_refusal_401_has_no_tenant_and_never_the_key(json_gateway, upstream, api_key):
    wrong = api_key.secret[:-4] + "zzzz"
    resp = chat(json_gateway, wrong)
    assert resp.status_code == 401
    rid = resp.headers["x-request-id"]
    line = access_line(json_gateway, rid)
    assert_matches_row(line, wait_for_usage(rid))
    assert (line["status"], line["tenant"], line["key_prefix"], line["upstream"],
            line["attempts"]) == (401, None, "", None, 0)
    assert line["error_code"] == resp.json()["error"]["code"]
    assert wrong not in json_gateway.log.read_text()


def test_a_refusal_429_names_the_tenant_and_key(json_gateway, upstream, make_key):
    limited = make_key(rpm=1)
    assert chat(json_gateway, limited.secret).status_code == 200
    resp = chat(json_gateway, limited.secret)
    assert resp.status_code == 429, resp.text
    rid = resp.headers["x-request-id"]
    line = access_line(json_gateway, rid)
    assert_matches_row(line, wait_for_usage(rid))
    assert line["error_code"] == resp.json()["error"]["code"]
    assert (line["tenant"], line["key_prefix"], line["attempts"]) == (
        limited.key.tenant_id, limited.key.prefix, 0)


def test_an_upstream_failure(json_gateway, upstream, api_key, fake_upstream: FakeUpstream):
    fake_upstream.script_key(UPSTREAM_SECRET, status=500, count=3)
    try:
        resp = chat(json_gateway, api_key.secret)
    finally:
        fake_upstream.clear()
    assert resp.status_code >= 500, resp.text
    rid = resp.headers["x-request-id"]
    row = wait_for_usage(rid)
    line = access_line(json_gateway, rid)
    assert_matches_row(line, row)
    assert line["error_code"] == resp.json()["error"]["code"] != ""
    assert line["upstream"] == "fake" and line["attempts"] >= 1
    assert line["output_tokens"] == 0 and line["cost"] == 0


def test_a_stream(json_gateway, upstream, api_key):
    resp = chat(json_gateway, api_key.secret, stream=True,
                headers={"x-request-id": "stream-1"})
    assert resp.status_code == 200 and "[DONE]" in resp.text
    own = resp.headers["x-turnpike-request-id"]
    row = wait_for_usage(own)
    line = access_line(json_gateway, own)
    assert_matches_row(line, row)
    assert line["stream"] is True and line["client_request_id"] == "stream-1"
    assert line["ttfb_ms"] is not None and line["ttfb_ms"] <= line["latency_ms"]
    assert line["output_tokens"] > 0


def test_each_websocket_turn_and_a_refused_handshake_get_a_line(json_gateway, upstream,
                                                                api_key):
    url = "ws" + json_gateway.url.removeprefix("http") + "/v1/responses"

    async def turns() -> None:
        headers = {"Authorization": f"Bearer {api_key.secret}", "x-request-id": "ws-conn-1",
                   "OpenAI-Beta": "responses_websockets=2026-02-06"}
        async with aiohttp.ClientSession() as session, \
                session.ws_connect(url, headers=headers) as ws:
            for _ in range(2):
                await ws.send_str(orjson.dumps({"type": "response.create", "model": "gpt-5",
                                                "input": "hi"}).decode())
                while orjson.loads((await ws.receive(timeout=15)).data)["type"] not in (
                        "response.completed", "response.failed", "error"):
                    pass
            # Closing the socket while the last turn's handler is still finishing would make
            # it a client that left (client_disconnected): wait until it is over.
            while True:
                async with session.get(json_gateway.url + "/_gateway/status") as state:
                    if not (await state.json())["in_flight"]:
                        break
                await asyncio.sleep(0.02)

    asyncio.run(turns())
    rows = wait_for_rows(2, client_request_id="ws-conn-1")
    lines = [access_line(json_gateway, row.request_id) for row in rows]
    for line, row in zip(lines, rows, strict=True):
        assert_matches_row(line, row)
        assert (line["endpoint"], line["stream"], line["status"]) == ("responses", True, 200)

    refused = httpx.get(json_gateway.url + "/v1/responses", headers={
        "Authorization": "Bearer sk-tp-nope", "Connection": "Upgrade", "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert refused.status_code == 401
    deadline = time.monotonic() + 10
    while not [line for line in json_lines(json_gateway)
               if line.get("logger") == "turnpike.access" and line.get("method") == "GET"
               and line.get("status") == 401]:
        assert time.monotonic() < deadline, "no access line for the refused handshake"
        time.sleep(0.05)


def wait_for_rows(count: int, timeout: float = 10, **filters: Any) -> list[UsageLog]:
    deadline = time.monotonic() + timeout
    while True:
        rows = list(UsageLog.objects.filter(**filters).order_by("created_at"))
        if len(rows) >= count:
            return rows
        assert time.monotonic() < deadline, f"{len(rows)} of {count} rows after {timeout}s"
        time.sleep(0.05)


def test_every_line_of_the_process_is_json(json_gateway, upstream, api_key):
    """Not only access lines: daphne's, Django's and Turnpike's own too (a refused portal
    page logs a Django warning)."""
    chat(json_gateway, api_key.secret)
    assert httpx.get(json_gateway.url + "/api/ops/tenants/").status_code in (401, 403)
    deadline = time.monotonic() + 10
    while not any(line.get("logger", "").startswith("django") for line in
                  json_lines(json_gateway)):
        assert time.monotonic() < deadline, "Django logged nothing"
        time.sleep(0.05)
    lines = json_gateway.log_lines()
    assert lines
    for raw in lines:
        line = orjson.loads(raw)  # fails on any line that is not JSON
        assert {"time", "level", "logger", "message"} <= set(line), raw


def test_text_is_the_default_format(gateway, upstream, api_key):
    resp = chat(gateway, api_key.secret, headers={"x-request-id": "text-1"})
    own = resp.headers["x-turnpike-request-id"]
    deadline = time.monotonic() + 10
    while not (found := [line for line in gateway.log_lines() if own in line]):
        assert time.monotonic() < deadline, "no access line"
        time.sleep(0.05)
    line = found[0]
    assert f" INFO turnpike.access {own} POST /v1/chat/completions 200 " in line
    for part in ("client_request_id=text-1", f"key_prefix={api_key.key.prefix}",
                 "model=gpt-4o-mini", "upstream=fake", "stream=false", "attempts=1"):
        assert part in line.split(), part


def test_celery_logs_json_through_djangos_logging():
    """A worker or beat with LOG_FORMAT=json: Celery's logging setup keeps Django's JSON
    handler (the setup_logging signal), at the level it was given."""
    code = ("import django, logging; django.setup(); from portal.celery import app; "
            "app.log.setup(loglevel='INFO'); "
            "logging.getLogger('celery.worker').info('celery %s', 'ready')")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings", "LOG_FORMAT": "json",
           "LOG_LEVEL": "WARNING", "DATABASE_URL": "", "REDIS_URL": ""}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [orjson.loads(line) for line in done.stderr.splitlines() if line.strip()]
    assert {"logger": "celery.worker", "level": "INFO", "message": "celery ready"}.items() \
        <= lines[-1].items()
