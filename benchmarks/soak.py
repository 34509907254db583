"""The soak: two gateway processes under 32-way mixed load with ~1% injected upstream faults,
then an audit of every answer against the database and the limiter.

    python -m benchmarks.soak                  # 10 minutes (see BENCHMARKS.md, "Soak")
    python -m benchmarks.soak --smoke          # ~15 s of load, for CI
    python -m benchmarks.soak --seconds 60 --concurrency 32 --fault-rate 0.01

Topology: PostgreSQL and Redis (URL options; a private GATEWAY_REDIS_PREFIX), the Node mock
upstream of the benchmark suite (benchmarks/mock_upstream.js, which injects faults when a
request asks: 500, 503, 429, a cut body, a body that hangs past the upstream's idle
timeout) behind two upstreams (OpenAI, and a Chat-only one so Responses clients are
translated), and **two** Turnpike processes (``python -m portal.server``) sharing them.
Two tenants with balances, four keys each (concurrency limit = the clients per key, so a
``concurrent_limit`` refusal is always spurious), a price on the models.

Load: benchmarks/soakgen.js, ``--concurrency`` closed-loop clients, each on one key, each
request to either gateway, Chat Completions or Responses, stream or not, passthrough or
translated; ~``--fault-rate`` of them carry a fault chosen by the client. Every answer is
classified ok / injected-as-expected / unexpected, and its request id kept.

After the load: wait until both gateways report nothing in flight and no usage pending and
the Redis journal is empty, then audit (in ``manage.py shell`` with the gateways'
environment): rows lost (answered request ids without a usage row), rows without an
answer, what each row recorded and charged against what the client got, balance = initial
- sum of the tenant's row costs, key quotas likewise, ``ledger_mismatches()``,
``account_drifts()`` and reservations / concurrency slots left over (stranded). RSS of each
gateway after warm-up and at the end. Prints a Markdown table; exits 1 if anything that
must be zero is not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

from benchmarks.run import (
    BENCH,
    NODE,
    PY,
    ensure_database,
    flush_redis_prefix,
    manage_shell,
    migrate,
    proc_cpu_seconds,
    proc_rss_mib,
    service_env,
    spawn,
    start_gateway,
    start_mock,
    stop,
    wait_port,
)

PRICE_INPUT = Decimal("1.00")  # per million tokens
PRICE_OUTPUT = Decimal("2.00")
# The mock reports 10 input and 100 output tokens for every complete answer.
EXPECTED_COST = (10 * PRICE_INPUT + 100 * PRICE_OUTPUT) / 1_000_000
INITIAL_BALANCE = Decimal("1000000")
KEY_QUOTA = Decimal("500000")  # on the second tenant's keys: key accounts are audited too
IDLE_TIMEOUT = 2.0  # the upstreams' idle timeout; "hang" faults stall for HANG_MS
HANG_MS = 5000
TENANTS = ("soak-a", "soak-b")
# What must be zero, with how each is reported.
MUST_BE_ZERO = ("unexpected", "rows_lost", "duplicate_answers", "extra_rows",
                "ok_recorded_as_error", "ok_misbilled", "fault_recorded_as_success",
                "charged_for_failure", "balance_mismatches", "quota_mismatches",
                "ledger_mismatches", "drifting_accounts", "stranded_money",
                "slots_left", "journal_left", "dead_rows")


# --- set-up ----------------------------------------------------------------------------------

def seed(env: dict[str, str], mock_port: int, keys_per_tenant: int,
         concurrency_per_key: int) -> list[str]:
    """A clean database: the two upstreams, prices, two tenants with balances (topped up
    through the ledger) and their keys. Returns the key secrets (tenant A's first)."""
    script = f"""
import json
from decimal import Decimal
from django.db import connection
from billing.models import ModelPrice
from billing.services import tenant_topup
from gateway.models import Upstream
from gateway.services import upstream_create
from keys.models import Tenant
from keys.services import key_create
with connection.cursor() as cur:
    cur.execute("TRUNCATE billing_usagelog, billing_ledgerentry, billing_usagerollup")
Tenant.objects.filter(name__in={list(TENANTS)!r}).delete()
Upstream.objects.all().delete()
ModelPrice.objects.all().delete()
mock = "http://127.0.0.1:{mock_port}/v1"
for name, kind, model in (("soak-mock", "openai", "soak-model"),
                          ("soak-mock-chat", "openai-chat", "soak-chat-only")):
    upstream_create(name=name, kind=kind, base_url=mock, models=[model],
                    api_keys=["sk-mock-1", "sk-mock-2"], timeout_idle={IDLE_TIMEOUT})
ModelPrice.objects.create(model="soak-*", input_per_million=Decimal("{PRICE_INPUT}"),
                          output_per_million=Decimal("{PRICE_OUTPUT}"))
secrets = []
for index, name in enumerate({list(TENANTS)!r}):
    tenant = Tenant.objects.create(name=name)
    tenant_topup(tenant=tenant, amount=Decimal("{INITIAL_BALANCE}"), note="soak")
    for k in range({keys_per_tenant}):
        made = key_create(tenant=tenant, name=f"soak {{k}}", rpm=10**6, rpd=10**9,
                          concurrency={concurrency_per_key},
                          quota=Decimal("{KEY_QUOTA}") if index else None)
        secrets.append(made.secret)
print("SOAK_KEYS " + json.dumps(secrets))
"""
    out = manage_shell(env, script)
    line = next(x for x in out.splitlines() if x.startswith("SOAK_KEYS "))
    return list(json.loads(line.split(" ", 1)[1]))


def gateway_status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_gateway/status", timeout=5) as r:
        return dict(json.loads(r.read()))


def journal_waiting(redis_url: str, prefix: str) -> int:
    """Usage rows in the Redis journal, or claimed by a writer that has not finished."""
    import redis

    from portal.infra import rediskeys  # names only: this driver has no Django settings

    client = redis.Redis.from_url(redis_url)
    try:
        waiting = 0
        for journal, claims, claim_prefix in rediskeys.usage_journals(prefix=prefix):
            waiting += int(client.llen(journal))
            waiting += sum(client.llen(claim_prefix + c.decode())
                           for c in client.zrange(claims, 0, -1))
        return waiting
    finally:
        client.close()


def wait_for_writers(ports: list[int], redis_url: str, prefix: str,
                     timeout: float = 120.0) -> float:
    """Until every gateway has nothing in flight and no usage row pending, and the journal is
    empty, in three reads in a row (a settle finishing in the background between two reads
    shows in the next). Returns the seconds it took; raises on timeout."""
    started = time.monotonic()
    quiet = 0
    while quiet < 3:
        if time.monotonic() - started > timeout:
            states = [gateway_status(p) for p in ports]
            raise RuntimeError(f"usage writers did not finish in {timeout:.0f} s: {states}, "
                               f"journal {journal_waiting(redis_url, prefix)}")
        busy = any(s["in_flight"] or s["usage_pending"]
                   for s in (gateway_status(p) for p in ports))
        quiet = 0 if busy or journal_waiting(redis_url, prefix) else quiet + 1
        time.sleep(0.3)
    return time.monotonic() - started


FAULTS = ("500", "503", "429", "cut", "hang")


def soakgen(gateways: list[str], keys: list[str], concurrency: int, seconds: float,
            fault_rate: float, out: Path, chunks: int = 16,
            faults: tuple[str, ...] = FAULTS) -> subprocess.Popen[str]:
    cfg = {"gateways": gateways, "keys": keys, "concurrency": concurrency,
           "seconds": seconds, "faultRate": fault_rate, "out": str(out), "chunks": chunks,
           "timeoutMs": 30000, "faults": list(faults)}
    return subprocess.Popen([NODE, str(BENCH / "soakgen.js"), json.dumps(cfg)],
                            stdout=subprocess.PIPE, text=True)


def _summary(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"soakgen.js failed ({proc.returncode}): {out[-2000:]}")
    return dict(json.loads(out.strip().splitlines()[-1]))


# --- the audit (runs in ``manage.py shell`` with the gateways' environment) ------------------

def audit(record_files: list[str]) -> None:
    """Print ``SOAK_AUDIT {json}``: every answered request against the usage log, the money
    against the ledger, the limiter against the database."""
    from django.db import connection

    from billing.reconcile import _read_drifts, account_drifts
    from billing.services import ledger_mismatches
    from billing.usage import journal_length
    from keys.models import ApiKey, Tenant
    from portal.infra import rediskeys
    from portal.infra.redis import sync_redis

    result: dict[str, Any] = {}
    with connection.cursor() as cur:
        cur.execute("CREATE TEMP TABLE soak_answered (request_id text, fault text, cls text, "
                    "stream boolean)")
        with cur.cursor.copy("COPY soak_answered FROM STDIN") as copy:
            for name in record_files:
                with open(name, "rb") as f:
                    while block := f.read(1 << 20):
                        copy.write(block)
        cur.execute("CREATE INDEX ON soak_answered (request_id)")
        cur.execute("ANALYZE soak_answered")

        def one(sql: str, *params: Any) -> Any:
            cur.execute(sql, params)
            return cur.fetchone()[0]

        def rows(sql: str, *params: Any) -> list[Any]:
            cur.execute(sql, params)
            return [list(r) for r in cur.fetchall()]

        answered = "request_id <> '-'"
        joined = ("soak_answered a JOIN billing_usagelog u USING (request_id) "
                  f"WHERE a.{answered}")
        result["answered"] = one(f"SELECT count(*) FROM soak_answered WHERE {answered}")
        result["no_answer"] = one("SELECT count(*) FROM soak_answered WHERE request_id = '-'")
        result["rows"] = one("SELECT count(*) FROM billing_usagelog")
        result["duplicate_answers"] = one(
            f"SELECT count(*) - count(DISTINCT request_id) FROM soak_answered WHERE {answered}")
        lost = (f"FROM soak_answered a WHERE a.{answered} AND NOT EXISTS "
                "(SELECT 1 FROM billing_usagelog u WHERE u.request_id = a.request_id)")
        result["rows_lost"] = one(f"SELECT count(*) {lost}")
        result["rows_lost_sample"] = rows(f"SELECT a.request_id, a.fault, a.cls {lost} LIMIT 10")
        result["extra_rows"] = max(0, one(
            "SELECT count(*) FROM billing_usagelog u WHERE NOT EXISTS "
            "(SELECT 1 FROM soak_answered a WHERE a.request_id = u.request_id)")
            - result["no_answer"])
        result["ok_recorded_as_error"] = one(
            f"SELECT count(*) FROM {joined} AND a.cls = 'ok' "
            "AND (u.status_code <> 200 OR u.error_code <> '')")
        result["ok_misbilled"] = one(
            f"SELECT count(*) FROM {joined} AND a.cls = 'ok' AND u.status_code = 200 "
            "AND u.cost <> %s", EXPECTED_COST)
        result["fault_recorded_as_success"] = one(
            f"SELECT count(*) FROM {joined} AND a.fault <> '-' AND u.error_code = ''")
        # Nothing was delivered for a status fault or a broken non-stream body: no charge.
        # (A stream cut mid-way is charged for the text it delivered.)
        result["charged_for_failure"] = one(
            f"SELECT count(*) FROM {joined} AND a.fault <> '-' AND u.cost > 0 "
            "AND (a.fault IN ('500', '503', '429') OR NOT a.stream)")
        result["row_errors"] = rows(
            "SELECT status_code, error_code, count(*), sum(cost) FROM billing_usagelog "
            "WHERE error_code <> '' OR status_code <> 200 GROUP BY 1, 2 ORDER BY 3 DESC")
        result["charged_total"] = str(one("SELECT coalesce(sum(cost), 0) FROM billing_usagelog"))

        costs = dict(rows("SELECT tenant_id, coalesce(sum(cost), 0) FROM billing_usagelog "
                          "GROUP BY 1"))
        key_costs = dict(rows("SELECT key_id, coalesce(sum(cost), 0) FROM billing_usagelog "
                              "GROUP BY 1"))
    balances = []
    for tenant in Tenant.objects.filter(name__in=TENANTS).order_by("name"):
        expected = INITIAL_BALANCE - costs.get(tenant.pk, Decimal(0))
        balances.append({"tenant": tenant.name, "balance": str(tenant.balance),
                         "expected": str(expected), "ok": tenant.balance == expected})
    result["balances"] = balances
    result["balance_mismatches"] = sum(not b["ok"] for b in balances)
    keys = ApiKey.objects.filter(tenant__name__in=TENANTS)
    result["quota_mismatches"] = sum(
        1 for k in keys if k.quota is not None
        and k.quota_used != key_costs.get(k.pk, Decimal(0)))
    result["ledger_mismatches"] = len(ledger_mismatches())

    drifts = account_drifts()
    result["drifting_accounts"] = len(drifts)
    result["drifts"] = [d.describe() for d in drifts]
    now = _read_drifts()
    reserved = sum((d.reserved for d in now.values() if d.kind == "tenant"), Decimal(0))
    stale = sum((d.stranded for d in now.values() if d.kind == "tenant"), Decimal(0))
    # An expired reservation shows as drift of its own amount: count it once.
    drift = sum((abs(d.drift + d.stranded) for d in now.values()), Decimal(0))
    # Nothing is in flight any more: every reservation still held, live or expired, is
    # stranded, and so is any other drift between the limiter's accounts and the database.
    result["reserved_left"] = str(reserved)
    result["stranded_money"] = str(reserved + stale + drift)
    result["accounts_checked"] = len(now)
    client = sync_redis()
    assert client is not None
    result["slots_left"] = sum(int(client.zcard(rediskeys.concurrency(k.pk, tenant=k.tenant_id)))
                               for k in keys)
    result["journal_left"] = journal_length()
    result["dead_rows"] = int(client.llen(rediskeys.dead_rows()))
    print("SOAK_AUDIT " + json.dumps(result, default=str))


# --- the run ---------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    ensure_database(args.database_url)
    dbname = args.database_url.rsplit("/", 1)[1]
    prefix = f"soak:{dbname}:"
    workdir = Path(tempfile.mkdtemp(prefix="turnpike-soak-"))
    env = service_env(args.database_url, args.redis_url, prefix)
    procs: list[subprocess.Popen[Any]] = []
    res: dict[str, Any] = {"args": {k: v for k, v in vars(args).items()}, "workdir":
                           str(workdir)}
    try:
        migrate(env)
        mock_port = start_mock(procs, env)
        per_key = -(-args.concurrency // (2 * args.keys_per_tenant))  # ceil
        keys = seed(env, mock_port, args.keys_per_tenant, per_key)
        flush_redis_prefix(args.redis_url, prefix)
        gateways = [start_gateway(procs, env, workdir / f"gateway{i}.log") for i in range(2)]
        if env.get("GATEWAY_USAGE_SINK") == "redis":
            spawn(procs, [PY, "manage.py", "usagewriter"], env, workdir / "usagewriter.log")
        for _, port in gateways:
            wait_port(port)
        urls = [f"http://127.0.0.1:{port}/v1" for _, port in gateways]
        pids = [proc.pid for proc, _ in gateways]
        res["clients_per_key"] = per_key
        res["keys"] = len(keys)

        # Warm up at full load, faults included (snapshots, route tables, pools, scripts,
        # buffers, the tokenizer that estimates a cut stream's usage), so the start RSS is
        # the steady one. Its answers count and are audited like the rest.
        faults = tuple(args.faults.split(","))
        warm = _summary(soakgen(urls, keys, args.concurrency, 2 if args.smoke else 10,
                                args.fault_rate, workdir / "warmup.tsv", faults=faults), 120)
        res["warmup_requests"] = warm["requests"]
        rss_start = [proc_rss_mib(pid) for pid in pids]
        cpu_start = [proc_cpu_seconds(pid) for pid in pids]

        load = soakgen(urls, keys, args.concurrency, args.seconds, args.fault_rate,
                       workdir / "answers.tsv", faults=faults)
        rss_max = list(rss_start)
        every = max(1.0, args.seconds / 20)
        samples: list[list[float]] = []
        next_sample = time.monotonic() + every
        while load.poll() is None:
            time.sleep(0.2)
            if time.monotonic() >= next_sample:
                now = [proc_rss_mib(pid) for pid in pids]
                samples.append([round(x, 1) for x in now])
                rss_max = [max(a, b) for a, b in zip(rss_max, now, strict=True)]
                next_sample += every
        summary = _summary(load, 60)
        cpu_end = [proc_cpu_seconds(pid) for pid in pids]
        res["load"] = summary
        for name in ("classes", "injected"):
            res[name] = dict(Counter(summary[name]) + Counter(warm[name]))
        res["samples"] = summary["samples"] + warm["samples"]
        res["drain_seconds"] = round(wait_for_writers([p for _, p in gateways],
                                                      args.redis_url, prefix), 2)
        rss_end = [proc_rss_mib(pid) for pid in pids]
        res["rss"] = {"start": [round(x, 1) for x in rss_start],
                      "end": [round(x, 1) for x in rss_end],
                      "max": [round(max(a, b), 1) for a, b in zip(rss_max, rss_end, strict=True)],
                      "samples": samples, "every": every}
        res["cpu_ms_per_request"] = round(
            (sum(cpu_end) - sum(cpu_start)) * 1000 / max(1, summary["requests"]), 3)
        with urllib.request.urlopen(f"http://127.0.0.1:{mock_port}/_mock/stats") as r:
            res["upstream"] = json.loads(r.read())
        out = manage_shell(env, "from benchmarks.soak import audit; audit(%r)" % [
            str(workdir / "warmup.tsv"), str(workdir / "answers.tsv")])
        line = next(x for x in out.splitlines() if x.startswith("SOAK_AUDIT "))
        res["audit"] = json.loads(line.split(" ", 1)[1])
        res["alive"] = [proc.poll() is None for proc, _ in gateways]
    finally:
        stop(procs)
    res["logs"] = _log_findings(workdir)
    return res


def _log_findings(workdir: Path) -> dict[str, Any]:
    """Tracebacks and error lines in the gateways' output, with the first few."""
    found: dict[str, Any] = {}
    for log in sorted(workdir.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()
        tracebacks = [i for i, x in enumerate(lines) if x.startswith("Traceback")]
        errors = [x for x in lines if " ERROR " in x or x.startswith("ERROR")]
        last_lines = []
        for i in tracebacks[:5]:  # the exception line that ends each traceback
            j = i + 1
            while j < len(lines) and (lines[j].startswith(" ") or lines[j] == ""):
                j += 1
            last_lines.append(lines[j] if j < len(lines) else "")
        found[log.name] = {"lines": len(lines), "tracebacks": len(tracebacks),
                           "error_lines": len(errors), "first_exceptions": last_lines}
    return found


def failures(res: dict[str, Any]) -> dict[str, Any]:
    """Every measure that must be zero and is not."""
    classes = res["classes"]
    figures = dict(res["audit"])
    figures["unexpected"] = sum(n for c, n in classes.items() if c.startswith("unexpected"))
    figures["stranded_money"] = Decimal(figures["stranded_money"])
    bad = {k: figures[k] for k in MUST_BE_ZERO if figures[k]}
    if not all(res.get("alive", [False])):
        bad["gateway_died"] = True
    return bad


def table(res: dict[str, Any]) -> str:
    load, audit_ = res["load"], res["audit"]
    classes = res["classes"]
    unexpected = {c: n for c, n in classes.items() if c.startswith("unexpected")}
    spurious = sum(n for c, n in unexpected.items() if "spurious_" in c)
    injected = res["injected"]
    rss = res["rss"]
    rows = [
        ("seconds of load / clients / fault rate",
         f"{load['seconds']:.0f} / {res['args']['concurrency']} / {res['args']['fault_rate']}"),
        ("topology", f"2 gateway processes, {res['keys']} keys over 2 tenants "
                     f"({res['clients_per_key']} clients per key = its concurrency limit)"),
        ("requests answered (plus warm-up)", f"{load['requests']} (+{res['warmup_requests']})"),
        ("requests/s, p50 / p99 ms", f"{load['rps']:.0f}, {load['p50_ms']} / {load['p99_ms']}"),
        ("gateway CPU ms per request (both)", res["cpu_ms_per_request"]),
        ("injected faults", f"{sum(injected.values())} (" + ", ".join(
            f"{k} {v}" for k, v in sorted(injected.items())) + ")"),
        ("ok", classes.get("ok", 0)),
        ("injected, answered as expected", classes.get("injected", 0)),
        ("unexpected answers (all)", sum(unexpected.values())),
        ("spurious refusals (limiter)", spurious),
        ("RSS MiB at start (after warm-up), per gateway", " / ".join(map(str, rss["start"]))),
        ("RSS MiB at end", " / ".join(map(str, rss["end"]))),
        ("RSS MiB max", " / ".join(map(str, rss["max"]))),
        ("writers drained after load (s)", res["drain_seconds"]),
        ("usage rows / answered requests", f"{audit_['rows']} / {audit_['answered']}"),
        ("rows lost", audit_["rows_lost"]),
        ("duplicate answers / rows without an answer",
         f"{audit_['duplicate_answers']} / {audit_['extra_rows']}"),
        ("ok answers recorded as errors / misbilled",
         f"{audit_['ok_recorded_as_error']} / {audit_['ok_misbilled']}"),
        ("faults recorded as success / charged though nothing was delivered",
         f"{audit_['fault_recorded_as_success']} / {audit_['charged_for_failure']}"),
        ("balance = initial - sum(row costs)", ", ".join(
            f"{b['tenant']} {'yes' if b['ok'] else 'NO: ' + b['balance'] + ' vs ' + b['expected']}"
            for b in audit_["balances"])),
        ("key quotas / ledger mismatches",
         f"{audit_['quota_mismatches']} / {audit_['ledger_mismatches']}"),
        ("limiter accounts drifting (of checked)",
         f"{audit_['drifting_accounts']} (of {audit_['accounts_checked']})"),
        ("stranded money (reservations left + drift)", audit_["stranded_money"]),
        ("concurrency slots left / journal rows left / dead rows",
         f"{audit_['slots_left']} / {audit_['journal_left']} / {audit_['dead_rows']}"),
        ("charged in total", audit_["charged_total"]),
        ("upstream requests (faults served)", f"{res['upstream']['requests']} (" + ", ".join(
            f"{k} {v}" for k, v in sorted(res["upstream"]["faults"].items())) + ")"),
    ]
    lines = ["| measure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines += ["", "| answers by class | count |", "|---|---|"]
    lines += [f"| {c} | {n} |" for c, n in sorted(classes.items(), key=lambda kv: -kv[1])]
    lines += ["", "| usage rows with an error: status, code | rows | charged |", "|---|---|---|"]
    lines += [f"| {s} {c or '-'} | {n} | {cost} |" for s, c, n, cost in audit_["row_errors"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="15 s of load, for CI")
    parser.add_argument("--seconds", type=float, default=None, help="default 600 (smoke 15)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--keys-per-tenant", type=int, default=4)
    parser.add_argument("--fault-rate", type=float, default=0.01)
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help="the faults to inject, comma-separated (default: all)")
    parser.add_argument("--database-url", default=os.environ.get(
        "SOAK_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/turnpike_soak"))
    parser.add_argument("--redis-url", default=os.environ.get(
        "SOAK_REDIS_URL", "redis://127.0.0.1:6379/13"))
    parser.add_argument("--json", help="write the results to this file too")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (answers, gateway logs) after a pass")
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = 15.0 if args.smoke else 600.0
    if shutil.which(NODE) is None:
        print("the soak needs Node.js", file=sys.stderr)
        return 2
    res = run(args)
    bad = failures(res)
    print(table(res))
    print()
    for name, found in res["logs"].items():
        print(f"- {name}: {found['tracebacks']} tracebacks, {found['error_lines']} error lines"
              + (f"; first: {found['first_exceptions']}" if found["first_exceptions"] else ""))
    print(f"- RSS MiB of each gateway every {res['rss']['every']:.0f} s: {res['rss']['samples']}")
    for sample in res["samples"][:10]:
        print(f"- unexpected: {json.dumps(sample)[:600]}")
    if res["audit"]["rows_lost_sample"]:
        print(f"- rows lost, e.g.: {res['audit']['rows_lost_sample']}")
    for d in res["audit"]["drifts"]:
        print(f"- drift: {d}")
    if bad or args.keep:
        print(f"- work directory (answers, gateway logs): {res['workdir']}")
    else:
        shutil.rmtree(res["workdir"], ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    print("\nRESULT: " + ("PASS" if not bad else "FAIL " + json.dumps(bad, default=str)))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
