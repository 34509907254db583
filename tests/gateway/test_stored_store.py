"""``gateway.stored.store`` in process, against the real PostgreSQL and Redis: staging, reads
(the staged copy first, then the database), deletes that race the writer, a writer that dies
holding a batch, links to rows deleted meanwhile, and the embedded default without Redis
(an in-process pending map and the writer's queue)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.test import override_settings

from gateway.models import StoredResponse
from gateway.stored import store
from gateway.stored.records import StoredRecord, input_items
from keys.models import ApiKey, Tenant
from keys.services import key_create
from portal.infra.redis import sync_redis

pytestmark = pytest.mark.django_db(transaction=True)
in_thread = partial(sync_to_async, thread_sensitive=False)  # the loop's worker threads

# The writer's own tick never comes during a test: the test drains when it means to. And
# its own Redis keys (under the run's prefix, so the cleanup still finds them): a gateway
# process another test module started shares the run's prefix, and its writer would drain
# this test's journal.
ISOLATED = settings.GATEWAY_REDIS_PREFIX + "store-tests:"
QUIET = override_settings(GATEWAY_USAGE_FLUSH_INTERVAL=3600, GATEWAY_REDIS_PREFIX=ISOLATED)
# The embedded default: no Redis at all.
NO_REDIS = override_settings(REDIS_URL=None, GATEWAY_USAGE_FLUSH_INTERVAL=3600,
                             GATEWAY_REDIS_PREFIX=ISOLATED)


def record(rid: str, tenant: Tenant, key: ApiKey | None = None, *,
           ancestors: list[str] | None = None, days: float = 30) -> StoredRecord:
    now = float(int(time.time()))  # whole seconds, as response objects have them
    return StoredRecord(
        id=rid, tenant_id=tenant.pk, key_id=key.pk if key else None, created_at=now,
        expires_at=now + days * 86400, status="completed", model="m",
        previous_response_id=(ancestors or [None])[-1], ancestors=ancestors or [],
        input_items=input_items(f"question {rid}"),
        response={"id": rid, "object": "response", "status": "completed",
                  "output": [{"id": f"msg_{rid}", "type": "message", "role": "assistant",
                              "content": [{"type": "output_text", "text": f"answer {rid}"}]}]})


@pytest.fixture
def acme() -> tuple[Tenant, ApiKey]:
    tenant = Tenant.objects.create(name="acme")
    return tenant, key_create(tenant=tenant, name="k").key


@pytest.fixture(autouse=True)
async def _close_worker_connections() -> AsyncIterator[None]:
    """The store reads and writes in the loop's worker threads, each with its own database
    connection: close them all after the test (one job per thread, held at a barrier so
    each thread takes exactly one), or the test database cannot be dropped at the end."""
    yield
    loop = asyncio.get_running_loop()
    executor = getattr(loop, "_default_executor", None)
    threads = len(getattr(executor, "_threads", ()))
    if not threads:
        return
    barrier = threading.Barrier(threads)

    def close() -> None:
        from django.db import connections

        connections.close_all()
        barrier.wait(timeout=5)

    await asyncio.gather(*(loop.run_in_executor(None, close) for _ in range(threads)))


def ids_in_db() -> set[str]:
    return set(StoredResponse.objects.values_list("id", flat=True))


def test_a_reference_keeps_its_id_when_replayed() -> None:
    """A later turn replays an item without its id, but a reference is only its id: an
    expansion that carried one on without it would name nothing."""
    from gateway.stored.records import history_item

    assert history_item({"type": "item_reference", "id": "msg_1"}) == {
        "type": "item_reference", "id": "msg_1"}
    assert history_item({"type": "message", "id": "msg_1", "role": "user"}) == {
        "type": "message", "role": "user"}


def test_input_items_get_types_ids_and_typed_content() -> None:
    items = input_items([{"role": "user", "content": "hi"},
                         {"type": "message", "role": "assistant", "content": "yo", "id": "m1"},
                         {"type": "function_call_output", "call_id": "c", "output": "x"}])
    assert items[0]["id"].startswith("msg_") and items[0]["type"] == "message"
    assert items[0]["content"] == [{"type": "input_text", "text": "hi"}]
    assert items[1]["id"] == "m1"
    assert items[1]["content"] == [{"type": "output_text", "text": "yo", "annotations": []}]
    assert items[2]["id"].startswith("fco_")
    assert input_items("plain")[0]["role"] == "user"


@QUIET
async def test_staged_then_written_reads_the_same_and_chains(acme: Any) -> None:
    tenant, key = acme
    first, second = record("resp_a", tenant, key), record("resp_b", tenant, key,
                                                          ancestors=["resp_a"])
    await store.stage(first, pin=f"{tenant.pk}:7:9")
    await store.stage(second)
    found, pin = await store.lookup("resp_a", tenant.pk)
    assert found == first and pin == f"{tenant.pk}:7:9"
    assert await store.chain(second) == [first]
    assert await in_thread(store.drain_journal)() == 2
    assert await in_thread(ids_in_db)() == {"resp_a", "resp_b"}
    history = await store.history(second)  # from the staged items
    assert history == [*first.history(), *second.history()]
    assert history[0] == {"type": "message", "role": "user", "status": "completed",
                          "content": [{"type": "input_text", "text": "question resp_a"}]}
    sync_redis().delete(*(key(i) for key in (store.doc_key, store.items_key)  # type: ignore[union-attr]
                          for i in ("resp_a", "resp_b")))
    from_db, _ = await store.lookup("resp_a", tenant.pk)
    assert from_db == first  # the row reads back as the record it was
    assert await store.chain(second) == [first]
    assert await store.history(second) == history  # from the database
    other = await in_thread(Tenant.objects.create)(name="globex")
    assert await store.lookup("resp_a", other.pk) == (None, None)
    await store.close()


@QUIET
async def test_a_delete_before_the_write_wins(acme: Any) -> None:
    tenant, key = acme
    staged = record("resp_gone", tenant, key)
    await store.stage(staged)
    await store.delete(staged)
    assert await store.lookup("resp_gone", tenant.pk) == (None, None)
    assert await in_thread(store.drain_journal)() == 1  # inserted, then deleted again
    assert await in_thread(ids_in_db)() == set()
    await store.close()


@QUIET
async def test_a_writer_that_died_holding_a_batch_loses_nothing(acme: Any) -> None:
    tenant, key = acme
    for n in range(3):
        await store.stage(record(f"resp_{n}", tenant, key))
    client = sync_redis()
    _, claimed = store.JOURNAL.claim(client, 2)  # a writer takes two and dies
    assert len(claimed) == 2
    assert await in_thread(store.drain_journal)() == 1  # its claim is not over yet
    with override_settings(GATEWAY_USAGE_CLAIM_SECONDS=0):
        assert await in_thread(store.drain_journal)() == 2
    assert await in_thread(ids_in_db)() == {"resp_0", "resp_1", "resp_2"}
    assert store.JOURNAL.length(client) == 0
    await store.close()


@QUIET
async def test_links_to_rows_deleted_meanwhile(acme: Any) -> None:
    tenant, key = acme
    doomed = await in_thread(Tenant.objects.create)(name="doomed")
    await store.stage(record("resp_keyless", tenant, key))
    await store.stage(record("resp_orphan", doomed))
    await in_thread(key.delete)()
    await in_thread(doomed.delete)()
    assert await in_thread(store.drain_journal)() == 1
    row = await in_thread(StoredResponse.objects.get)(pk="resp_keyless")
    assert row.key_id is None and row.tenant_id == tenant.pk
    assert await in_thread(ids_in_db)() == {"resp_keyless"}
    await store.close()


@NO_REDIS
async def test_without_redis_the_process_keeps_what_it_staged(acme: Any) -> None:
    tenant, key = acme
    first = record("resp_x", tenant, key)
    second = record("resp_y", tenant, key, ancestors=["resp_x"])
    await store.stage(first, pin=f"{tenant.pk}:1:2")
    await store.stage(second)
    assert store.pending() == 2
    assert await store.lookup("resp_x", tenant.pk) == (first, f"{tenant.pk}:1:2")
    assert await store.chain(second) == [first]
    await store.writer().flush()
    assert store.pending() == 0 and not store.local.pending
    assert await in_thread(ids_in_db)() == {"resp_x", "resp_y"}
    assert (await store.lookup("resp_x", tenant.pk))[0] == first  # now from the database
    await store.delete(first)
    assert await store.lookup("resp_x", tenant.pk) == (None, None)
    assert await in_thread(ids_in_db)() == {"resp_y"}
    await store.close()


@QUIET
async def test_expired_is_gone_for_reads_before_the_task_runs(acme: Any) -> None:
    tenant, key = acme
    old = record("resp_old", tenant, key, days=-1)
    await store.stage(old)
    assert await store.lookup("resp_old", tenant.pk) == (None, None)
    await store.close()


@QUIET
async def test_a_nul_character_does_not_lose_the_response(acme: Any) -> None:
    """PostgreSQL's jsonb refuses NUL in a string: the row keeps U+FFFD in its place."""
    tenant, key = acme
    odd = record("resp_nul", tenant, key)
    odd.response["output"][0]["content"][0]["text"] = "before\x00after"
    await store.stage(odd)
    assert await in_thread(store.drain_journal)() == 1
    row = await in_thread(StoredResponse.objects.get)(pk="resp_nul")
    assert row.response["output"][0]["content"][0]["text"] == "before\ufffdafter"
    await store.close()


@QUIET
async def test_the_journal_under_the_names_before_the_hash_tags_is_drained(acme: Any) -> None:
    """Responses an earlier release journalled (``store:journal``, before the hash tags
    Redis Cluster needs) are written by this one: an upgrade strands none."""
    from portal.infra import rediskeys

    tenant, key = acme
    journal, _claims, _claim = rediskeys.legacy_store_journal("store")
    client = sync_redis()
    assert client is not None
    client.rpush(journal, record("resp_old_1", tenant, key).encode(),
                 record("resp_old_2", tenant, key).encode())
    assert await in_thread(store.drain_journal)() == 2
    assert await in_thread(ids_in_db)() == {"resp_old_1", "resp_old_2"}
    assert client.llen(journal) == 0


# --- item_reference: the items of stored responses, by id ---------------------------------

def items_of(found: dict[str, Any]) -> dict[str, str]:
    """{item id: the id of the response it was found in}."""
    return {item_id: owner.id for item_id, (item, owner) in found.items()
            if item["id"] == item_id}


@QUIET
async def test_items_are_found_staged_then_in_the_database_for_their_tenant_only(
        acme: Any) -> None:
    """Right after staging (the Redis index, before any writer ran), then from the database
    once the staged copies are gone (the GIN index on PostgreSQL). Another tenant finds
    nothing, not even an item of the same id it stored itself; a deleted response's items
    are gone; an input item_reference is not an item of the response that sent it."""
    tenant, key = acme
    first = record("resp_i1", tenant, key)
    question = first.input_items[0]["id"]
    second = record("resp_i2", tenant, key)
    second.input_items = input_items([{"type": "item_reference", "id": "msg_resp_i1"},
                                      {"role": "user", "content": "and then?"}])
    other = await in_thread(Tenant.objects.create)(name="globex")
    theirs = record("resp_theirs", other)
    theirs.response["output"][0]["id"] = "msg_resp_i2"  # an id both tenants hold
    for staged in (first, second, theirs):
        await store.stage(staged)
    wanted = ["msg_resp_i1", question, "msg_resp_i2", "msg_nobody"]
    want = {"msg_resp_i1": "resp_i1", question: "resp_i1", "msg_resp_i2": "resp_i2"}
    assert items_of(await store.find_items(wanted, tenant.pk)) == want
    found = await store.find_items(["msg_resp_i1"], tenant.pk)
    assert found["msg_resp_i1"][0]["content"][0]["text"] == "answer resp_i1"
    assert items_of(await store.find_items(["msg_resp_i2"], other.pk)) == {
        "msg_resp_i2": "resp_theirs"}

    assert await in_thread(store.drain_journal)() == 3
    client = sync_redis()
    assert client is not None
    staged_keys = [k for k in client.scan_iter(match=f"{ISOLATED}*") if b"}item:" in k or
                   b"resp:" in k]
    assert any(b"}item:" in k for k in staged_keys)
    client.delete(*staged_keys)
    assert items_of(await store.find_items(wanted, tenant.pk)) == want  # the database
    assert items_of(await store.find_items(wanted, other.pk)) == {"msg_resp_i2": "resp_theirs"}

    await store.delete(first)
    assert items_of(await store.find_items(wanted, tenant.pk)) == {"msg_resp_i2": "resp_i2"}
    await store.close()


@NO_REDIS
async def test_without_redis_items_are_found_pending_then_written(acme: Any) -> None:
    tenant, key = acme
    staged = record("resp_local", tenant, key)
    await store.stage(staged)
    assert items_of(await store.find_items(["msg_resp_local"], tenant.pk)) == {
        "msg_resp_local": "resp_local"}
    await store.writer().flush()
    assert not store.local.pending
    assert items_of(await store.find_items(["msg_resp_local"], tenant.pk)) == {
        "msg_resp_local": "resp_local"}
    await store.close()
