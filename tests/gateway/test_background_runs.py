"""The shared state of background runs (``gateway.stored.runs``) and the reaper, in process
against the real Redis: status changes are atomic and name the statuses they leave (so the
runner, a cancel and the reaper never both end a run), events are numbered and read after a
cursor, a run whose lease ran out is failed with the output it had, and the slots of runs
still waiting for a worker are renewed."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import pytest
from django.test import override_settings

from gateway.stored import background, store
from gateway.stored import runs as runstate
from gateway.stored.records import StoredRecord
from keys.limits import lease_ms
from portal.infra import rediskeys
from portal.infra.redis import sync_redis

pytestmark = pytest.mark.skipif(not os.environ.get("REDIS_URL"),
                                reason="the shared state of runs is Redis")
# The store's writer never ticks during a test (nothing here reads the database).
QUIET = override_settings(GATEWAY_USAGE_FLUSH_INTERVAL=3600)
ADMISSION = {"key_id": 7, "tenant_id": 3, "request_id": "req_bg", "rpm": 0, "rpd": 0,
             "tpm": 0, "concurrency": 1, "reserve": 0, "key_quota": False, "commit": True,
             "session": None}


def queued(rid: str) -> StoredRecord:
    now = float(int(time.time()))
    return StoredRecord(id=rid, tenant_id=3, key_id=7, created_at=now,
                        expires_at=now + 86400, status="queued", background=True,
                        response={"id": rid, "object": "response", "status": "queued",
                                  "output": [], "background": True})


def first_events(record: StoredRecord) -> list[dict[str, Any]]:
    return [background.lifecycle("response.created", 0, record.response),
            background.lifecycle("response.queued", 1, record.response)]


def delta(seq: int, text: str) -> dict[str, Any]:
    return {"type": "response.output_text.delta", "sequence_number": seq, "output_index": 0,
            "content_index": 0, "delta": text}


@QUIET
async def test_status_changes_are_atomic_and_events_are_numbered() -> None:
    state = runstate.RedisRuns()
    record = queued("resp_atomic")
    await state.create(record, first_events(record), runstate.now_ms() + 60_000, ADMISSION)
    started = await state.move(record.id, ("queued",), "in_progress",
                               deadline_ms=runstate.now_ms() + 60_000)
    assert started == 1  # the last sequence number so far
    # A second start (a task delivered twice) or a cancel of the queued run finds it gone.
    assert await state.move(record.id, ("queued",), "in_progress") is None
    assert await background._end_unstarted(record, "cancelled", None, state=state) is False
    assert await state.append(record.id, 2, [delta(2, "tok0 "), delta(3, "tok1 ")])
    assert await state.beat(record.id, runstate.now_ms() + 60_000) == "run"
    assert await state.cancel(record.id) == "in_progress"
    assert await state.beat(record.id, runstate.now_ms() + 60_000) == "cancel"
    final = dataclasses.replace(
        record, status="cancelled", response={**record.response, "status": "cancelled"})
    assert await background.end(state, final, ("in_progress",))
    assert not await background.end(state, final, ("in_progress",))  # once only
    assert not await state.append(record.id, 5, [delta(5, "late")])  # an ended run takes none
    assert await state.beat(record.id, runstate.now_ms()) == "stop"
    status, events = await state.read(record.id, -1)
    assert status == "cancelled" and events is not None
    assert [e["sequence_number"] for e in events] == [0, 1, 2, 3, 4]
    assert events[-1]["type"] == "response.cancelled"
    assert events[-1]["response"]["status"] == "cancelled"
    assert (await state.read(record.id, 2))[1] == events[3:]  # starting_after=2
    assert (await state.read(record.id, 4))[1] == []
    assert (await state.read("resp_never", -1)) == ("", None)
    # The final record was staged with every event, for the database.
    client = sync_redis()
    assert client is not None
    staged = StoredRecord.decode(client.get(store.doc_key(record.id)))
    assert staged.status == "cancelled" and staged.events == events
    await store.close()


@QUIET
async def test_the_reaper_fails_silent_runs_and_renews_waiting_slots() -> None:
    state = runstate.RedisRuns()
    client = sync_redis()
    assert client is not None
    dead, waiting, alive = queued("resp_dead"), queued("resp_waiting"), queued("resp_alive")
    for record in (dead, waiting, alive):
        await state.create(record, first_events(record), runstate.now_ms() + 60_000,
                           {**ADMISSION, "request_id": record.id})
    for record in (dead, alive):
        await state.move(record.id, ("queued",), "in_progress",
                         deadline_ms=runstate.now_ms() + 60_000)
        await state.append(record.id, 2, [
            {"type": "response.output_item.added", "sequence_number": 2, "output_index": 0,
             "item": {"type": "message", "id": "msg_1", "status": "in_progress",
                      "role": "assistant", "content": []}},
            {"type": "response.content_part.added", "sequence_number": 3, "output_index": 0,
             "content_index": 0, "part": {"type": "output_text", "text": ""}},
            delta(4, "tok0 ")])
    # The dead run's worker stopped renewing its lease a while ago.
    client.zadd(runstate.leases_key(), {dead.id: runstate.now_ms() - 1000})
    # The waiting run holds a concurrency slot whose lease is about to run out.
    conc = rediskeys.concurrency(ADMISSION["key_id"], tenant=ADMISSION["tenant_id"])
    client.zadd(conc, {waiting.id: runstate.now_ms() + 500})

    assert await background.reap() == 1
    status, events = await state.read(dead.id, -1)
    assert status == "failed" and events is not None
    assert events[-1]["type"] == "response.failed"
    failed = events[-1]["response"]
    assert failed["error"]["code"] == "background_worker_lost"
    assert failed["output"][0]["content"][0]["text"] == "tok0 "
    assert failed["output"][0]["status"] == "incomplete"
    assert await state.status(alive.id) == "in_progress"  # its lease is live
    assert await state.status(waiting.id) == "queued"
    assert client.zscore(conc, waiting.id) >= runstate.now_ms() + lease_ms() - 5000
    assert client.zscore(runstate.leases_key(), dead.id) is None
    # A run whose heartbeat came back just before the reaper acted is left alone.
    client.zadd(runstate.leases_key(), {alive.id: runstate.now_ms() + 60_000})
    assert await background.reap_one(alive.id) is False
    # One no worker started in time is failed too.
    client.zadd(runstate.leases_key(), {waiting.id: runstate.now_ms() - 1})
    assert await background.reap() == 1
    status, events = await state.read(waiting.id, -1)
    assert status == "failed" and events is not None
    assert events[-1]["response"]["error"]["code"] == "background_not_started"
    await store.close()


@QUIET
async def test_a_stream_replays_from_the_record_once_the_live_log_is_gone() -> None:
    from gateway.context import RelayContext

    state = runstate.RedisRuns()
    record = queued("resp_old")
    await state.create(record, first_events(record), runstate.now_ms() + 60_000, ADMISSION)
    await state.move(record.id, ("queued",), "in_progress")
    await state.append(record.id, 2, [delta(2, "tok0 "), delta(3, "tok1 ")])
    final = dataclasses.replace(record, status="completed",
                                response={**record.response, "status": "completed"})
    assert await background.end(state, final, ("in_progress",))
    client = sync_redis()
    assert client is not None
    client.delete(runstate.state_key(record.id), runstate.events_key(record.id))
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    ctx = RelayContext.start({"headers": [], "client": None}, "responses/retrieve")
    await background.follow(ctx, record, 2, send)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    body = b"".join(m.get("body", b"") for m in sent[1:])
    assert body.count(b"\n\n") == 2  # tok1's delta and the terminal event, nothing before
    assert b'"sequence_number":3' in body and b"event: response.completed" in body
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    await store.close()
