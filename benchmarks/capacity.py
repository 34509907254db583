"""Capacity figures for sizing a production deployment (README, "Running on many hosts").

    python -m benchmarks.capacity                  # ~2 minutes
    python -m benchmarks.capacity --smoke          # seconds: proves it measures and reports
    python -m benchmarks.run --only capacity       # the same, from the suite's runner

The production set-up (PostgreSQL, Redis, ``GATEWAY_USAGE_SINK=redis`` with
``manage.py usagewriter``, full policy on the benchmark key), one gateway process
(``python -m portal.server``) in front of the Node mock upstream, driven by
``benchmarks/loadgen.js``. For each kind of request (Chat Completions and Responses, JSON and
100-chunk streams):

- **gateway CPU per request** from ``/proc`` (user + system, all threads) over the load;
  requests/s per core is its inverse. A shared machine changes the throughput much more
  than this figure, which is why sizing uses it.
- **Redis commands per request**, from ``INFO commandstats`` of a Redis server this script
  starts for itself (commandstats counts a whole server, so a shared one would count other
  people's traffic): the gateway's during the load (on the response path), and the usage
  writer's afterwards (off it: the writer runs only once the gateway has stopped, with
  ``usagewriter --once``), per row written. Commands run inside Lua scripts are counted
  like any other (that is what the server executes); script calls are also shown apart.
  ``INFO`` itself (this script's reads) is left out. And the Redis server's CPU per request.
- **PostgreSQL per request**, from ``pg_stat_database`` of the run's own database: commits
  and rows inserted + updated + deleted, by the gateway (its whole life: start, warm-up,
  load, drain) and by the usage writer (per row written). A backend reports its figures
  when it exits at the latest, so each reading waits until no client backend is connected
  to the database (the process that ran them has exited and its backends with it).
- **memory per 1,000 idle streams**: a fresh gateway's RSS (``VmRSS``; and ``Pss`` from
  ``smaps_rollup``) with no stream open, then with 1,000 and 2,000 Chat streams held open
  by an upstream that sends the first event and then waits.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.run import (
    BENCH,
    CHAT,
    NODE,
    PY,
    RESPONSES,
    ROOT,
    Target,
    ensure_database,
    free_port,
    loadgen,
    measure,
    proc_cpu_seconds,
    proc_rss_mib,
    seed,
    service_env,
    start_gateway,
    start_mock,
    stop,
    wait_port,
)

SCRIPT_COMMANDS = ("eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro")


def scenarios(smoke: bool) -> dict[str, dict[str, Any]]:
    chunks, clients = (10, 8) if smoke else (100, 64)
    stream = f"[[mock chunks={chunks}]]"
    return {
        "chat": dict(path="/chat/completions", body=CHAT, concurrency=clients),
        "chat_stream": dict(path="/chat/completions", body={
            **CHAT, "stream": True, "messages": [{"role": "user", "content": stream}]},
            concurrency=clients, stream=True),
        # The same streams as a model sends them (events 5 ms apart, every upstream read one
        # event): the CPU per event relayed that sizing for long-lived streams needs.
        "chat_stream_paced": dict(path="/chat/completions", body={
            **CHAT, "stream": True, "messages": [{"role": "user", "content":
                                                  f"[[mock chunks={chunks} delay=5]]"}]},
            concurrency=clients * 2, stream=True),
        "responses": dict(path="/responses", body=RESPONSES, concurrency=clients),
        "responses_stream": dict(path="/responses", body={
            **RESPONSES, "stream": True, "input": stream}, concurrency=clients, stream=True),
    }


# The usage writer, measured: ``usagewriter --once`` drains at most 100 batches a call.
WRITER = """
import io, json, time
import django
django.setup()
from django.conf import settings
from django.core.management import call_command
written = cpu = 0.0
while True:
    out = io.StringIO()
    started = time.process_time()
    call_command("usagewriter", once=True, json=True, stdout=out)
    cpu += time.process_time() - started
    batch = json.loads(out.getvalue().strip().splitlines()[-1])["written"]
    written += batch
    if batch < 100 * settings.GATEWAY_USAGE_BATCH_SIZE:
        break
print(json.dumps({"written": written, "cpu": cpu}))
"""


# --- readings ------------------------------------------------------------------------------

class RedisServer:
    """A private redis-server (no persistence) whose counters only this run moves."""

    def __init__(self, port: int = 0) -> None:
        import redis

        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="turnpike-capacity-redis-")
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis.from_url(self.url)

    def commandstats(self) -> dict[str, int]:
        stats = self.client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()
                if name != "cmdstat_info"}

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.proc.pid)

    def close(self) -> None:
        self.client.close()
        stop([self.proc])
        shutil.rmtree(self.dir, ignore_errors=True)


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


class Postgres:
    """``pg_stat_database`` of the run's database, read from the ``postgres`` database (so
    the readings' own transactions are not counted)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = url.rsplit("/", 1)[1]
        self.admin = url.rsplit("/", 1)[0] + "/postgres"

    def settled(self, timeout: float = 60) -> dict[str, int]:
        """The counters once no client backend is connected to the database: every backend
        that worked for the processes measured has exited, and reported its figures on the
        way out."""
        import psycopg

        deadline = time.monotonic() + timeout
        with psycopg.connect(self.admin, autocommit=True) as conn:
            while True:
                (backends,) = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND "
                    "backend_type = 'client backend'", (self.name,)).fetchone() or (0,)
                if not backends:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{backends} backend(s) still connected to {self.name}")
                time.sleep(0.05)
            row = conn.execute(
                "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted "
                "FROM pg_stat_database WHERE datname = %s", (self.name,)).fetchone()
            assert row is not None
            counts = dict(zip(("commits", "rollbacks", "inserted", "updated", "deleted"),
                              map(int, row), strict=True))
        # Rows written by table (user tables only: no catalogs, no temporary tables). This
        # reading is a connection to the database itself: its one transaction shows in the
        # next reading's commits (``delta`` takes it off), and the next reading waits for
        # its backend to end like any other.
        # A partition's rows count under its partitioned table (the usage log's months).
        with psycopg.connect(self.url, autocommit=True) as conn:
            for name, written in conn.execute(
                    "SELECT coalesce(pg_partition_root(relid)::regclass::text, relname), "
                    "sum(n_tup_ins + n_tup_upd + n_tup_del) FROM pg_stat_user_tables "
                    "WHERE n_tup_ins + n_tup_upd + n_tup_del > 0 GROUP BY 1"):
                counts[f"table:{name}"] = int(written)
        return counts

    @staticmethod
    def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
        """What happened between two readings, less the first reading's own commit."""
        out = delta(after, before)
        out["commits"] = out.get("commits", 0) - 1
        return out


def pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def in_flight(port: int) -> int:
    """The gateway's requests in flight (``/_gateway/status``); -1 while it is too busy
    accepting a thousand connections to answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_gateway/status",
                                    timeout=10) as r:
            return int(json.loads(r.read())["in_flight"])
    except OSError:
        return -1


# --- the run -------------------------------------------------------------------------------

@dataclass
class Row:
    scenario: str
    requests: int
    rps: float
    errors: int
    cpu_ms_per_request: float
    requests_per_core: float
    redis_on_path: float  # commands per request, the gateway's, during the load
    redis_scripts: float  # of which script calls
    redis_writer: float  # commands per usage row, the usage writer's
    redis_cpu_us: float  # Redis server CPU per request (gateway + writer)
    rows_written: int
    pg_gateway_commits: float  # per request, the gateway's whole life
    pg_gateway_tuples: float
    pg_writer_commits: float  # per row written
    pg_writer_tuples: float
    # per row written: commits, rows inserted/updated/deleted (the whole database, system
    # catalogs included), and "table:NAME": rows written to each user table
    pg_writer: dict[str, float]
    writer_cpu_ms: float  # usage writer CPU per row (its start-up cost taken off)
    redis_commands: dict[str, float] = field(default_factory=dict)


@dataclass
class Memory:
    streams: int
    rss_mib: float
    pss_mib: float


class Capacity:
    def __init__(self, database_url: str, redis_port: int = 0, seconds: float = 10,
                 smoke: bool = False) -> None:
        raise_fd_limit()
        ensure_database(database_url)
        self.seconds, self.smoke = seconds, smoke
        self.redis = RedisServer(redis_port)
        self.pg = Postgres(database_url)
        self.procs: list[subprocess.Popen[Any]] = []
        # No load balancer to notice the drain: a stopping gateway need not wait for one,
        # nor for streams its clients have left.
        self.env = service_env(database_url, self.redis.url, "bench:",
                               GATEWAY_USAGE_SINK="redis", GATEWAY_DRAIN_GRACE_SECONDS="0",
                               GATEWAY_DRAIN_SECONDS="10")
        self.mock_port = start_mock(self.procs, self.env)
        self.key = seed(self.env, self.mock_port)

    def close(self) -> None:
        stop(self.procs)
        self.redis.close()

    @contextmanager
    def gateway(self) -> Iterator[tuple[subprocess.Popen[Any], Target, int]]:
        procs: list[subprocess.Popen[Any]] = []
        log = Path(self.redis.dir) / "gateway.log"  # the last gateway's output
        log.unlink(missing_ok=True)
        proc, port = start_gateway(procs, self.env, log)
        try:
            deadline = time.monotonic() + 180  # a loaded machine starts Django slowly
            while True:
                try:
                    wait_port(port, timeout=1)
                    break
                except RuntimeError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the gateway did not start (exit status "
                                           f"{proc.poll()}):\n{log.read_text()[-3000:]}") from None
            yield proc, Target("turnpike", f"http://127.0.0.1:{port}/v1", self.key,
                               pid=proc.pid), port
        finally:
            stop(procs)  # SIGTERM: the drain pushes what it holds to Redis, then exits

    def _writer(self) -> tuple[int, float]:
        """``manage.py usagewriter --once`` until the journal is empty, in a process of its
        own (its database session ends with it); rows written and the CPU the drains took
        (Django's start-up left out)."""
        out = subprocess.run([PY, "-c", WRITER], cwd=ROOT, env=self.env, capture_output=True,
                             text=True)
        if out.returncode:
            raise RuntimeError(f"usagewriter --once failed:\n{out.stderr[-3000:]}")
        done = json.loads(out.stdout.strip().splitlines()[-1])
        return int(done["written"]), float(done["cpu"])

    def scenario(self, name: str, spec: dict[str, Any]) -> Row:
        pg0 = self.pg.settled()
        with self.gateway() as (_, target, _port):
            loadgen(target.base_url + spec["path"], spec["body"], self.key, 4, 1,
                    spec.get("stream", False))  # warm-up: snapshots, pools, scripts
            redis0, rcpu0 = self.redis.commandstats(), self.redis.cpu_seconds()
            result = measure(name, target, seconds=self.seconds, **spec)
            gateway_cmds = delta(self.redis.commandstats(), redis0)
            gateway_rcpu = self.redis.cpu_seconds() - rcpu0
        pg1 = self.pg.settled()
        redis1, rcpu1 = self.redis.commandstats(), self.redis.cpu_seconds()
        rows, writer_cpu = self._writer()
        writer_cmds = delta(self.redis.commandstats(), redis1)
        writer_rcpu = self.redis.cpu_seconds() - rcpu1
        pg2 = self.pg.settled()
        n = result.load["requests"]
        if not n or not rows or result.cpu_ms_per_request is None:
            raise RuntimeError(f"{name}: nothing measured ({result.load}, {rows} rows)")
        gateway_pg, writer_pg = self.pg.delta(pg1, pg0), self.pg.delta(pg2, pg1)

        def tuples(d: dict[str, int]) -> int:
            return sum(v for k, v in d.items() if k.startswith("table:"))

        return Row(
            scenario=name, requests=n, rps=result.load["rps"], errors=result.load["errors"],
            cpu_ms_per_request=result.cpu_ms_per_request,
            requests_per_core=round(1000 / result.cpu_ms_per_request),
            redis_on_path=round(sum(gateway_cmds.values()) / n, 2),
            redis_scripts=round(sum(gateway_cmds.get(c, 0) for c in SCRIPT_COMMANDS) / n, 2),
            redis_writer=round(sum(writer_cmds.values()) / rows, 3),
            redis_cpu_us=round((gateway_rcpu + writer_rcpu) * 1e6 / n, 1),
            rows_written=rows,
            pg_gateway_commits=round(gateway_pg.get("commits", 0) / n, 4),
            pg_gateway_tuples=round(tuples(gateway_pg) / n, 4),
            pg_writer_commits=round(writer_pg.get("commits", 0) / rows, 4),
            pg_writer_tuples=round(tuples(writer_pg) / rows, 3),
            pg_writer={k: round(v / rows, 4) for k, v in writer_pg.items()},
            writer_cpu_ms=round(writer_cpu * 1000 / rows, 3),
            redis_commands={k: round(v / n, 3) for k, v in sorted(
                gateway_cmds.items(), key=lambda kv: -kv[1])})

    def memory(self, levels: list[int], hold_ms: int = 600_000) -> list[Memory]:
        """A fresh gateway's memory with 0, then each of ``levels`` Chat streams open at
        once: the mock sends the first event and waits ``hold_ms`` before the next."""
        body = {**CHAT, "stream": True,
                "messages": [{"role": "user", "content": f"[[mock chunks=1 delay={hold_ms}]]"}]}
        readings: list[Memory] = []
        clients: list[subprocess.Popen[Any]] = []
        with self.gateway() as (proc, target, port):
            try:
                loadgen(target.base_url + "/chat/completions", {**body, "messages": [
                    {"role": "user", "content": "[[mock chunks=10]]"}]}, self.key, 64, 1, True)
                time.sleep(1)
                readings.append(self._memory_now(proc.pid, 0))
                held = 0
                for level in levels:
                    cfg = {"url": target.base_url + "/chat/completions", "body": body,
                           "headers": {"Authorization": f"Bearer {self.key}"},
                           "concurrency": level - held, "requests": level - held,
                           "seconds": 60, "stream": True}
                    clients.append(subprocess.Popen([NODE, str(BENCH / "loadgen.js"),
                                                     json.dumps(cfg)], stdout=subprocess.PIPE))
                    held = level
                    deadline = time.monotonic() + 120
                    while in_flight(port) < level:
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"{level} streams never opened")
                        time.sleep(0.2)
                    time.sleep(2)  # every first event relayed
                    readings.append(self._memory_now(proc.pid, level))
            finally:
                for client in clients:  # the clients leave; the gateway ends the streams
                    client.send_signal(signal.SIGTERM)
                    client.wait()
        return readings

    @staticmethod
    def _memory_now(pid: int, streams: int) -> Memory:
        return Memory(streams, round(proc_rss_mib(pid), 1), round(pss_mib(pid), 1))


def raise_fd_limit() -> None:
    """Thousands of open streams take two sockets each in the gateway (and one in the mock
    and the client): every process started from here inherits the raised limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def per_thousand(memory: list[Memory]) -> list[float]:
    out = []
    for before, after in zip(memory, memory[1:], strict=False):
        out.append(round((after.rss_mib - before.rss_mib) * 1000 / (after.streams
                                                                       - before.streams), 1))
    return out


def table(rows: list[Row], memory: list[Memory]) -> str:
    lines = [
        "| scenario | requests | req/s measured | gateway CPU ms/req | req/s per core | "
        "Redis cmds/req on path (script calls) | Redis cmds/row writer | Redis CPU µs/req | "
        "PG commits/req gateway | PG commits/row writer | PG table rows written/row writer | "
        "writer CPU ms/row | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r.scenario} | {r.requests} | {r.rps:.0f} | {r.cpu_ms_per_request:.3f} | "
            f"{r.requests_per_core} | {r.redis_on_path:.2f} ({r.redis_scripts:.2f}) | "
            f"{r.redis_writer:.3f} | {r.redis_cpu_us:.1f} | {r.pg_gateway_commits:.4f} | "
            f"{r.pg_writer_commits:.4f} | {r.pg_writer_tuples:.3f} | "
            f"{r.writer_cpu_ms:.3f} | {r.errors} |")
    lines += ["", "| open idle streams | gateway RSS MiB | PSS MiB | RSS per 1,000 streams MiB |",
              "|---|---|---|---|"]
    steps = [None, *per_thousand(memory)]
    for m, step in zip(memory, steps, strict=True):
        lines.append(f"| {m.streams} | {m.rss_mib} | {m.pss_mib} | "
                     f"{step if step is not None else '-'} |")
    lines += ["", "PostgreSQL rows written per usage row, by table (writer):"]
    for r in rows:
        lines.append(f"- {r.scenario}: " + ", ".join(
            f"{k.removeprefix('table:')} {v}" for k, v in r.pg_writer.items()
            if k.startswith("table:")))
    lines += ["", "On-path Redis commands per request, by command:"]
    for r in rows:
        lines.append(f"- {r.scenario}: " + ", ".join(f"{k} {v}" for k, v in
                                                     r.redis_commands.items()))
    return "\n".join(lines)


def run(database_url: str, seconds: float, smoke: bool, redis_port: int = 0,
        levels: list[int] | None = None, only: set[str] | None = None,
        json_path: str | None = None) -> tuple[list[Row], list[Memory]]:
    levels = levels or ([50, 100] if smoke else [1000, 2000])
    cap = Capacity(database_url, redis_port, seconds, smoke)
    try:
        rows = []
        for name, spec in scenarios(smoke).items():
            if only and name not in only:
                continue
            rows.append(cap.scenario(name, spec))
            print(json.dumps(asdict(rows[-1])), flush=True)
        memory = cap.memory(levels)
        print(json.dumps([asdict(m) for m in memory]), flush=True)
    finally:
        cap.close()
    print()
    print(table(rows, memory))
    if json_path:
        Path(json_path).write_text(json.dumps({"rows": [asdict(r) for r in rows],
                                               "memory": [asdict(m) for m in memory],
                                               "rss_per_1000_streams_mib":
                                                   per_thousand(memory)}, indent=1))
    return rows, memory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="seconds, for CI")
    parser.add_argument("--seconds", type=float, default=None, help="load per scenario")
    parser.add_argument("--only", help="comma-separated scenarios: " + ", ".join(
        scenarios(False)))
    parser.add_argument("--streams", default=None,
                        help="idle streams to hold, comma-separated levels (1000,2000)")
    parser.add_argument("--database-url", default=os.environ.get(
        "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/turnpike_capacity"),
        help="its own database: pg_stat_database counts everyone's work in it")
    parser.add_argument("--redis-port", type=int, default=0,
                        help="port of the private redis-server it starts (default: any free)")
    parser.add_argument("--json", help="write the results to this file too")
    args = parser.parse_args(argv)
    seconds = args.seconds or (1.0 if args.smoke else 10.0)
    levels = [int(x) for x in args.streams.split(",")] if args.streams else None
    if levels is not None and (levels != sorted(set(levels)) or levels[0] <= 0):
        parser.error("--streams: increasing positive numbers, e.g. 1000,2000")
    rows, memory = run(args.database_url, seconds, args.smoke, args.redis_port, levels,
                       set(args.only.split(",")) if args.only else None, args.json)
    return 0 if rows and all(r.errors == 0 for r in rows) and len(memory) > 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
