"""Stored responses (issue 14): what ``previous_response_id`` and storing cost.

    python -m benchmarks.stored                       # both parts (a few minutes)
    python -m benchmarks.stored --only expansion      # in process, seconds
    python -m benchmarks.stored --only staging --seconds 5 --rounds 2

expansion  In process, against PostgreSQL and Redis: ``gateway.stored.chain.prepare`` for a
           request continuing a 50-turn conversation (each turn a user message, a reasoning
           item with its encrypted content and an answer; every third a tool call and its
           output), its chain read from the staged copies in Redis, then from the database
           (the staged copies gone), against the same request without
           ``previous_response_id``. The difference is what expansion adds to the request
           (target: under 2 ms).
staging    End to end (``benchmarks/run.py``'s stack: the Node mock, one Turnpike process,
           the Node load generator): Responses requests with the tenant's response storage
           off, then on, alternating; the gateway's CPU per request and the latency.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TURNS = 50
REASONING = "gAAAA" + "x" * 1500  # an encrypted reasoning blob, about OpenAI's size
USER_TEXT = "Please look at the next part of the code and tell me what it does. " * 4
ANSWER = "It parses the input, checks each field and builds the request body. " * 12


def conversation(tenant_id: int, key_id: int, turns: int) -> list[Any]:
    """``turns`` stored responses, each continuing the one before."""
    from gateway.stored.records import StoredRecord, input_items

    now = time.time()
    records: list[StoredRecord] = []
    for n in range(turns):
        rid = f"resp_bench_{os.getpid()}_{n}"
        output: list[dict[str, Any]] = [
            {"id": f"rs_{n}", "type": "reasoning", "summary": [], "encrypted_content": REASONING}]
        new_input: list[dict[str, Any]] = [{"role": "user", "content": f"{n}: {USER_TEXT}"}]
        if n % 3 == 2:
            output.append({"id": f"fc_{n}", "type": "function_call", "status": "completed",
                           "call_id": f"call_{n}", "name": "read_file",
                           "arguments": f'{{"path": "src/module_{n}.py"}}'})
        else:
            output.append({"id": f"msg_{n}", "type": "message", "status": "completed",
                           "role": "assistant", "content": [
                               {"type": "output_text", "text": ANSWER, "annotations": []}]})
        if n % 3 == 0 and n:
            new_input.insert(0, {"type": "function_call_output", "call_id": f"call_{n - 1}",
                                 "output": "def main():\n    return 0\n" * 10})
        prev = records[-1] if records else None
        record = StoredRecord(
            id=rid, tenant_id=tenant_id, key_id=key_id, created_at=now, expires_at=now + 86400,
            status="completed", model="bench-model",
            previous_response_id=prev.id if prev else None,
            ancestors=[*prev.ancestors, prev.id] if prev else [],
            input_items=input_items(new_input),
            response={"id": rid, "object": "response", "status": "completed",
                      "model": "bench-model", "output": output})
        record.context_bytes = (prev.context_bytes if prev else 0) + len(record.history_json())
        records.append(record)
    return records


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _timed(fn: Any, iterations: int) -> list[float]:
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


async def expansion(iterations: int) -> dict[str, Any]:
    from asgiref.sync import sync_to_async

    from gateway.context import RelayContext
    from gateway.stored import chain, store
    from keys.models import Tenant
    from keys.services import key_create
    from keys.snapshots import KeySnapshot, build_key_snapshot
    from portal.infra.redis import sync_redis

    def seed() -> tuple[KeySnapshot, int]:
        from gateway.models import StoredResponse

        StoredResponse.objects.filter(tenant__name="bench-stored").delete()
        Tenant.objects.filter(name="bench-stored").delete()
        tenant = Tenant.objects.create(name="bench-stored")
        made = key_create(tenant=tenant, name="bench")
        snap = build_key_snapshot(made.key.secret_hash)
        assert snap is not None
        return KeySnapshot.from_dict(snap), tenant.pk

    key, tenant_id = await sync_to_async(seed)()
    records = conversation(tenant_id, key.key_id, TURNS)
    for record in records:
        await store.stage(record)
    last = records[-1]
    scope = {"type": "http", "headers": [], "client": ("127.0.0.1", 1)}
    import orjson

    follow_up = {"model": "bench-model", "previous_response_id": last.id,
                 "input": [{"type": "function_call_output", "call_id": "call_x",
                            "output": "ok"}, {"role": "user", "content": "And then?"}]}
    fresh = {k: v for k, v in follow_up.items() if k != "previous_response_id"}

    async def run(payload: dict[str, Any]) -> None:
        body = orjson.dumps(payload)
        ctx = RelayContext.start(scope, "responses")
        await chain.prepare(ctx, key, payload, body, [])

    await run(follow_up)  # warm: scripts loaded, connections open
    ctx = RelayContext.start(scope, "responses")
    expanded, raw, size = await chain.prepare(ctx, key, follow_up, orjson.dumps(follow_up), [])
    result: dict[str, Any] = {"turns": TURNS, "expanded_items": len(expanded["input"]),
                              "expanded_kib": round(len(raw) / 1024, 1)}
    result["baseline"] = await _timed(lambda: run(fresh), iterations)
    result["redis"] = await _timed(lambda: run(follow_up), iterations)
    await sync_to_async(store.drain_journal)()
    client = sync_redis()
    assert client is not None
    client.delete(*(store.doc_key(r.id) for r in records))
    result["database"] = await _timed(lambda: run(follow_up), iterations)
    # What storing costs the request: the record built and encoded at the settle.
    ctx = RelayContext.start(scope, "responses")
    await chain.prepare(ctx, key, fresh, orjson.dumps(fresh), [])
    turn = ctx.turn
    assert turn is not None
    turn.response = last.response

    async def build() -> None:
        record = turn.record()
        assert record is not None
        record.encode()

    result["record_and_encode"] = await _timed(build, iterations)
    await store.close()
    return result


def report_expansion(result: dict[str, Any]) -> str:
    base = statistics.median(result["baseline"])
    lines = [f"{result['turns']}-turn conversation: {result['expanded_items']} items, "
             f"{result['expanded_kib']} KiB once expanded",
             "| prepare() | p50 ms | p95 ms | mean ms | added p50 ms |", "|---|---|---|---|---|"]
    for name in ("baseline", "redis", "database", "record_and_encode"):
        times = result[name]
        p50 = statistics.median(times)
        added = f"{p50 - base:.3f}" if name in ("redis", "database") else "-"
        lines.append(f"| {name} | {p50:.3f} | {percentile(times, 0.95):.3f} | "
                     f"{statistics.fmean(times):.3f} | {added} |")
    return "\n".join(lines)


# --- end to end ------------------------------------------------------------------------------

def staging(args: argparse.Namespace) -> str:
    from benchmarks.run import RESPONSES, Stack, _row, ensure_database, manage_shell, measure

    ensure_database(args.database_url)
    stack = Stack(args.database_url, args.redis_url, keys=1)
    specs = {
        "nonstream_responses": dict(path="/responses", body=RESPONSES, concurrency=64),
        "stream_responses": dict(path="/responses", body={**RESPONSES, "stream": True,
                                 "input": "[[mock chunks=100]]"}, concurrency=64, stream=True),
        "nonstream_translated": dict(path="/responses", body={
            "model": "bench-chat-only", "input": "Say hello."}, concurrency=64),
        "latency_responses_1_client": dict(path="/responses", body=RESPONSES, concurrency=1),
    }
    rows: dict[tuple[str, str], list[Any]] = {}
    try:
        _, turnpike = stack.targets()
        from benchmarks.run import loadgen

        loadgen(turnpike.base_url + "/responses", RESPONSES, turnpike.key, 4, 1)
        for _ in range(args.rounds):
            for mode in ("off", "on"):
                manage_shell(stack.env, (
                    "from keys.models import Tenant\nfrom keys.services import tenant_update\n"
                    f"tenant_update(tenant=Tenant.objects.get(name='bench'), "
                    f"response_storage={mode!r})\n"))
                time.sleep(1.5)  # GATEWAY_SNAPSHOT_TTL: every process sees the change
                for name, spec in specs.items():
                    result = measure(f"{name} ({mode})", turnpike, seconds=args.seconds,
                                     **spec)  # type: ignore[arg-type]
                    print(_row(result), flush=True)
                    rows.setdefault((name, mode), []).append(result)
        stored = manage_shell(stack.env, "from gateway.models import StoredResponse\n"
                                         "print(StoredResponse.objects.count())"
                              ).strip().splitlines()[-1]
    finally:
        stack.close()
    lines = [f"stored responses in the database after the runs: {stored}", "",
             "| scenario | store | CPU ms/req (each round) | RPS | p50 ms | p99 ms |",
             "|---|---|---|---|---|---|"]
    for (name, mode), results in rows.items():
        lines.append(
            f"| {name} | {mode} | "
            f"{', '.join(str(r.cpu_ms_per_request) for r in results)} | "
            f"{', '.join(str(round(r.load['rps'])) for r in results)} | "
            f"{', '.join(str(r.load['p50_ms']) for r in results)} | "
            f"{', '.join(str(r.load['p99_ms']) for r in results)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("expansion", "staging"))
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--database-url", default=os.environ.get(
        "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/turnpike_bench"))
    parser.add_argument("--redis-url", default=os.environ.get(
        "BENCH_REDIS_URL", "redis://127.0.0.1:6379/13"))
    args = parser.parse_args(argv)
    out = []
    if args.only in (None, "expansion"):
        from benchmarks.run import ensure_database, migrate, service_env

        ensure_database(args.database_url)
        env = service_env(args.database_url, args.redis_url, "bench-stored:")
        migrate(env)
        os.environ.update({k: env[k] for k in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL",
                                               "REDIS_URL", "SECRET_KEY",
                                               "GATEWAY_REDIS_PREFIX")})
        os.environ["GATEWAY_USAGE_FLUSH_INTERVAL"] = "3600"  # the benchmark drains itself
        import django

        django.setup()
        import uvloop  # the event loop the gateway runs on (portal.server)

        out.append(report_expansion(uvloop.run(expansion(args.iterations))))
        print(out[-1], flush=True)
    if args.only in (None, "staging"):
        out.append(staging(args))
        print(out[-1], flush=True)
    print()
    print("\n\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
