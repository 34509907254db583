"""Prometheus metrics end to end: two real gateway processes share one
PROMETHEUS_MULTIPROC_DIR; requests of each kind go to both, and a scrape of either (parsed
from the exposition format) shows exactly the counters each kind should move, summed over
both. Also: gauges of live processes only, the scrape's protection (address allow-list and
bearer token), Celery task outcomes from a worker process, and the Grafana dashboard and
alert rules in deploy/ naming only metrics that /metrics exposes."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from billing.models import ModelPrice
from billing.services import tenant_topup
from gateway.models import Upstream
from gateway.services import upstream_create
from portal.infra.redis import sync_redis
from tests.conftest import gateway_env
from tests.fast.test_metrics import METRIC_NAME, dashboard_exprs, rule_exprs
from tests.servers import (
    FakeUpstream,
    Gateway,
    start_celery_worker,
    start_fake_upstream,
    start_gateway,
    stop,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.e2e,
    pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="the gateways share Redis"),
]

TOKEN = "scrape-token-5d1f0c"
QUEUE = f"turnpike-metrics-test-{os.getpid()}"

# The samples whose changes a request's expectations list in full.
COUNTED = {
    "turnpike_requests_total", "turnpike_tokens_total", "turnpike_cost_total",
    "turnpike_upstream_attempts_total", "turnpike_failovers_total",
    "turnpike_limiter_refusals_total", "turnpike_limiter_local_admissions_total",
    "turnpike_credential_cooldowns_total", "turnpike_request_duration_seconds_count",
    "turnpike_time_to_first_byte_seconds_count",
    "turnpike_upstream_attempt_duration_seconds_count", "turnpike_redis_roundtrip_seconds_count",
}

Key = tuple[str, tuple[tuple[str, str], ...]]


def sample(name: str, **labels: str) -> Key:
    return name, tuple(sorted(labels.items()))


# --- processes --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def metrics_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prometheus-multiproc")


@pytest.fixture(scope="module")
def open_fake() -> Iterator[FakeUpstream]:
    """A fake upstream that takes any credential (some are scripted to fail)."""
    server = start_fake_upstream()
    yield server
    stop(server.proc)


def metrics_env(metrics_dir: Path, **extra: str) -> dict[str, str]:
    return gateway_env(GATEWAY_SNAPSHOT_TTL="0", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
                       METRICS_FLUSH_SECONDS="0.1", METRICS_CELERY_QUEUES=QUEUE, **extra)


@pytest.fixture(scope="module")
def gateway_allow(django_db_setup: Any, django_db_blocker: Any,
                  metrics_dir: Path) -> Iterator[Gateway]:
    """Serves /metrics only to 127.0.0.2 (this test connects from there)."""
    with django_db_blocker.unblock():
        server = start_gateway(metrics_env(metrics_dir, METRICS_ALLOW="127.0.0.2/32"))
    yield server
    stop(server.proc)


@pytest.fixture(scope="module")
def gateway_token(django_db_setup: Any, django_db_blocker: Any,
                  metrics_dir: Path) -> Iterator[Gateway]:
    """Serves /metrics to loopback (the default) with METRICS_TOKEN."""
    with django_db_blocker.unblock():
        server = start_gateway(metrics_env(metrics_dir, METRICS_TOKEN=TOKEN))
    yield server
    stop(server.proc)


class Scraper:
    def __init__(self, allow: Gateway, token: Gateway) -> None:
        self.allow, self.token = allow, token
        self.from_2 = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"),
                                   timeout=30)

    def text(self, gateway: Gateway) -> str:
        if gateway is self.allow:
            resp = self.from_2.get(gateway.url + "/metrics")
        else:
            resp = httpx.get(gateway.url + "/metrics", timeout=30,
                             headers={"Authorization": f"Bearer {TOKEN}"})
        assert resp.status_code == 200, resp.text
        return resp.text

    def read(self, gateway: Gateway | None = None) -> dict[Key, float]:
        values: dict[Key, float] = {}
        for family in text_string_to_metric_families(self.text(gateway or self.allow)):
            for s in family.samples:
                values[sample(s.name, **s.labels)] = s.value
        return values


@pytest.fixture
def scraper(gateway_allow: Gateway, gateway_token: Gateway) -> Iterator[Scraper]:
    scraper = Scraper(gateway_allow, gateway_token)
    yield scraper
    scraper.from_2.close()


def moved(before: dict[Key, float], after: dict[Key, float]) -> dict[Key, float]:
    """The counted samples that changed, by how much."""
    return {k: round(v - before.get(k, 0.0), 9) for k, v in after.items()
            if k[0] in COUNTED and round(v - before.get(k, 0.0), 9) != 0}


def wait_until(read: Callable[[], Any], want: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = read()
        if got == want:
            return got
        if time.monotonic() > deadline:
            assert got == want
        time.sleep(0.05)


def settled(scraper: Scraper, before: dict[Key, float], expected: dict[Key, float]) -> None:
    """Each process writes its counts every 0.1 s: wait until the deltas read from either
    gateway are the expected ones, then once more after a few flushes (nothing extra came)."""
    for gateway in (scraper.allow, scraper.token):
        wait_until(lambda g=gateway: moved(before, scraper.read(g)), expected)
    time.sleep(0.5)
    assert moved(before, scraper.read(scraper.token)) == expected


# --- requests of each kind --------------------------------------------------------------

def post(gateway: Gateway, secret: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(gateway.base_url + path, json=body, timeout=30,
                      headers={"Authorization": f"Bearer {secret}"})


def chat_body(model: str, text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def requests_sample(endpoint: str, model: str, upstream: str, status: str, code: str,
                    stream: str) -> Key:
    return sample("turnpike_requests_total", endpoint=endpoint, model=model, upstream=upstream,
                  status_class=status, error_code=code, stream=stream)


def timing(name: str, endpoint: str, model: str, upstream: str, stream: str) -> Key:
    return sample(name, endpoint=endpoint, model=model, upstream=upstream, stream=stream)


def attempt(upstream: str, outcome: str) -> dict[Key, float]:
    return {sample("turnpike_upstream_attempts_total", upstream=upstream, outcome=outcome): 1,
            sample("turnpike_upstream_attempt_duration_seconds_count", upstream=upstream,
                   outcome=outcome): 1}


def redis(admits: int, settles: int) -> dict[Key, float]:
    out: dict[Key, float] = {}
    if admits:
        out[sample("turnpike_redis_roundtrip_seconds_count", op="admit")] = admits
    if settles:
        out[sample("turnpike_redis_roundtrip_seconds_count", op="settle")] = settles
    return out


def add_up(*parts: dict[Key, float]) -> dict[Key, float]:
    total: dict[Key, float] = {}
    for part in parts:
        for k, v in part.items():
            total[k] = total.get(k, 0) + v
    return total


@pytest.fixture
def world(open_fake: FakeUpstream, make_key: Callable[..., Any], tenant: Any,
          scraper: Scraper) -> dict[str, Any]:
    """A priced model on one upstream, a funded tenant, and one request already answered
    by each gateway (the tenant's account is loaded: every request after it makes exactly
    one admit call), its counts visible."""
    open_fake.clear()
    upstream_create(name="fake", kind="openai", base_url=open_fake.openai_url,
                    models=["gpt-4o-mini", "warm-model"], api_keys=["sk-fake"])
    ModelPrice.objects.create(model="gpt-4o-mini", per_request=Decimal("0.5"))
    tenant_topup(tenant=tenant, amount=Decimal("100"))
    key = make_key()
    before = scraper.read()
    for gateway in (scraper.allow, scraper.token):
        assert post(gateway, key.secret, "/chat/completions",
                    chat_body("warm-model")).status_code == 200
    warm = requests_sample("chat/completions", "warm-model", "fake", "2xx", "", "false")
    wait_until(lambda: moved(before, scraper.read()).get(warm), 2)
    return {"key": key, "make_key": make_key}


def usage_of_chat(resp: httpx.Response) -> dict[str, int]:
    usage = resp.json()["usage"]
    return {"input": usage["prompt_tokens"], "output": usage["completion_tokens"],
            "cached": usage["prompt_tokens_details"]["cached_tokens"],
            "reasoning": usage["completion_tokens_details"]["reasoning_tokens"]}


def usage_of_responses_stream(resp: httpx.Response) -> dict[str, int]:
    for line in resp.text.splitlines():
        if line.startswith("data: ") and '"response.completed"' in line:
            usage = json.loads(line[6:])["response"]["usage"]
            return {"input": usage["input_tokens"], "output": usage["output_tokens"],
                    "cached": usage["input_tokens_details"]["cached_tokens"],
                    "reasoning": usage["output_tokens_details"]["reasoning_tokens"]}
    raise AssertionError(f"no response.completed event in {resp.text[-500:]}")


def tokens(model: str, upstream: str, usage: dict[str, int]) -> dict[Key, float]:
    return {sample("turnpike_tokens_total", model=model, upstream=upstream, kind=kind): n
            for kind, n in usage.items() if n}


def test_a_chat_completion_moves_requests_latency_tokens_cost_and_one_attempt(
        scraper: Scraper, world: dict[str, Any]) -> None:
    before = scraper.read()
    expected: list[dict[Key, float]] = []
    for gateway in (scraper.allow, scraper.token):
        resp = post(gateway, world["key"].secret, "/chat/completions",
                    chat_body("gpt-4o-mini", "hi [[fake cached=2 reasoning_tokens=3]]"))
        assert resp.status_code == 200, resp.text
        expected.append(tokens("gpt-4o-mini", "fake", usage_of_chat(resp)))
    served = ("chat/completions", "gpt-4o-mini", "fake", "false")
    settled(scraper, before, add_up(*expected, {
        requests_sample("chat/completions", "gpt-4o-mini", "fake", "2xx", "", "false"): 2,
        timing("turnpike_request_duration_seconds_count", *served): 2,
        timing("turnpike_time_to_first_byte_seconds_count", *served): 2,
        sample("turnpike_cost_total", model="gpt-4o-mini", upstream="fake"): 1.0,
    }, attempt("fake", "ok"), attempt("fake", "ok"), redis(2, 2)))


def test_a_streamed_response_moves_the_stream_labelled_counters(
        scraper: Scraper, world: dict[str, Any]) -> None:
    before = scraper.read()
    expected: list[dict[Key, float]] = []
    for gateway in (scraper.allow, scraper.token):
        resp = post(gateway, world["key"].secret, "/responses", {
            "model": "gpt-4o-mini", "input": "hi [[fake chunks=4 cached=1]]", "stream": True})
        assert resp.status_code == 200, resp.text
        expected.append(tokens("gpt-4o-mini", "fake", usage_of_responses_stream(resp)))
    served = ("responses", "gpt-4o-mini", "fake", "true")
    settled(scraper, before, add_up(*expected, {
        requests_sample("responses", "gpt-4o-mini", "fake", "2xx", "", "true"): 2,
        timing("turnpike_request_duration_seconds_count", *served): 2,
        timing("turnpike_time_to_first_byte_seconds_count", *served): 2,
        sample("turnpike_cost_total", model="gpt-4o-mini", upstream="fake"): 1.0,
    }, attempt("fake", "ok"), attempt("fake", "ok"), redis(2, 2)))


def test_a_refused_key_counts_a_401_and_nothing_else(scraper: Scraper,
                                                     world: dict[str, Any]) -> None:
    before = scraper.read()
    for gateway in (scraper.allow, scraper.token):
        resp = post(gateway, "sk-tp-not-a-key", "/chat/completions", chat_body("gpt-4o-mini"))
        assert resp.status_code == 401
    # Not admitted: no model label, no upstream, no Redis call (the key is unknown).
    settled(scraper, before, {
        requests_sample("chat/completions", "", "", "4xx", "invalid_api_key", "false"): 2,
        timing("turnpike_request_duration_seconds_count", "chat/completions", "", "", "false"): 2,
    })



def test_a_websocket_refused_at_its_handshake_counts_like_the_http_refusal(
        scraper: Scraper, world: dict[str, Any]) -> None:
    before = scraper.read()
    for gateway in (scraper.allow, scraper.token):
        resp = httpx.get(gateway.base_url + "/responses", timeout=30, headers={
            "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Authorization": "Bearer sk-tp-not-a-key"})
        assert resp.status_code == 401
    settled(scraper, before, {
        requests_sample("responses", "", "", "4xx", "invalid_api_key", "false"): 2,
        timing("turnpike_request_duration_seconds_count", "responses", "", "", "false"): 2,
    })


def test_a_rate_limited_request_counts_a_limiter_refusal(scraper: Scraper,
                                                         world: dict[str, Any]) -> None:
    limited = world["make_key"](rpm=2)
    before = scraper.read()
    answers = [post(gateway, limited.secret, "/chat/completions", chat_body("gpt-4o-mini"))
               for gateway in (scraper.allow, scraper.token, scraper.allow, scraper.token)]
    assert [r.status_code for r in answers] == [200, 200, 429, 429]
    served = ("chat/completions", "gpt-4o-mini", "fake", "false")
    refused = ("chat/completions", "", "", "false")  # refused at admission: no model label
    settled(scraper, before, add_up(*(tokens("gpt-4o-mini", "fake", usage_of_chat(r))
                                      for r in answers[:2]), {
        requests_sample(*served[:3], "2xx", "", "false"): 2,
        requests_sample(*refused[:3], "4xx", "rate_limit_rpm", "false"): 2,
        sample("turnpike_limiter_refusals_total", code="rate_limit_rpm"): 2,
        timing("turnpike_request_duration_seconds_count", *served): 2,
        timing("turnpike_time_to_first_byte_seconds_count", *served): 2,
        timing("turnpike_request_duration_seconds_count", *refused): 2,
        sample("turnpike_cost_total", model="gpt-4o-mini", upstream="fake"): 1.0,
    }, attempt("fake", "ok"), attempt("fake", "ok"), redis(4, 2)))


def test_a_failover_counts_both_attempts_the_failover_and_the_cool_down(
        scraper: Scraper, world: dict[str, Any], open_fake: FakeUpstream) -> None:
    upstream_create(name="limited", kind="openai", base_url=open_fake.openai_url,
                    models=["fo-model"], api_keys=["sk-limited"], priority=1)
    upstream_create(name="spare", kind="openai", base_url=open_fake.openai_url,
                    models=["fo-model"], api_keys=["sk-spare"])
    open_fake.script_key("sk-limited", status=429, retry_after=60)
    before = scraper.read()
    answers = [post(gateway, world["key"].secret, "/chat/completions", chat_body("fo-model"))
               for gateway in (scraper.allow, scraper.token)]
    assert [r.status_code for r in answers] == [200, 200]
    # The first request tried "limited" (a 429: cooled for 60 s, on every process) and
    # moved on; the second did not try it.
    served = ("chat/completions", "fo-model", "spare", "false")
    settled(scraper, before, add_up(*(tokens("fo-model", "spare", usage_of_chat(r))
                                      for r in answers), {
        requests_sample(*served[:3], "2xx", "", "false"): 2,
        timing("turnpike_request_duration_seconds_count", *served): 2,
        timing("turnpike_time_to_first_byte_seconds_count", *served): 2,
        sample("turnpike_failovers_total", upstream="limited"): 1,
        sample("turnpike_credential_cooldowns_total", upstream="limited", action="cooled"): 1,
    }, attempt("limited", "rate_limited"), attempt("spare", "ok"), attempt("spare", "ok"),
        redis(2, 2)))


def test_an_upstream_error_on_the_only_route_is_a_5xx_with_its_code(
        scraper: Scraper, world: dict[str, Any]) -> None:
    before = scraper.read()
    answers = [post(gateway, world["key"].secret, "/chat/completions",
                    chat_body("gpt-4o-mini", "[[fake status=500]]"))
               for gateway in (scraper.allow, scraper.token)]
    assert [r.status_code for r in answers] == [500, 500]
    code = answers[0].json()["error"]["code"]
    assert code and code == answers[1].json()["error"]["code"]
    failed = ("chat/completions", "gpt-4o-mini", "fake", "false")
    # Admitted and settled (nothing charged: the upstream served nothing); no first byte
    # from an upstream; no failover (one route).
    settled(scraper, before, add_up({
        requests_sample(*failed[:3], "5xx", code, "false"): 2,
        timing("turnpike_request_duration_seconds_count", *failed): 2,
    }, attempt("fake", "server_error"), attempt("fake", "server_error"), redis(2, 2)))


def test_listing_models_is_counted_without_model_or_upstream(
        scraper: Scraper, world: dict[str, Any]) -> None:
    before = scraper.read()
    for gateway in (scraper.allow, scraper.token):
        resp = httpx.get(gateway.base_url + "/models",
                         headers={"Authorization": f"Bearer {world['key'].secret}"})
        assert resp.status_code == 200
    settled(scraper, before, {
        requests_sample("models", "", "", "2xx", "", "false"): 2,
        timing("turnpike_request_duration_seconds_count", "models", "", "", "false"): 2,
    })


# --- gauges of live processes -------------------------------------------------------------

def hold_stream(gateway: Gateway, secret: str, opened: threading.Event,
                release: threading.Event) -> threading.Thread:
    """A streamed chat answer read up to its first chunk, then held open until ``release``
    (the fake sends a chunk every 0.2 s for a minute)."""

    def run() -> None:
        body = chat_body("gpt-4o-mini", "[[fake chunks=300 delay=0.2]]", stream=True)
        try:
            with httpx.stream("POST", gateway.base_url + "/chat/completions", json=body,
                              timeout=60, headers={"Authorization": f"Bearer {secret}"}) as r:
                for line in r.iter_lines():
                    if "tok0" in line:
                        opened.set()
                        release.wait(30)
                        return
        except httpx.HTTPError:
            pass  # the gateway was killed under it

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def gauges(scraper: Scraper) -> tuple[float, float]:
    values = scraper.read()
    return (values[sample("turnpike_in_flight_requests")],
            values[sample("turnpike_open_streams")])


def test_in_flight_and_open_streams_sum_live_processes_and_drop_a_killed_one(
        scraper: Scraper, world: dict[str, Any], metrics_dir: Path,
        django_db_blocker: Any) -> None:
    with django_db_blocker.unblock():
        doomed = start_gateway(metrics_env(metrics_dir))
    try:
        secret = world["key"].secret
        served = requests_sample("chat/completions", "gpt-4o-mini", "fake", "2xx", "", "false")
        before = scraper.read().get(served, 0.0)
        assert post(doomed, secret, "/chat/completions",
                    chat_body("gpt-4o-mini")).status_code == 200
        counted = wait_until(lambda: scraper.read().get(served), before + 1)
        wait_until(lambda: gauges(scraper), (0.0, 0.0))
        release = threading.Event()
        streams = []
        for gateway in (scraper.token, doomed):
            opened = threading.Event()
            streams.append(hold_stream(gateway, secret, opened, release))
            assert opened.wait(15)
        wait_until(lambda: gauges(scraper), (2.0, 2.0))  # one on each process
        doomed.proc.send_signal(signal.SIGKILL)  # no exit handler runs
        doomed.proc.wait()
        # Its live gauges are dropped (its process id is gone); its counts stay in the sums.
        wait_until(lambda: gauges(scraper), (1.0, 1.0))
        assert scraper.read()[served] == counted
        release.set()
        for thread in streams:
            thread.join(30)
        wait_until(lambda: gauges(scraper), (0.0, 0.0))
    finally:
        stop(doomed.proc)


# --- who may scrape -------------------------------------------------------------------------

def test_metrics_are_served_only_to_allowed_addresses_and_with_the_token(
        scraper: Scraper) -> None:
    refused = httpx.get(scraper.allow.url + "/metrics")  # from 127.0.0.1
    assert refused.status_code == 403
    assert "METRICS_ALLOW" in refused.text and "127.0.0.1" in refused.text
    assert refused.headers["content-type"].startswith("text/plain")
    allowed = scraper.from_2.get(scraper.allow.url + "/metrics")
    assert allowed.status_code == 200
    assert allowed.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE turnpike_in_flight_requests gauge" in allowed.text
    # An address a proxy header claims is not trusted without a token.
    claimed = scraper.from_2.get(scraper.allow.url + "/metrics",
                                 headers={"X-Forwarded-For": "127.0.0.2"})
    assert claimed.status_code == 403 and "METRICS_TOKEN" in claimed.text

    url = scraper.token.url + "/metrics"
    missing = httpx.get(url)
    assert missing.status_code == 401 and "METRICS_TOKEN" in missing.text
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = httpx.get(url, headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert httpx.post(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 405
    # OpenMetrics for a scraper that asks for it.
    om = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}",
                                 "Accept": "application/openmetrics-text; version=1.0.0"})
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.rstrip().endswith("# EOF")


# --- Celery, upstream health, queue length ------------------------------------------------

CELERY_TASK = "billing.drain_usage_spool"


@pytest.fixture(scope="module")
def celery_counted(django_db_setup: Any, django_db_blocker: Any, metrics_dir: Path,
                   gateway_allow: Gateway, gateway_token: Gateway, open_fake: FakeUpstream,
                   tmp_path_factory: pytest.TempPathFactory) -> dict[Key, float]:
    """A Celery worker (its own process, the same metrics directory) runs one task that
    succeeds, one that fails and a background response; returns what they moved, as a
    gateway's scrape shows it once the worker has stopped."""
    from keys.services import key_create, tenant_get_or_create
    from portal.celery import app

    scraper = Scraper(gateway_allow, gateway_token)
    before = scraper.read()
    done = sample("turnpike_celery_tasks_total", task=CELERY_TASK, outcome="success")
    failed = sample("turnpike_celery_tasks_total", task=CELERY_TASK, outcome="failure")
    ran = requests_sample("responses/background", "bg-model", "bg", "2xx", "", "true")

    def outcomes() -> tuple[float, float, float]:
        now = scraper.read()
        return tuple(now.get(k, 0) - before.get(k, 0) for k in (done, failed, ran))

    with django_db_blocker.unblock():
        upstream_create(name="bg", kind="openai", base_url=open_fake.openai_url,
                        models=["bg-model"], api_keys=["sk-bg"])
        secret = key_create(tenant=tenant_get_or_create(name="bg")[0], name="bg").secret
        worker = start_celery_worker(gateway_env(PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)),
                                     tmp_path_factory.mktemp("celery") / "worker.log")
    try:
        queued = post(gateway_token, secret, "/responses",
                      {"model": "bg-model", "input": "hi", "background": True})
        assert queued.status_code == 200 and queued.json()["status"] == "queued", queued.text
        app.send_task(CELERY_TASK)
        app.send_task(CELERY_TASK, args=["unexpected", "arguments"])  # a TypeError
        wait_until(outcomes, (1.0, 1.0, 1.0), timeout=30)
    finally:
        worker.stop()
    after = scraper.read()
    scraper.from_2.close()
    return {k: round(v - before.get(k, 0), 9) for k, v in after.items()
            if v != before.get(k, 0)}


def test_celery_task_outcomes_from_a_worker_process_show_on_the_gateway(
        celery_counted: dict[Key, float]) -> None:
    counts = {k: v for k, v in celery_counted.items()
              if k[0] in ("turnpike_celery_tasks_total",
                          "turnpike_celery_task_duration_seconds_count")
              and dict(k[1])["task"] == CELERY_TASK}
    assert counts == {
        sample("turnpike_celery_tasks_total", task=CELERY_TASK, outcome="success"): 1,
        sample("turnpike_celery_tasks_total", task=CELERY_TASK, outcome="failure"): 1,
        sample("turnpike_celery_task_duration_seconds_count", task=CELERY_TASK): 2,
    }
    assert celery_counted[sample("turnpike_celery_task_duration_seconds_bucket",
                                 task=CELERY_TASK, le="+Inf")] == 2
    assert celery_counted[sample("turnpike_celery_tasks_total",
                                 task="gateway.tasks.run_background", outcome="success")] == 1


def test_a_background_responses_run_in_a_worker_counts_as_its_own_endpoint(
        celery_counted: dict[Key, float]) -> None:
    """Its POST was answered "queued" by the gateway; its run, in the worker, is counted
    with its attempt and tokens."""
    counted = {k: v for k, v in celery_counted.items() if k[0] in COUNTED}
    run = ("responses/background", "bg-model", "bg", "true")
    assert counted[requests_sample(*run[:3], "2xx", "", "true")] == 1
    assert counted[requests_sample("responses", "bg-model", "", "2xx", "", "false")] == 1
    assert counted[timing("turnpike_request_duration_seconds_count", *run)] == 1
    assert counted[sample("turnpike_upstream_attempts_total", upstream="bg", outcome="ok")] == 1
    assert counted[sample("turnpike_tokens_total", model="bg-model", upstream="bg",
                          kind="output")] > 0


def test_queue_length_and_upstream_health_are_read_at_scrape_time(
        scraper: Scraper, world: dict[str, Any]) -> None:
    from portal.celery import app

    queue = sample("turnpike_celery_queue_length", queue=QUEUE)
    client = sync_redis()
    assert client is not None
    try:
        assert scraper.read()[queue] == 0
        app.send_task(CELERY_TASK, queue=QUEUE)  # nobody consumes this queue
        assert scraper.read()[queue] == 1
    finally:
        client.delete(QUEUE)
    assert scraper.read()[queue] == 0

    up = sample("turnpike_upstream_up", upstream="fake")
    assert scraper.read()[up] == 1
    Upstream.objects.filter(name="fake").update(auto_disabled=True, health="unhealthy",
                                                health_failures=3)
    values = scraper.read(scraper.token)
    assert values[up] == 0
    assert values[sample("turnpike_upstream_probe_failures", upstream="fake")] == 3
    assert values[sample("turnpike_redis_up")] == 1
    assert values[sample("turnpike_redis_failure_mode", mode="closed")] == 1


# --- the dashboard and the alert rules ------------------------------------------------------

def test_every_metric_the_dashboard_and_the_rules_use_is_exposed(
        scraper: Scraper, world: dict[str, Any], open_fake: FakeUpstream,
        celery_counted: dict[Key, float]) -> None:
    """After traffic of every kind (and a worker's tasks), each name an expression uses is
    a sample name of the exposition (``_total``, ``_bucket``, ``_sum``, ``_count`` as the
    scraper stores them)."""
    secret = world["key"].secret
    upstream_create(name="cooling", kind="openai", base_url=open_fake.openai_url,
                    models=["cool-model"], api_keys=["sk-cooling"], priority=1)
    upstream_create(name="backup", kind="openai", base_url=open_fake.openai_url,
                    models=["cool-model"], api_keys=["sk-backup"])
    open_fake.script_key("sk-cooling", status=429, retry_after=60)
    limited = world["make_key"](rpm=1)
    for gateway in (scraper.allow, scraper.token):
        post(gateway, secret, "/chat/completions", chat_body("cool-model"))
        post(gateway, secret, "/responses", {"model": "gpt-4o-mini", "stream": True,
                                             "input": "hi [[fake cached=1 reasoning_tokens=2]]"})
        post(gateway, limited.secret, "/chat/completions", chat_body("gpt-4o-mini"))
    refusal = sample("turnpike_limiter_refusals_total", code="rate_limit_rpm")
    wait_until(lambda: refusal in scraper.read(), True)
    exposed = set()
    for gateway in (scraper.allow, scraper.token):
        exposed |= {name for name, _ in scraper.read(gateway)}
    used = {name for expr in dashboard_exprs() + rule_exprs()
            for name in METRIC_NAME.findall(expr)}
    assert len(used) > 20
    missing = sorted(used - exposed)
    assert not missing, f"used but not exposed: {missing}"
