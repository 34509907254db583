"""Background responses, end to end (issue 14): the official ``openai`` SDK -> Turnpike
(daphne, PostgreSQL, Redis) -> a real Celery worker process running the run -> the fake
upstream, over loopback; and once in the embedded mode (no Redis, no broker: the run is an
asyncio task of the serving process).

The fake upstream is told to stream slowly (``[[fake chunks=N delay=S]]``) so a run is
observably queued, then in progress, and can be cancelled or resumed mid-stream. Nothing is
waited for by sleeping: a test polls what it waits for (a status, a usage row, the
upstream's in-flight count) with a deadline.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from billing.models import ModelPrice, UsageLog
from billing.services import tenant_topup
from gateway.models import StoredResponse
from gateway.services import upstream_create
from gateway.stored import store
from gateway.stored.records import StoredRecord
from keys.services import key_create, tenant_get_or_create, tenant_update
from portal.infra import rediskeys
from portal.infra.redis import sync_redis
from tests.conftest import UPSTREAM_SECRET, gateway_env, wait_for_usage
from tests.gateway.matrix_cases import model_for
from tests.servers import CeleryWorker, start_celery_worker, start_gateway, stop

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]
needs_redis = pytest.mark.skipif(not os.environ.get("REDIS_URL"),
                                 reason="a Celery worker needs Redis as its broker")

MODEL = "gpt-4o-mini"
TERMINAL = ("completed", "failed", "incomplete", "cancelled")
# The runner's heartbeat lease in the worker: a killed worker's run is reaped, and its
# concurrency slot freed, seconds after it died.
WORKER_LEASE = "2"


def until(check: Callable[[], Any], timeout: float = 20.0, what: str = "it") -> Any:
    """Poll ``check`` until it returns something truthy (returned), or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def worker(django_db_setup: Any, django_db_blocker: Any,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryWorker]:
    """One real Celery worker for the module, its broker the test Redis."""
    if not os.environ.get("REDIS_URL"):
        pytest.skip("a Celery worker needs Redis as its broker")
    client = sync_redis()
    assert client is not None
    client.delete("celery")  # tasks an earlier, interrupted run left in the queue
    with django_db_blocker.unblock():
        # Snapshots read afresh on every run, as the test gateway does: a route table the
        # worker kept for its default second would still be the previous test's.
        env = gateway_env(GATEWAY_CONCURRENCY_LEASE_SECONDS=WORKER_LEASE,
                          GATEWAY_SNAPSHOT_TTL="0")
    started = start_celery_worker(env, tmp_path_factory.mktemp("celery") / "worker.log")
    yield started
    started.stop()


@pytest.fixture
def sdk(gateway: Any, upstream: Any, api_key: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=api_key.secret, max_retries=0)


def slow(chunks: int, delay: float, text: str = "hello") -> str:
    return f"[[fake chunks={chunks} delay={delay}]] {text}"


def tokens(count: int) -> str:
    return "".join(f"tok{i} " for i in range(count))


def wait_done(sdk: openai.OpenAI, response_id: str, timeout: float = 30.0) -> Any:
    return until(lambda: (lambda r: r if r.status in TERMINAL else None)(
        sdk.responses.retrieve(response_id)), timeout, f"{response_id} ending")


def wait_row(timeout: float = 15.0, **filters: Any) -> UsageLog:
    return until(lambda: UsageLog.objects.filter(**filters).first(), timeout, "the usage row")


def wait_stored(response_id: str, timeout: float = 15.0) -> StoredResponse:
    return until(lambda: StoredResponse.objects.filter(pk=response_id).first(), timeout,
                 "the stored response")


def upstream_bodies(fake_upstream: Any) -> list[dict[str, Any]]:
    return [r["body"] for r in fake_upstream.requests() if r["path"] == "/v1/responses"
            or r["path"] == "/v1/chat/completions"]


# --- through a Celery worker ------------------------------------------------------------------

@needs_redis
@pytest.mark.parametrize("kind", ["openai", "openai-chat"])
def test_queued_then_in_progress_then_completed_through_a_celery_worker(
        kind: str, worker: CeleryWorker, gateway: Any, fake_upstream: Any,
        api_key: Any) -> None:
    fake_upstream.clear()
    upstream_create(name=f"bg-{kind}", kind=kind, base_url=fake_upstream.openai_url,
                    models=[model_for(kind)], api_keys=[UPSTREAM_SECRET])
    sdk = openai.OpenAI(base_url=gateway.base_url, api_key=api_key.secret, max_retries=0)
    raw = sdk.responses.with_raw_response.create(
        model=model_for(kind), input=slow(6, 0.15), background=True, instructions="Be brief.")
    queued = raw.parse()
    assert queued.status == "queued" and queued.background is True and queued.output == []
    assert queued.id.startswith("resp_") and queued.instructions == "Be brief."
    seen = [queued.status]

    def ended() -> Any:
        current = sdk.responses.retrieve(queued.id)
        if current.status != seen[-1]:
            seen.append(current.status)
        return current if current.status in TERMINAL else None

    done = until(ended, 30, "the run ending")
    assert seen == ["queued", "in_progress", "completed"], seen
    assert done.id == queued.id and done.background is True
    assert done.output_text == tokens(6)
    # The run went through the pipeline: one usage row for the request, under the POST's
    # request id, written by the worker.
    row = wait_for_usage(raw.headers["x-request-id"])
    assert row.status_code == 200 and row.endpoint == "responses" and row.output_tokens > 0
    assert row.key_id == api_key.key.pk and row.upstream_id is not None
    # The upstream was asked for a stream and knew nothing of the background.
    (sent,) = upstream_bodies(fake_upstream)
    assert sent["stream"] is True and "background" not in sent
    # The record with its events landed in PostgreSQL.
    stored = wait_stored(queued.id)
    assert stored.status == "completed" and stored.background is True
    events = stored.events
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events[:3]] == ["response.created", "response.queued",
                                             "response.in_progress"]
    assert events[-1]["type"] == "response.completed"
    assert {e["response"]["id"] for e in events if "response" in e} == {queued.id}


@needs_redis
def test_a_background_run_gets_the_items_its_references_name(
        worker: CeleryWorker, gateway: Any, fake_upstream: Any, api_key: Any) -> None:
    """The worker runs the request with each item_reference the store resolved replaced by
    the stored item (a run never passes a reference through)."""
    fake_upstream.clear()
    upstream_create(name="bg-refs", kind="openai-chat", base_url=fake_upstream.openai_url,
                    models=[model_for("openai-chat")], api_keys=[UPSTREAM_SECRET])
    sdk = openai.OpenAI(base_url=gateway.base_url, api_key=api_key.secret, max_retries=0)
    first = sdk.responses.create(model=model_for("openai-chat"), input="first question")
    queued = sdk.responses.create(model=model_for("openai-chat"), background=True, input=[
        {"role": "user", "content": "first question"},
        *({"type": "item_reference", "id": item.id} for item in first.output),
        {"role": "user", "content": "second question"}])
    assert wait_done(sdk, queued.id).status == "completed"
    sent = upstream_bodies(fake_upstream)[-1]
    assert [(m["role"], m["content"]) for m in sent["messages"]] == [
        ("user", "first question"), ("assistant", first.output_text),
        ("user", "second question")]


@needs_redis
def test_a_background_stream_from_the_post_and_its_resume_with_starting_after(
        worker: CeleryWorker, sdk: openai.OpenAI) -> None:
    stream = sdk.responses.create(model=MODEL, input=slow(8, 0.1), background=True,
                                  stream=True)
    first: list[Any] = []
    for event in stream:
        first.append(event)
        if event.type == "response.output_text.delta" and event.delta == "tok2 ":
            break
    stream.close()  # the client leaves; the run goes on
    assert [e.type for e in first[:3]] == ["response.created", "response.queued",
                                           "response.in_progress"]
    assert first[0].response.status == "queued"
    response_id = first[0].response.id
    last = first[-1].sequence_number
    rest = list(sdk.responses.retrieve(response_id, stream=True, starting_after=last))
    assert rest[0].sequence_number == last + 1
    numbers = [e.sequence_number for e in first + rest]
    assert numbers == list(range(len(numbers)))  # nothing lost, nothing twice
    assert rest[-1].type == "response.completed"
    text = "".join(e.delta for e in first + rest if e.type == "response.output_text.delta")
    assert text == tokens(8) == rest[-1].response.output_text
    # Replayed once it ended: only what comes after the cursor.
    again = list(sdk.responses.retrieve(response_id, stream=True, starting_after=last))
    assert [e.sequence_number for e in again] == [e.sequence_number for e in rest]
    assert list(sdk.responses.retrieve(response_id, stream=True,
                                       starting_after=rest[-1].sequence_number)) == []


@needs_redis
def test_cancel_mid_stream_aborts_the_upstream_and_charges_what_was_produced(
        worker: CeleryWorker, sdk: openai.OpenAI, fake_upstream: Any, api_key: Any) -> None:
    ModelPrice.objects.create(model=MODEL, input_per_million=Decimal("1000"),
                              output_per_million=Decimal("1000"))
    tenant_topup(tenant=api_key.key.tenant, amount=Decimal("100"))
    fake_upstream.clear()
    stream = sdk.responses.create(model=MODEL, input=slow(200, 0.1), background=True,
                                  stream=True)
    deltas = []
    response_id = ""
    for event in stream:
        if event.type == "response.created":
            response_id = event.response.id
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
            if len(deltas) == 3:
                break
    assert fake_upstream.stats()["inflight"] == 1
    cancelled = sdk.responses.cancel(response_id)
    assert cancelled.status == "cancelled" and cancelled.id == response_id
    # The stream that was left open ends with the cancellation.
    tail = [e for e in stream]
    assert tail[-1].type == "response.cancelled"
    # (an event type the SDK does not know: it keeps it as plain data)
    assert tail[-1].response["status"] == "cancelled"
    # The upstream request was aborted (200 chunks at 0.1 s would take 20 s).
    until(lambda: fake_upstream.stats()["inflight"] == 0, 5, "the upstream request ending")
    # Charged for what was produced: counted (the upstream never reported usage).
    row = wait_row(key_id=api_key.key.pk, endpoint="responses")
    assert row.error_code == "cancelled" and row.estimated
    assert 3 <= row.output_tokens < 400 and row.cost > 0
    produced = cancelled.output_text
    assert produced.startswith("tok0 tok1 tok2 ") and len(produced) < len(tokens(200))
    # Idempotent: cancelling again returns the same cancelled response.
    again = sdk.responses.cancel(response_id)
    assert again.status == "cancelled" and again.output_text == produced
    assert sdk.responses.retrieve(response_id).status == "cancelled"
    stored = wait_stored(response_id)
    assert stored.status == "cancelled" and stored.events[-1]["type"] == "response.cancelled"


@needs_redis
def test_cancel_a_queued_response_before_any_worker_takes_it(
        worker: CeleryWorker, sdk: openai.OpenAI, fake_upstream: Any) -> None:
    worker.stop()  # nobody takes the task: the response stays queued
    try:
        queued = sdk.responses.create(model=MODEL, input="hi", background=True)
        assert sdk.responses.retrieve(queued.id).status == "queued"
        cancelled = sdk.responses.cancel(queued.id)
        assert cancelled.status == "cancelled" and cancelled.output == []
    finally:
        fake_upstream.clear()
        worker.start()
    # The worker then takes the task, finds it cancelled and only gives the slot back.
    row = wait_row(error_code="cancelled", endpoint="responses")
    assert row.cost == 0 and row.output_tokens == 0
    assert upstream_bodies(fake_upstream) == []
    assert sdk.responses.retrieve(queued.id).status == "cancelled"


@needs_redis
def test_limits_apply_to_background_runs(worker: CeleryWorker, gateway: Any, upstream: Any,
                                         make_key: Any) -> None:
    made = make_key(concurrency=1)
    sdk = openai.OpenAI(base_url=gateway.base_url, api_key=made.secret, max_retries=0)
    running = sdk.responses.create(model=MODEL, input=slow(10, 0.1), background=True)
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.responses.create(model=MODEL, input="hi", background=True)
    assert refused.value.code == "concurrent_limit"
    with pytest.raises(openai.RateLimitError):  # a plain request is refused the same
        sdk.responses.create(model=MODEL, input="hi")
    assert wait_done(sdk, running.id).status == "completed"
    # The slot came back when the run ended: the next one is admitted.
    again = sdk.responses.create(model=MODEL, input="hi", background=True)
    assert wait_done(sdk, again.id).output_text == tokens(3)


@needs_redis
def test_another_tenants_id_is_404_on_cancel_and_stream(worker: CeleryWorker, gateway: Any,
                                                       sdk: openai.OpenAI) -> None:
    mine = sdk.responses.create(model=MODEL, input="hi", background=True)
    plain = sdk.responses.create(model=MODEL, input="hi")
    other = tenant_get_or_create(name="other")[0]
    theirs = openai.OpenAI(base_url=gateway.base_url, max_retries=0,
                           api_key=key_create(tenant=other, name="k").secret)
    for response_id in (mine.id, "resp_never_was"):
        with pytest.raises(openai.NotFoundError) as lost:
            theirs.responses.cancel(response_id)
        assert lost.value.body["message"] == f"Response with id '{response_id}' not found."
        with pytest.raises(openai.NotFoundError):
            list(theirs.responses.retrieve(response_id, stream=True))
    # Not a background response: cancel and stream are refused.
    with pytest.raises(openai.BadRequestError):
        sdk.responses.cancel(plain.id)
    with pytest.raises(openai.BadRequestError):
        list(sdk.responses.retrieve(plain.id, stream=True))
    assert wait_done(sdk, mine.id).status == "completed"
    # The owner still cancels idempotently: an ended response comes back as it is, under
    # every path prefix.
    assert sdk.responses.cancel(mine.id).status == "completed"
    for path in ("/codex/v1", "/codex", ""):
        answer = httpx.post(f"{gateway.url}{path}/responses/{mine.id}/cancel",
                            headers={"Authorization": f"Bearer {sdk.api_key}"})
        assert answer.status_code == 200 and answer.json()["status"] == "completed"


@needs_redis
def test_deleting_a_running_background_response_cancels_it(
        worker: CeleryWorker, gateway: Any, sdk: openai.OpenAI, fake_upstream: Any,
        api_key: Any) -> None:
    running = sdk.responses.create(model=MODEL, input=slow(200, 0.1), background=True)
    until(lambda: sdk.responses.retrieve(running.id).status == "in_progress", 10,
          "the run starting")
    sdk.responses.delete(running.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(running.id)
    until(lambda: fake_upstream.stats()["inflight"] == 0, 5, "the upstream request ending")
    assert wait_row(key_id=api_key.key.pk, endpoint="responses").error_code == "cancelled"
    client = sync_redis()
    assert client is not None
    until(lambda: client.hget(rediskeys.background_run(running.id), "status") == b"cancelled", 5,
          "the run ending")
    # Its final record was staged (the staged copy has its events), and deleted again by
    # the writer (the tombstone).
    until(lambda: (lambda doc: doc is not None and StoredRecord.decode(doc).events)(
        client.get(store.doc_key(running.id))), 5, "the final record being staged")
    until(lambda: httpx.get(gateway.url + "/_gateway/status").json()["store_journal"] == 0,
          10, "the store journal draining")
    assert not StoredResponse.objects.filter(pk=running.id).exists()


def test_background_needs_storage(gateway: Any, sdk: openai.OpenAI, api_key: Any,
                                  make_key: Any) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(model=MODEL, input="hi", background=True, store=False)
    assert refused.value.param == "store"
    tenant_update(tenant=api_key.key.tenant, response_storage="off")
    off = openai.OpenAI(base_url=gateway.base_url, api_key=make_key().secret, max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        off.responses.create(model=MODEL, input="hi", background=True)
    assert refused.value.code == "response_storage_disabled"
    assert not StoredResponse.objects.exists() and not UsageLog.objects.filter(
        status_code=200).exists()


@needs_redis
@pytest.mark.filterwarnings("ignore::celery.exceptions.AlwaysEagerIgnored")  # meant: a real task
def test_a_run_whose_worker_died_is_failed_and_its_slot_freed(
        worker: CeleryWorker, gateway: Any, upstream: Any, make_key: Any,
        fake_upstream: Any) -> None:
    from portal.celery import app

    made = make_key(concurrency=1)
    sdk = openai.OpenAI(base_url=gateway.base_url, api_key=made.secret, max_retries=0)
    stream = sdk.responses.create(model=MODEL, input=slow(200, 0.1), background=True,
                                  stream=True)
    seen = 0
    response_id = ""
    for event in stream:
        if event.type == "response.created":
            response_id = event.response.id
        seen += event.type == "response.output_text.delta"
        if seen == 15:  # 1.5 s in: the worker has renewed the slot's lease by now
            break
    stream.close()
    worker.kill()
    try:
        assert sdk.responses.retrieve(response_id).status == "in_progress"
    finally:
        worker.start()
    fake_upstream.clear()

    def reaped() -> Any:
        app.send_task("gateway.reap_background")  # the beat task, run by the worker
        current = sdk.responses.retrieve(response_id)
        return current if current.status != "in_progress" else None

    failed = until(reaped, 20, "the reaper failing the run")
    assert failed.status == "failed" and failed.error.code == "background_worker_lost"
    assert failed.output_text.startswith(tokens(15))
    # The dead worker's slot expired by itself: the key can run again.
    until(lambda: httpx.post(gateway.base_url + "/responses", json={
        "model": MODEL, "input": "hi"}, headers={"Authorization": f"Bearer {made.secret}"}
    ).status_code == 200, 10, "the slot coming back")
    assert wait_stored(response_id).events[-1]["type"] == "response.failed"


# --- embedded: no Redis, no broker --------------------------------------------------------------

@pytest.fixture
def embedded(django_db_setup: Any, django_db_blocker: Any, tmp_path: Path) -> Iterator[Any]:
    """A gateway without Redis: CELERY_TASK_ALWAYS_EAGER, the run an asyncio task in it."""
    with django_db_blocker.unblock():
        server = start_gateway(gateway_env(REDIS_URL="", GATEWAY_SNAPSHOT_TTL="0"),
                               log=tmp_path / "embedded.log")
    yield server
    try:
        until(lambda: (lambda s: s["in_flight"] == 0 and not s["background_runs"]
                       and not s["usage_pending"] and not s["store_pending"])(
            httpx.get(server.url + "/_gateway/status").json()), 15, "the gateway settling")
    finally:
        stop(server.proc)


def test_embedded_mode_runs_in_the_serving_process(embedded: Any, upstream: Any,
                                                   api_key: Any, fake_upstream: Any) -> None:
    sdk = openai.OpenAI(base_url=embedded.base_url, api_key=api_key.secret, max_retries=0)
    queued = sdk.responses.create(model=MODEL, input=slow(6, 0.1), background=True)
    assert queued.status == "queued"
    events = list(sdk.responses.retrieve(queued.id, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"
    assert wait_done(sdk, queued.id).output_text == tokens(6)
    # Cancel mid-run in the same process.
    fake_upstream.clear()
    running = sdk.responses.create(model=MODEL, input=slow(200, 0.1), background=True)
    stream = sdk.responses.retrieve(running.id, stream=True, starting_after=2)
    for event in stream:
        if event.type == "response.output_text.delta":
            break
    assert sdk.responses.cancel(running.id).status == "cancelled"
    assert [e for e in stream][-1].type == "response.cancelled"
    until(lambda: fake_upstream.stats()["inflight"] == 0, 5, "the upstream request ending")
    row = wait_row(key_id=api_key.key.pk, error_code="cancelled")
    assert row.estimated and row.output_tokens >= 1
    assert wait_stored(running.id).status == "cancelled"
