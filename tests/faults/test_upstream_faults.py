"""Upstream faults, end to end: every fault of the fault upstream (tests/faults/faultupstream.py)
on both endpoints, streamed and not, passed through (kind ``openai``) and translated
(``openai-chat`` for Responses clients, ``anthropic``, ``ollama``), through a real gateway.

For each case: the client's exact answer (the status and error code before the first byte,
or after it a 200 whose stream ends with the protocol's error event and closes), exactly one
usage row with that error code, no charge (balance, ledger and the limiter's account as
before), and the key's only concurrency slot free for its next request at once. The ``ok``
fault is the control: the same checks see a charge when something was delivered."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from django.db import connections

from billing.models import LedgerEntry, ModelPrice, UsageLog
from billing.pricing import to_micro
from billing.services import ledger_mismatches, tenant_topup
from gateway.health import probe
from gateway.models import Upstream
from gateway.services import upstream_create
from keys.limits import limiter
from keys.models import Tenant
from keys.services import CreatedKey, tenant_get_or_create
from tests.conftest import gateway_env, wait_for_usage
from tests.faults.faultupstream import TEXT
from tests.servers import ROOT, Gateway, free_port, start_gateway, stop, wait_for_port

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

SECRET = "sk-fault-upstream-credential-0001"
MODEL = "fault-model"
FREE_MODEL = "free-model"
BALANCE = Decimal("100000")
# The first-byte and idle timeouts of upstreams with a hang fault, seconds: small, so the
# suite stays fast. Every other fault upstream gets a generous one, so a loaded machine
# cannot turn a fast answer into a timeout.
TIMEOUT = 0.5
SLACK_TIMEOUT = 10.0
READ_TIMEOUT = 8.0  # a hang in the gateway fails the test instead of the suite


@dataclass
class FaultServer:
    proc: subprocess.Popen[Any]
    url: str
    sink_url: str

    def base_url(self, fault: str, kind: str) -> str:
        root = f"{self.url}/{fault}"
        return root if kind in ("anthropic", "ollama") else root + "/v1"

    def calls(self) -> list[dict[str, Any]]:
        return httpx.get(self.url + "/_faults/calls").json()

    def clear(self) -> None:
        httpx.delete(self.url + "/_faults/calls")


@pytest.fixture(scope="session")
def fault_server() -> Iterator[FaultServer]:
    port, sink = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.faults.faultupstream", "--port",
                             str(port), "--sink-port", str(sink)], cwd=ROOT)
    wait_for_port(port, proc)
    wait_for_port(sink, proc)
    yield FaultServer(proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{sink}")
    stop(proc)


@dataclass
class Setup:
    key: CreatedKey
    tenant: Tenant


@pytest.fixture
def setup(gateway: Any, fault_server: FaultServer, make_key: Any, tenant: Tenant) -> Setup:
    """A priced model, a tenant with a balance, a key with one concurrency slot, and a free
    model on a healthy upstream for the key's next request."""
    fault_server.clear()
    ModelPrice.objects.create(model=MODEL + "*", input_per_million=Decimal("1000000"),
                              output_per_million=Decimal("1000000"))
    tenant_topup(tenant=tenant, amount=BALANCE)
    upstream_create(name="healthy", kind="openai", base_url=fault_server.base_url("ok", "openai"),
                    models=[FREE_MODEL], api_keys=[SECRET])
    return Setup(key=make_key(concurrency=1), tenant=tenant)


def model_of(kind: str) -> str:
    return f"{MODEL}-{kind}"


def fault_upstream(server: FaultServer, fault: str, kind: str, **kw: Any) -> Upstream:
    """An upstream of ``kind`` with ``fault``, serving ``model_of(kind)`` and MODEL (or the
    ``models`` given)."""
    base = (f"http://127.0.0.1:{free_port()}" + ("" if kind in ("anthropic", "ollama") else
                                                  "/v1")
            if fault == "refused" else server.base_url(fault, kind))
    kw.setdefault("name", f"{fault}-{kind}")
    timeout = TIMEOUT if fault.startswith("hang") else SLACK_TIMEOUT
    kw.setdefault("models", [MODEL, model_of(kind)])
    return upstream_create(kind=kind, base_url=base, api_keys=[SECRET], timeout_connect=timeout,
                           timeout_first_byte=timeout, timeout_idle=timeout, **kw)


# --- what each case must answer -----------------------------------------------------------

# (endpoint, upstream kind): kind openai passes both protocols through, openai-chat passes
# Chat through; the others are translated.
ROUTES = [("responses", "openai"), ("responses", "openai-chat"), ("responses", "anthropic"),
          ("responses", "ollama"), ("chat", "openai"), ("chat", "anthropic"), ("chat", "ollama")]
FAULTS = ["ok", "s500", "s503", "s429", "s429bare", "refused", "hang_headers", "hang_body",
          "hang_after_start", "cut_body", "cut_after_start", "garbage_json", "garbage_sse",
          "error200", "error200json", "badjson", "badjson_after_start", "redirect"]


def passthrough(endpoint: str, kind: str) -> bool:
    return kind == "openai" or (kind == "openai-chat" and endpoint == "chat")


def dialect(kind: str) -> str:
    return kind if kind in ("anthropic", "ollama") else "openai"


# The upstream's own error code, as each dialect spells it (the fault upstream's bodies).
UPSTREAM_CODES = {
    "s500": {"openai": "server_error", "anthropic": "api_error", "ollama": "upstream_error"},
    "s503": {"openai": "server_error", "anthropic": "overloaded_error",
             "ollama": "upstream_error"},
    "s429": {"openai": "rate_limit_exceeded", "anthropic": "rate_limit_error",
             "ollama": "rate_limit_exceeded"},
    "error200": {"openai": "server_error", "anthropic": "api_error", "ollama": "upstream_error"},
}


@dataclass(frozen=True)
class Expect:
    status: int  # the HTTP status; 200 with ``code`` means an error event inside the stream
    code: str
    retry_after: str | None = None


def expected(fault: str, endpoint: str, kind: str, stream: bool) -> Expect:
    """The answer the client must get (a table, not a second implementation: each line is
    the documented behaviour of one fault)."""
    relayed = stream and passthrough(endpoint, kind)  # events pass before the fault shows
    code = UPSTREAM_CODES.get(fault.replace("bare", "").replace("json", ""), {}).get(
        dialect(kind), "")
    return {
        "ok": Expect(200, ""),
        "s500": Expect(500, code),
        "s503": Expect(503, code),
        "s429": Expect(429, code, "7"),
        "s429bare": Expect(429, code, "5"),
        "refused": Expect(502, "upstream_unavailable"),
        "hang_headers": Expect(504, "upstream_timeout"),
        "hang_body": Expect(504, "upstream_timeout"),
        "hang_after_start": Expect(200 if relayed else 504, "upstream_timeout"),
        "cut_body": Expect(502, "upstream_stream_cut"),
        "cut_after_start": Expect(200 if relayed else 502, "upstream_stream_cut"),
        "garbage_json": Expect(502, "upstream_bad_response"),
        "garbage_sse": Expect(502, "upstream_bad_response"),
        "error200": Expect(502, code),
        "error200json": Expect(502, code),
        "badjson": Expect(502, "upstream_bad_response"),
        # Passed through, the lines are relayed unread; the stream then ends unfinished.
        "badjson_after_start": Expect(200, "upstream_stream_cut") if relayed
        else Expect(502, "upstream_bad_response"),
        "redirect": Expect(502, "upstream_redirect"),
    }[fault]


# --- the client side ------------------------------------------------------------------------

def request_body(endpoint: str, stream: bool, model: str = MODEL) -> dict[str, Any]:
    if endpoint == "chat":
        return {"model": model, "stream": stream, "max_tokens": 32,
                "messages": [{"role": "user", "content": "hello"}]}
    return {"model": model, "stream": stream, "max_output_tokens": 32, "input": "hello"}


@dataclass
class Answer:
    status: int
    headers: httpx.Headers
    json: Any  # the JSON body (not a stream)
    events: list[Any]  # the parsed data of each SSE event (a stream)

    @property
    def request_id(self) -> str:
        return self.headers["x-request-id"]


def call(gateway: Any, secret: str, endpoint: str, stream: bool,
         model: str = MODEL) -> Answer:
    path = "/chat/completions" if endpoint == "chat" else "/responses"
    timeout = httpx.Timeout(READ_TIMEOUT)
    with httpx.stream("POST", gateway.base_url + path, timeout=timeout,
                      json=request_body(endpoint, stream, model),
                      headers={"Authorization": f"Bearer {secret}"}) as resp:
        body = resp.read()  # to the end: the gateway must close the stream
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        events = [line[6:] for line in body.decode().splitlines() if line.startswith("data: ")]
        return Answer(resp.status_code, resp.headers, None, [parse(e) for e in events])
    return Answer(resp.status_code, resp.headers, json.loads(body), [])


def parse(data: str) -> Any:
    """An event's data as JSON; as it is when it is not (a passthrough relays such lines)."""
    try:
        return json.loads(data)
    except ValueError:
        return data


def text_of(answer: Answer, endpoint: str) -> str:
    if answer.json is not None:
        if endpoint == "chat":
            return answer.json["choices"][0]["message"]["content"]
        return "".join(part["text"] for item in answer.json["output"]
                       for part in item.get("content") or [])
    if endpoint == "chat":
        return "".join(e["choices"][0]["delta"].get("content") or "" for e in answer.events
                       if isinstance(e, dict) and e.get("choices"))
    return "".join(e["delta"] for e in answer.events
                   if e["type"] == "response.output_text.delta")


def stream_error_code(answer: Answer, endpoint: str) -> str:
    """The code of the protocol's terminal error event, which must be the stream's last."""
    assert answer.status == 200 and answer.events, answer
    last = answer.events[-1]
    if endpoint == "chat":
        assert "[DONE]" not in answer.events
        assert sum(1 for e in answer.events if isinstance(e, dict) and "error" in e) == 1
        return last["error"]["code"]
    types = [e.get("type") for e in answer.events if isinstance(e, dict)]
    assert types.count("response.failed") == 1 and "response.completed" not in types
    assert last["type"] == "response.failed"
    return last["response"]["error"]["code"]


# --- the checks every case makes -----------------------------------------------------------

def usage_rows(request_id: str) -> list[UsageLog]:
    wait_for_usage(request_id)
    return list(UsageLog.objects.filter(request_id=request_id))


def wait_for(check: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def assert_charged(setup: Setup, balance: Decimal, ledger: bool = True) -> None:
    """The balance is what it should be, the ledger agrees (checked once at the end when
    cases run at once: ``ledger_mismatches`` reads two queries, so a charge landing between
    them would look like one), and the reservation went back (the limiter's account holds
    the whole balance again)."""
    tenant = Tenant.objects.get(pk=setup.tenant.pk)
    assert tenant.balance == balance
    if balance == BALANCE:
        assert not LedgerEntry.objects.filter(tenant=tenant, kind="charge").exists()
    if ledger:
        assert ledger_mismatches() == []
    wait_for(lambda: limiter().available("tenant", tenant.pk) in (None, to_micro(balance)))


def assert_slot_free(gateway: Any, setup: Setup, endpoint: str) -> None:
    """The key has one concurrency slot: its next request must be served at once."""
    answer = call(gateway, setup.key.secret, endpoint, False, model=FREE_MODEL)
    assert answer.status == 200, answer.json


@dataclass
class Case:
    """One cell of the matrix, isolated from the others so they can run at once: its own
    tenant (balance), key (one concurrency slot), upstream, credential and model name."""

    endpoint: str
    kind: str
    stream: bool
    setup: Setup
    model: str

    @property
    def name(self) -> str:
        return f"{self.endpoint} via {self.kind}, {'stream' if self.stream else 'json'}"


def make_cases(server: FaultServer, fault: str, make_key: Any) -> list[Case]:
    cases = []
    for endpoint, kind in ROUTES:
        for stream in (False, True):
            label = f"{endpoint}-{kind}-{'stream' if stream else 'json'}"
            tenant = tenant_get_or_create(name=label)[0]
            tenant_topup(tenant=tenant, amount=BALANCE)
            model = f"{MODEL}-{label}"
            fault_upstream(server, fault, kind, name=f"{fault}-{label}", models=[model])
            key = make_key(tenant=tenant, concurrency=1)
            cases.append(Case(endpoint, kind, stream, Setup(key, tenant), model))
    return cases


def check_case(gateway: Any, fault: str, case: Case) -> None:
    """One request through one fault, then the checks every case makes."""
    endpoint, stream, setup = case.endpoint, case.stream, case.setup
    want = expected(fault, endpoint, case.kind, stream)
    answer = call(gateway, setup.key.secret, endpoint, stream, model=case.model)
    if fault == "ok":
        assert answer.status == 200, answer
        assert text_of(answer, endpoint) == TEXT
    elif want.status == 200:  # the fault came after the first event was relayed
        assert stream_error_code(answer, endpoint) == want.code
    else:
        got = (answer.status, answer.json["error"]["code"] if answer.json else answer.events)
        assert got == (want.status, want.code), answer
        assert answer.headers.get("retry-after") == want.retry_after

    rows = usage_rows(answer.request_id)
    assert len(rows) == 1
    row = rows[0]
    assert (row.status_code, row.error_code, row.stream) == (answer.status, want.code, stream)
    balance = BALANCE
    if fault == "ok":  # the control: a delivered answer is charged, and only once
        assert row.cost == Decimal(7)  # the upstream's 5 + 2 tokens at 1 each
        balance -= row.cost
    else:
        assert row.cost == 0
    assert_charged(setup, balance, ledger=False)
    assert_slot_free(gateway, setup, endpoint)


@pytest.mark.parametrize("fault", FAULTS)
def test_upstream_fault(gateway: Any, fault_server: FaultServer, setup: Setup, make_key: Any,
                        fault: str) -> None:
    """One fault, every route and both modes, the cases at once (one test per fault keeps
    the database flushes between tests few, and a hang costs one timeout, not fourteen);
    every case is checked and every mismatch reported."""
    cases = make_cases(fault_server, fault, make_key)

    def run(case: Case) -> str | None:
        try:
            check_case(gateway, fault, case)
            return None
        except Exception as exc:  # noqa: BLE001 - every case is reported, not the first
            return f"{case.name}: {exc!r}".splitlines()[0]
        finally:
            connections.close_all()  # this thread's own database connection

    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        problems = [p for p in pool.map(run, cases) if p is not None]
    assert not problems, "\n".join(problems)
    assert ledger_mismatches() == []


# --- beyond the matrix ----------------------------------------------------------------------

def test_a_redirect_is_not_followed_and_no_credential_reaches_its_target(
        gateway: Any, fault_server: FaultServer, setup: Setup) -> None:
    for kind in ("openai", "anthropic"):  # Anthropic's credential is x-api-key
        fault_upstream(fault_server, "redirect", kind)
        answer = call(gateway, setup.key.secret, "chat", False, model=model_of(kind))
        assert answer.status == 502
        error = answer.json["error"]
        assert error["code"] == "upstream_redirect"
        assert "307" in error["message"] and "redirect" in error["message"]
        assert "pw" not in error["message"] and "sink" not in error["message"]
        assert usage_rows(answer.request_id)[0].error_code == "upstream_redirect"
    assert [c for c in fault_server.calls() if c["listener"] == "sink"] == []
    assert [c["path"] for c in fault_server.calls()] == ["/redirect/v1/chat/completions",
                                                         "/redirect/v1/messages"]


def test_the_health_probe_does_not_follow_a_redirect(fault_server: FaultServer,
                                                     setup: Setup) -> None:
    result = probe(fault_upstream(fault_server, "redirect", "anthropic"))
    assert not result.ok and "307" in result.error
    assert [c for c in fault_server.calls() if c["listener"] == "sink"] == []


@pytest.mark.parametrize("fault", ["error200", "error200json", "garbage_sse", "badjson"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_200_that_is_not_an_answer_fails_over_to_the_next_route(
        gateway: Any, fault_server: FaultServer, setup: Setup, fault: str,
        stream: bool) -> None:
    """Before anything reached the client, a 200 that carries an error (or no answer at all)
    is a failed attempt like a 5xx: the next upstream serves the request."""
    fault_upstream(fault_server, fault, "openai", priority=1)
    fault_upstream(fault_server, "ok", "anthropic", name="backup", priority=0)
    answer = call(gateway, setup.key.secret, "responses", stream)
    assert answer.status == 200 and text_of(answer, "responses") == TEXT
    row = usage_rows(answer.request_id)[0]
    assert row.error_code == "" and row.cost == Decimal(7)
    assert [(a["upstream"], a["status"]) for a in row.attempts] == [
        (f"{fault}-openai", 200), ("backup", 200)]
    assert row.attempts[0]["error"] and not row.attempts[1]["error"]


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_text_relayed_before_a_cut_is_charged(gateway: Any, fault_server: FaultServer,
                                              setup: Setup, kind: str) -> None:
    """The other side of "no charge for what was not delivered": text that did reach the
    client before the upstream broke is charged (counted by Turnpike, marked estimated)."""
    fault_upstream(fault_server, "cut_after_content", kind)
    answer = call(gateway, setup.key.secret, "responses", True)
    assert text_of(answer, "responses") == TEXT
    assert stream_error_code(answer, "responses") == "upstream_stream_cut"
    row = usage_rows(answer.request_id)[0]
    assert row.error_code == "upstream_stream_cut" and row.estimated
    assert row.output_tokens > 0 and row.cost > 0
    assert Tenant.objects.get(pk=setup.tenant.pk).balance == BALANCE - row.cost
    assert ledger_mismatches() == []


@pytest.mark.parametrize(("fault", "status", "code"), [
    ("cut_body", 502, "upstream_stream_cut"), ("hang_body", 504, "upstream_timeout"),
    ("error200json", 502, "api_error"), ("garbage_json", 502, "upstream_bad_response")])
def test_compaction_by_turnpike_reports_upstream_failures(
        gateway: Any, fault_server: FaultServer, setup: Setup, fault: str, status: int,
        code: str) -> None:
    """/v1/responses/compact on an upstream without native compaction: Turnpike summarises
    with a non-streamed call, whose body can break like any other."""
    fault_upstream(fault_server, fault, "anthropic")
    resp = httpx.post(gateway.base_url + "/responses/compact", timeout=READ_TIMEOUT,
                      headers={"Authorization": f"Bearer {setup.key.secret}"},
                      json={"model": MODEL, "input": "a long history"})
    assert (resp.status_code, resp.json()["error"]["code"]) == (status, code)
    row = usage_rows(resp.headers["x-request-id"])[0]
    assert (row.error_code, row.cost) == (code, 0)
    assert_charged(setup, BALANCE)


@pytest.fixture(scope="module")
def gateway_quick_keepalive(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Gateway]:
    """A gateway that bridges silences after 0.3 s, so a stream starts before its first
    event arrives."""
    with django_db_blocker.unblock():
        server = start_gateway(gateway_env(GATEWAY_SNAPSHOT_TTL="0",
                                           GATEWAY_KEEPALIVE_SECONDS="0.3"))
    yield server
    stop(server.proc)


@pytest.mark.parametrize(("endpoint", "kind"), [("responses", "openai"), ("chat", "openai"),
                                                ("responses", "anthropic")])
def test_an_error_after_a_long_silence_ends_the_started_stream(
        gateway_quick_keepalive: Gateway, fault_server: FaultServer, setup: Setup,
        endpoint: str, kind: str) -> None:
    """A silence before the first event starts the stream (keep-alives flow), so an error
    event that then arrives can only be the protocol's error event, and costs nothing."""
    fault_upstream(fault_server, "late_error", kind)
    answer = call(gateway_quick_keepalive, setup.key.secret, endpoint, True,
                  model=model_of(kind))
    want = "api_error" if kind == "anthropic" else "server_error"
    assert stream_error_code(answer, endpoint) == want
    row = usage_rows(answer.request_id)[0]
    assert (row.status_code, row.error_code, row.cost) == (200, want, 0)
    assert_charged(setup, BALANCE)


# --- the official SDK ---------------------------------------------------------------------------

@pytest.fixture
def sdk(gateway: Any, setup: Setup) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=setup.key.secret, max_retries=0,
                         timeout=READ_TIMEOUT)


def test_sdk_sees_a_200_error_body_as_an_api_error(fault_server: FaultServer,
                                                   sdk: openai.OpenAI) -> None:
    fault_upstream(fault_server, "error200", "openai")
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.responses.create(model=MODEL, input="hello")
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "server_error"


def test_sdk_sees_an_upstream_429_as_rate_limited(fault_server: FaultServer,
                                                  sdk: openai.OpenAI) -> None:
    fault_upstream(fault_server, "s429", "anthropic")
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert caught.value.response.headers["retry-after"] == "7"


def test_sdk_responses_stream_cut_after_the_start_ends_with_response_failed(
        fault_server: FaultServer, sdk: openai.OpenAI) -> None:
    fault_upstream(fault_server, "cut_after_start", "openai")
    events = list(sdk.responses.create(model=MODEL, input="hello", stream=True))
    assert events[0].type == "response.created"
    assert events[-1].type == "response.failed"
    assert events[-1].response.error.code == "upstream_stream_cut"


def test_sdk_chat_stream_that_hangs_after_the_start_raises_the_error_event(
        fault_server: FaultServer, sdk: openai.OpenAI) -> None:
    fault_upstream(fault_server, "hang_after_start", "openai")
    stream = sdk.chat.completions.create(model=MODEL, stream=True,
                                         messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.APIError) as caught:
        list(stream)
    assert "stopped sending" in caught.value.message


def test_sdk_garbage_stream_is_a_502_before_any_event(fault_server: FaultServer,
                                                      sdk: openai.OpenAI) -> None:
    fault_upstream(fault_server, "garbage_sse", "openai")
    with pytest.raises(openai.APIStatusError) as caught:
        list(sdk.chat.completions.create(model=MODEL, stream=True,
                                         messages=[{"role": "user", "content": "x"}]))
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "upstream_bad_response"
