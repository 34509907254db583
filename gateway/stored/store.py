"""Stored responses: stage, read, delete, and write them to PostgreSQL off the response path.

    stage()     before the answer's last bytes (next to the settlement): with Redis, one
                script SETs the document under ``resp:{id}`` (read-your-writes for every
                process, kept GATEWAY_STORE_CACHE_SECONDS), appends it to the store journal
                and, for a response an upstream keeps itself, SETs the pin ``rpin:{id}``;
                without Redis (the embedded default) an in-process pending map and the
                writer's queue. Never raises: a failure to stage is logged, the answer goes on.
    lookup()    a response and its pin: the staged copy first (one MGET with the tombstone
                and the pin), then the database; another tenant's, a deleted or an expired
                response is None, the same as one that never existed.
    find_items()  the items an ``item_reference`` names, by their ids, and the response each
                belongs to: the staged index ``item:{tenant}:{id}`` (written with the
                document), this process's pending records, then the database (a GIN index
                over the item ids of every row); each response read with ``lookup``, so the
                same rules hold.
    chain()     a response's ancestors, oldest first: staged copies (one MGET), the rest in
                one query (``id IN ancestors``).
    delete()    tombstone + drop the staged copy and the pin, then the row.

The writer (``StoreWriter``, a ``portal.infra.journal.BatchWriter``) claims journal batches like
the usage writer does (crash-safe: a writer that dies holding a batch has it put back),
inserts them (a row written twice is stored once: ON CONFLICT DO NOTHING on the id), and
deletes again any row whose tombstone appeared meanwhile, so a DELETE that races the writer
never leaves the response behind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import orjson
from django.conf import settings

from gateway.stored.records import ROW_FIELDS, StoredRecord, splice
from portal.infra import rediskeys
from portal.infra.journal import PerLoop, RedisJournal, SinkWriter
from portal.infra.redis import fast_redis

log = logging.getLogger(__name__)

# How long a tombstone outlives a DELETE: longer than a row can wait in the journal.
TOMBSTONE_SECONDS = 7 * 86400


doc_key = rediskeys.stored_response
items_key = rediskeys.stored_items
item_key = rediskeys.stored_item
tombstone_key = rediskeys.stored_deleted
pin_key = rediskeys.response_pin
journal_key = rediskeys.store_journal
# A zset of the ids deleted in the last TOMBSTONE_SECONDS (score: when), read whole by the
# writer after each batch: deletes are rare, so this costs nothing per response.
deletions_key = rediskeys.store_deletions


JOURNAL = RedisJournal("store", journal_key)

# KEYS: 1 the document, 2 the journal, 3 the pin, 4 the turn's history items, 5… the index
# entry of each of its items. ARGV: 1 the document, 2 its TTL, 3 the pin ("" for none), 4 the
# pin's TTL, 5 the history items, 6 the response's id.
_STAGE_LUA = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SET', KEYS[4], ARGV[5], 'EX', ARGV[2])
for i = 5, #KEYS do redis.call('SET', KEYS[i], ARGV[6], 'EX', ARGV[2]) end
redis.call('RPUSH', KEYS[2], ARGV[1])
if ARGV[3] ~= '' then redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[4]) end
return 1
"""
# KEYS: 1 the tombstone, 2 the document, 3 the pin, 4 the history items, 5 the deletions.
# ARGV: 1 the tombstone's TTL (seconds), 2 now (ms), 3 the id.
_DELETE_LUA = """
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('ZADD', KEYS[5], ARGV[2], ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', tonumber(ARGV[2]) - tonumber(ARGV[1]) * 1000)
return 1
"""


class Local:
    """Without Redis (or while it is away): what this process staged and has not written
    yet, the ids it deleted, and its pins. One process serves the embedded default, so
    this is everyone's view there."""

    def __init__(self) -> None:
        self.pending: dict[str, StoredRecord] = {}
        self.deleted: dict[str, float] = {}  # id -> when the tombstone ends
        self.pins: dict[str, tuple[str, float]] = {}  # id -> (pin, when it ends)

    def pin(self, response_id: str, now: float) -> str | None:
        found = self.pins.get(response_id)
        if found is None:
            return None
        if found[1] <= now:
            del self.pins[response_id]
            return None
        return found[0]

    def is_deleted(self, response_id: str, now: float) -> bool:
        ends = self.deleted.get(response_id)
        return ends is not None and ends > now

    def forget_old(self, now: float) -> None:
        if len(self.deleted) > 10_000:
            self.deleted = {k: v for k, v in self.deleted.items() if v > now}
        if len(self.pins) > 100_000:
            self.pins = {k: v for k, v in self.pins.items() if v[1] > now}


local = Local()


def _redis() -> Any:
    """The hot path's Redis client, or None (no Redis, or it is away right now)."""
    from portal.infra.redishealth import redis_health

    client = fast_redis()
    if client is None or not redis_health.usable():
        return None
    return client


def _failed(exc: BaseException) -> None:
    from portal.infra.redishealth import is_outage, redis_health

    if is_outage(exc):
        redis_health.failed(exc)
    else:
        log.exception("stored responses: Redis call failed")


# --- staging ------------------------------------------------------------------------------

async def stage(record: StoredRecord, pin: str | None = None,
                history: bytes | None = None) -> None:
    """Keep ``record`` (readable by every process at once) and queue it for the database;
    ``pin``: the route an upstream that stores responses itself served it on; ``history``:
    ``record.history_json()`` if the caller has it already. Never raises."""
    now = time.time()
    ttl = max(1, int(record.expires_at - now))
    doc = record.encode()
    client = _redis()
    if client is not None:
        try:
            await client.evalsha(_STAGE_LUA, [doc_key(record.id), journal_key(),
                                              pin_key(record.id), items_key(record.id),
                                              *(item_key(record.tenant_id, i["id"])
                                                for i in record.items())],
                                 [doc, min(ttl, int(settings.GATEWAY_STORE_CACHE_SECONDS)),
                                  pin or "", ttl, history or record.history_json(),
                                  record.id])
        except Exception as exc:
            _failed(exc)
        else:
            writer().start()
            return
    local.pending[record.id] = record
    if pin:
        local.pins[record.id] = (pin, record.expires_at)
    writer().add(record)


# --- reads --------------------------------------------------------------------------------

async def lookup(response_id: str, tenant_id: int) -> tuple[StoredRecord | None, str | None]:
    """(the response, its pin) if ``tenant_id`` may see it: not another tenant's, not
    deleted, not expired. One Redis round trip; the database only when Redis has no copy."""
    now = time.time()
    record: StoredRecord | None = None
    pin: str | None = None
    known = False
    client = _redis()
    if client is not None:
        try:
            doc, tomb, pin_raw = await client.execute(
                "MGET", doc_key(response_id), tombstone_key(response_id), pin_key(response_id))
        except Exception as exc:
            _failed(exc)
        else:
            if tomb is not None:
                return None, None
            if doc is not None:
                record, known = StoredRecord.decode(doc), True
            pin = pin_raw.decode() if pin_raw is not None else None
    if not known:  # staged in this process's memory (no Redis, or Redis was away)?
        if local.is_deleted(response_id, now):
            return None, None
        pin = pin or local.pin(response_id, now)
        staged = local.pending.get(response_id)
        if staged is not None:
            record, known = staged, True
    if not known:
        found = await _load([response_id])
        record = found[0] if found else None
    if record is None or record.tenant_id != tenant_id or record.expired(now):
        return None, None
    return record, pin


async def find_items(ids: list[str],
                     tenant_id: int) -> dict[str, tuple[dict[str, Any], StoredRecord]]:
    """The items of this tenant's stored responses with these ids, each with the response it
    belongs to. An id no response of the tenant holds (a deleted or an expired response's,
    or one never stored here) is left out."""
    owners: dict[str, str] = {}
    client = _redis()
    if client is not None:
        try:
            values = await client.execute("MGET", *(item_key(tenant_id, i) for i in ids))
        except Exception as exc:
            _failed(exc)
        else:
            owners = {i: v.decode() for i, v in zip(ids, values, strict=True) if v is not None}
    for staged in list(local.pending.values()):
        if staged.tenant_id == tenant_id:
            owners.update((i["id"], staged.id) for i in staged.items()
                          if i["id"] in ids and i["id"] not in owners)
    found = await _items_of(owners, tenant_id)
    # The database for the rest (also an id whose staged owner was deleted since: another
    # response may hold an item of that id too).
    missing = [i for i in ids if i not in found]
    if missing:
        from asgiref.sync import sync_to_async

        found.update(await _items_of(await sync_to_async(
            load_item_owners, thread_sensitive=False)(missing, tenant_id, time.time()),
            tenant_id))
    return found


async def _items_of(owners: dict[str, str],
                    tenant_id: int) -> dict[str, tuple[dict[str, Any], StoredRecord]]:
    """The items of ``owners`` ({item id: response id}) found in their responses, each
    response read with ``lookup`` (so another tenant's, a deleted or an expired one holds
    nothing)."""
    found: dict[str, tuple[dict[str, Any], StoredRecord]] = {}
    for response_id in dict.fromkeys(owners.values()):
        owner = (await lookup(response_id, tenant_id))[0]
        if owner is None:
            continue
        for item in owner.items():
            if owners.get(item["id"]) == response_id:
                found[item["id"]] = (item, owner)
    return found


# The ids of a stored response's items, as PostgreSQL indexes them (storedresp_item_ids, a
# GIN index on this expression: migration gateway 0010).
ITEM_IDS_SQL = ("""(jsonb_path_query_array(input_items, '$[*] ? (!exists(@.type) || """
                """@.type != "item_reference").id') || """
                "jsonb_path_query_array(response, '$.output[*].id'))")
# Without PostgreSQL (the embedded default: one process, a small store), the newest rows
# searched for an item id.
SCAN_ROWS = 10_000


def load_item_owners(ids: list[str], tenant_id: int, now: float) -> dict[str, str]:
    """{item id: response id} of this tenant's unexpired rows holding these items (sync)."""
    from django.db import close_old_connections, connection

    from gateway.models import StoredResponse
    from gateway.stored.records import from_epoch

    close_old_connections()
    wanted = set(ids)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT id, {ITEM_IDS_SQL}::text FROM {StoredResponse._meta.db_table} "
                f"WHERE {ITEM_IDS_SQL} ?| %s AND tenant_id = %s AND expires_at > %s",
                [list(wanted), tenant_id, from_epoch(now)])
            return {item_id: rid for rid, held in cursor.fetchall()
                    for item_id in orjson.loads(held) if item_id in wanted}
    owners: dict[str, str] = {}
    rows = (StoredResponse.objects.filter(tenant_id=tenant_id, expires_at__gt=from_epoch(now))
            .order_by("-created_at").values_list("id", "input_items", "response")[:SCAN_ROWS])
    for rid, items, response in rows:
        record = StoredRecord(id=rid, tenant_id=tenant_id, key_id=None, created_at=0,
                              expires_at=0, status="", input_items=items, response=response)
        owners.update((i["id"], rid) for i in record.items() if i["id"] in wanted)
    return owners


async def get(response_id: str, tenant_id: int) -> StoredRecord | None:
    return (await lookup(response_id, tenant_id))[0]


async def chain(record: StoredRecord) -> list[StoredRecord]:
    """The responses before ``record`` in its conversation, oldest first. One deleted or
    expired on the way is left out (the rest of the conversation still stands)."""
    ids = list(record.ancestors)
    if not ids:
        return []
    found: dict[str, StoredRecord] = {}
    gone: set[str] = set()
    now = time.time()
    client = _redis()
    if client is not None:
        try:
            values = await client.execute(
                "MGET", *(doc_key(i) for i in ids), *(tombstone_key(i) for i in ids))
        except Exception as exc:
            _failed(exc)
            client = None
        else:
            for index, ident in enumerate(ids):
                if values[len(ids) + index] is not None:
                    gone.add(ident)
                elif values[index] is not None:
                    found[ident] = StoredRecord.decode(values[index])
    for ident in ids:
        if ident in found or ident in gone:
            continue
        if local.is_deleted(ident, now):
            gone.add(ident)
        elif ident in local.pending:
            found[ident] = local.pending[ident]
    missing = [i for i in ids if i not in found and i not in gone]
    if missing:
        for row in await _load(missing):
            found[row.id] = row
    return [found[i] for i in ids if i in found and found[i].tenant_id == record.tenant_id
            and not found[i].expired(now)]


async def history(record: StoredRecord) -> list[dict[str, Any]]:
    """The conversation up to and including ``record`` as it goes upstream again (each
    turn's ``StoredRecord.history()``), oldest first: the staged history items of every turn
    in one MGET, spliced and parsed once; turns Redis no longer holds from the database
    (one query). A turn deleted or expired on the way is left out."""
    ids = [*record.ancestors, record.id]
    parts: dict[str, bytes] = {}
    client = _redis()
    if client is not None:
        try:
            values = await client.execute("MGET", *(items_key(i) for i in ids))
        except Exception as exc:
            _failed(exc)
        else:
            parts = {i: v for i, v in zip(ids, values, strict=True) if v is not None}
    now = time.time()
    missing = []
    for ident in ids:
        if ident in parts or local.is_deleted(ident, now):
            continue
        staged = record if ident == record.id else local.pending.get(ident)
        if staged is not None:
            parts[ident] = staged.history_json()
        else:
            missing.append(ident)
    if missing:
        from asgiref.sync import sync_to_async

        rows = await sync_to_async(load_history, thread_sensitive=False)(
            missing, record.tenant_id, now)
        parts.update(rows)
    return list(orjson.loads(splice([parts[i] for i in ids if i in parts])))


def load_history(ids: list[str], tenant_id: int, now: float) -> dict[str, bytes]:
    """Each stored turn's ``history_json()`` from the database, for this tenant and not
    expired (sync). Reads only the columns the history needs (not the request's tools), and
    on PostgreSQL as text parsed by orjson (Django's JSON decoding took 3x as long)."""
    from django.db import close_old_connections, connection

    from gateway.models import StoredResponse
    from gateway.stored.records import from_epoch

    close_old_connections()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT id, input_items::text, (response -> 'output')::text FROM "
                f"{StoredResponse._meta.db_table} WHERE id = ANY(%s) AND tenant_id = %s "
                "AND expires_at > %s", [list(ids), tenant_id, from_epoch(now)])
            rows = [(rid, orjson.loads(items), {"output": orjson.loads(output or "[]")})
                    for rid, items, output in cursor.fetchall()]
    else:
        rows = list(StoredResponse.objects.filter(
            pk__in=ids, tenant_id=tenant_id, expires_at__gt=from_epoch(now))
            .values_list("id", "input_items", "response"))
    return {rid: StoredRecord(id=rid, tenant_id=tenant_id, key_id=None, created_at=0,
                              expires_at=0, status="", input_items=items,
                              response=response).history_json()
            for rid, items, response in rows}


async def _load(ids: list[str]) -> list[StoredRecord]:
    from asgiref.sync import sync_to_async

    return await sync_to_async(load_rows, thread_sensitive=False)(ids)


def load_rows(ids: Iterable[str]) -> list[StoredRecord]:
    """Records from the database (sync); on PostgreSQL the JSON columns come as text,
    parsed by orjson."""
    from django.db import close_old_connections, connection

    from gateway.models import StoredResponse

    close_old_connections()  # worker threads live outside Django's request cycle
    if connection.vendor != "postgresql":
        return [StoredRecord.from_row(row) for row in StoredResponse.objects.filter(pk__in=ids)]
    json_fields = ("ancestors", "request", "input_items", "response", "events")
    # StoredRecord's fields are the table's columns (the foreign keys' included: tenant_id…).
    columns = [f"{name}::text" if name in json_fields else name for name in ROW_FIELDS]
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(columns)} FROM {StoredResponse._meta.db_table} "
                       "WHERE id = ANY(%s)", [list(ids)])
        rows = cursor.fetchall()
    out = []
    for row in rows:
        values = dict(zip(ROW_FIELDS, row, strict=True))
        for name in json_fields:
            values[name] = orjson.loads(values[name]) if values[name] is not None else None
        values["created_at"] = values["created_at"].timestamp()
        values["expires_at"] = values["expires_at"].timestamp()
        out.append(StoredRecord(**values))
    return out


# --- deleting -------------------------------------------------------------------------------

async def delete(record: StoredRecord) -> None:
    """Delete a response everywhere: the tombstone first (so a writer that inserts it later
    deletes it again), the staged copy and the pin, then the row."""
    from asgiref.sync import sync_to_async

    client = _redis()
    done = False
    if client is not None:
        try:
            await client.evalsha(_DELETE_LUA, [tombstone_key(record.id), doc_key(record.id),
                                               pin_key(record.id), items_key(record.id),
                                               deletions_key()],
                                 [TOMBSTONE_SECONDS, int(time.time() * 1000), record.id])
            done = True
        except Exception as exc:
            _failed(exc)
    if not done:
        now = time.time()
        local.deleted[record.id] = now + TOMBSTONE_SECONDS
        local.pending.pop(record.id, None)
        local.pins.pop(record.id, None)
        local.forget_old(now)
    await sync_to_async(delete_rows, thread_sensitive=False)([record.id])


def delete_rows(ids: list[str]) -> int:
    from django.db import close_old_connections

    from gateway.models import StoredResponse

    close_old_connections()
    return int(StoredResponse.objects.filter(pk__in=ids).delete()[0])


# --- writing ------------------------------------------------------------------------------

def write_records(records: list[StoredRecord]) -> int:
    """Insert a batch (sync); an id already stored is skipped. Rows deleted meanwhile (a
    tombstone) are deleted again. Returns the rows inserted."""
    from django.db import (
        DatabaseError,
        IntegrityError,
        InterfaceError,
        OperationalError,
        close_old_connections,
    )

    close_old_connections()
    records = list({r.id: r for r in records}.values())
    try:
        written = _insert(records)
    except IntegrityError:
        # A tenant, key, upstream or credential was deleted while its request ran.
        records = _drop_dangling_links(records)
        written = _insert(records)
    except (OperationalError, InterfaceError):
        raise
    except DatabaseError:
        # One document the database refuses (e.g. a NUL in a JSON string): row by row,
        # setting aside what still fails rather than blocking the rest.
        written = 0
        for record in records:
            try:
                written += _insert([record])
            except (OperationalError, InterfaceError):
                raise
            except DatabaseError:
                log.exception("stored response %s refused by the database; dropped",
                              record.id)
    _delete_tombstoned([r.id for r in records])
    for record in records:
        if local.pending.get(record.id) is record:
            del local.pending[record.id]
    return written


def write_documents(docs: list[bytes]) -> int:
    """Insert journaled documents as they are (sync, PostgreSQL): COPY the raw JSON into a
    temporary table and let PostgreSQL take the columns out of it, in one INSERT … ON
    CONFLICT DO NOTHING, so the writer spends no Python time on JSON. Anything unusual (a
    link to a row deleted meanwhile, a document refused) goes through ``write_records``."""
    from django.db import DatabaseError, InterfaceError, OperationalError, close_old_connections

    close_old_connections()
    try:
        inserted = _insert_documents(docs)
    except (OperationalError, InterfaceError):
        raise
    except DatabaseError:
        return write_records([StoredRecord.decode(d) for d in docs])
    _delete_tombstoned(inserted)
    return len(inserted)


# The columns taken out of a journaled document (``d``), in ROW_FIELDS order.
_DOC_COLUMNS = {
    "id": "d->>'id'", "tenant_id": "(d->>'tenant_id')::bigint",
    "key_id": "(d->>'key_id')::bigint",
    "created_at": "to_timestamp((d->>'created_at')::double precision)",
    "expires_at": "to_timestamp((d->>'expires_at')::double precision)",
    "status": "d->>'status'", "model": "d->>'model'", "background": "(d->'background')::boolean",
    "previous_response_id": "d->>'previous_response_id'", "ancestors": "d->'ancestors'",
    "context_bytes": "(d->>'context_bytes')::bigint", "upstream_id": "(d->>'upstream_id')::bigint",
    "credential_id": "(d->>'credential_id')::bigint", "request": "d->'request'",
    "input_items": "d->'input_items'", "response": "d->'response'",
    "events": "NULLIF(d->'events', 'null'::jsonb)",
}


def _insert_documents(docs: list[bytes]) -> list[str]:
    from django.db import connection, transaction

    from gateway.models import StoredResponse

    table = StoredResponse._meta.db_table
    select = ", ".join(_DOC_COLUMNS[name] for name in ROW_FIELDS)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE IF NOT EXISTS store_documents (doc bytea) "
                       "ON COMMIT DELETE ROWS")
        with cursor.cursor.copy("COPY store_documents (doc) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["bytea"])
            for doc in docs:
                # jsonb refuses the NUL character in a string: U+FFFD takes its place.
                copy.write_row([doc.replace(b"\\u0000", b"\\ufffd")])
        cursor.execute(
            f"INSERT INTO {table} ({', '.join(ROW_FIELDS)}) SELECT DISTINCT ON (d->>'id') "
            f"{select} FROM (SELECT convert_from(doc, 'UTF8')::jsonb AS d FROM "
            "store_documents) s ON CONFLICT (id) DO NOTHING RETURNING id")
        return [row[0] for row in cursor.fetchall()]


JSON_FIELDS = ("ancestors", "request", "input_items", "response", "events")


def _jsonb(value: Any) -> str:
    """JSON text PostgreSQL's jsonb takes: it refuses the NUL character (``\\u0000``) in a
    string, so that becomes U+FFFD (a model's stray NUL must not lose the response)."""
    return orjson.dumps(value).decode().replace("\\u0000", "\\ufffd")


def _insert(records: list[StoredRecord]) -> int:
    """One batch in one transaction; an id already stored is skipped. On PostgreSQL: COPY
    into a temporary table (the JSON written by orjson), then one INSERT … ON CONFLICT DO
    NOTHING, as the usage rows are written (the ORM's bulk_create spent several times the
    CPU, most of it encoding JSON)."""
    from django.db import connection, transaction

    from gateway.models import StoredResponse

    if connection.vendor != "postgresql":
        # Through orjson and back first: a captured response can hold orjson.Fragment
        # values (a stream's exact usage.cost), which the ORM's json.dumps cannot write.
        rows = [StoredResponse(**StoredRecord.decode(r.encode()).row_values()) for r in records]
        with transaction.atomic():
            StoredResponse.objects.bulk_create(rows, ignore_conflicts=True)
        return len(records)
    table = StoredResponse._meta.db_table
    columns = ", ".join(ROW_FIELDS)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS store_incoming ON COMMIT DELETE ROWS "
                       f"AS SELECT {columns} FROM {table} WITH NO DATA")
        with cursor.cursor.copy(f"COPY store_incoming ({columns}) FROM STDIN") as copy:
            for r in records:
                values = r.row_values()
                copy.write_row([
                    _jsonb(values[name]) if name in JSON_FIELDS and values[name] is not None
                    else values[name] for name in ROW_FIELDS])
        cursor.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM store_incoming "
                       "ON CONFLICT (id) DO NOTHING")
        return int(cursor.rowcount)


def _drop_dangling_links(records: list[StoredRecord]) -> list[StoredRecord]:
    from gateway.models import Credential, Upstream
    from keys.models import ApiKey, Tenant

    tenants = set(Tenant.objects.filter(pk__in={r.tenant_id for r in records})
                  .values_list("pk", flat=True))
    records = [r for r in records if r.tenant_id in tenants]  # its tenant is gone: so is it
    for attr, model in (("key_id", ApiKey), ("upstream_id", Upstream),
                        ("credential_id", Credential)):
        ids = {getattr(r, attr) for r in records} - {None}
        existing = set(model.objects.filter(pk__in=ids).values_list("pk", flat=True))
        for r in records:
            if getattr(r, attr) is not None and getattr(r, attr) not in existing:
                setattr(r, attr, None)
    return records


def _delete_tombstoned(ids: list[str]) -> None:
    """Delete again the rows just inserted whose response was deleted meanwhile (a DELETE
    that came while it waited in the journal)."""
    from portal.infra.redis import sync_redis

    client = sync_redis()
    now = time.time()
    dead = {i for i in ids if local.is_deleted(i, now)}
    if client is not None and ids:
        try:
            recent = client.zrangebyscore(deletions_key(), (now - TOMBSTONE_SECONDS) * 1000,
                                          "+inf")
        except Exception:
            log.warning("could not check %d stored responses for deletions", len(ids))
        else:
            deleted = {m.decode() if isinstance(m, bytes) else m for m in recent}
            dead.update(i for i in ids if i in deleted)
    if dead:
        delete_rows(sorted(dead))


def write_journaled(items: list[bytes]) -> int:
    from django.db import connection

    if connection.vendor == "postgresql":
        return write_documents(items)
    return write_records([StoredRecord.decode(item) for item in items])


def drain_journal(max_batches: int = 100) -> int:
    """Write journaled records to the database (sync; gateway processes and a Celery
    task). A batch the database cannot take now goes back to the front. Returns rows
    written."""
    return JOURNAL.drain_with_legacy(write_journaled, settings.GATEWAY_USAGE_BATCH_SIZE,
                                     "responses", log, max_batches)


def spool(records: list[StoredRecord]) -> bool:
    """Keep records the database could not take in the Redis journal (sync)."""
    return JOURNAL.spool(lambda: [r.encode() for r in records], len(records),
                         "stored responses", log)


class StoreWriter(SinkWriter[StoredRecord]):
    """Writes what was staged in this process without Redis, and (with Redis, unless
    GATEWAY_USAGE_SINK=redis) the store journal every GATEWAY_USAGE_FLUSH_INTERVAL, in
    batches of GATEWAY_USAGE_BATCH_SIZE."""

    name = "store"

    def batch_size(self) -> int:
        return int(settings.GATEWAY_USAGE_BATCH_SIZE)

    def write(self, batch: list[StoredRecord]) -> int:
        return write_records(batch)

    def spool(self, batch: list[StoredRecord]) -> bool:
        return spool(batch)

    def drain(self) -> int:
        return drain_journal()


_writers: PerLoop[StoreWriter] = PerLoop(StoreWriter)


def writer() -> StoreWriter:
    return _writers.get()


def pending() -> int:
    """Records staged in this process's memory and not yet written (lost if it died now)."""
    return _writers.pending()


async def journal_pending() -> int | None:
    return await JOURNAL.pending()


async def close() -> None:
    await _writers.close()


# --- retention ----------------------------------------------------------------------------

def expire(now: float | None = None, batch: int = 1000) -> int:
    """Delete the stored responses whose retention is over, in batches (sync; the Celery
    task ``gateway.tasks.expire_stored_responses``). Returns how many."""
    from django.db import transaction

    from gateway.models import StoredResponse
    from gateway.stored.records import from_epoch

    cutoff = from_epoch(time.time() if now is None else now)
    deleted = 0
    while True:
        ids = list(StoredResponse.objects.filter(expires_at__lte=cutoff)
                   .values_list("pk", flat=True)[:batch])
        if not ids:
            return deleted
        with transaction.atomic():
            deleted += StoredResponse.objects.filter(pk__in=ids).delete()[0]

