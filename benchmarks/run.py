"""Turnpike's benchmark suite: one command, every number in BENCHMARKS.md.

    python -m benchmarks.run                 # the full suite (a few minutes)
    python -m benchmarks.run --smoke         # seconds: proves the suite runs and reports
    python -m benchmarks.run --only nonstream,stream --seconds 5
    python -m benchmarks.run --peer litellm=http://127.0.0.1:4000/v1 --peer-key sk-...
    python -m benchmarks.run --observability --rounds 4 --seconds 8   # metrics on vs off
    python -m benchmarks.run --only capacity   # sizing figures (benchmarks/capacity.py)
    python -m benchmarks.run --bare --only nonstream,stream   # + the bare daphne/aiohttp proxy
    python -m benchmarks.run --scaling --rounds 3 --seconds 8  # 1 gateway process against 2

It starts a fast mock upstream (Node, benchmarks/mock_upstream.js) and Turnpike (daphne +
uvloop, PostgreSQL + Redis, full policy: key auth, every limit in Redis, usage metering),
drives them with benchmarks/loadgen.js (Node, keep-alive) and measures the gateway process's
CPU time and RSS from /proc. Each scenario also runs straight against the mock (the floor),
and against any --peer gateway, and the table shows the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
PY = sys.executable
NODE = shutil.which("node") or "node"
CHAT = {"model": "bench-model", "messages": [{"role": "user", "content": "Say hello."}]}
RESPONSES = {"model": "bench-model", "input": "Say hello."}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def codex_body(chunks: int) -> dict[str, Any]:
    """A request the size and shape of the Codex CLI's (~40 KB: a long developer message
    with some non-ASCII text, a dozen function tools, store:false, the include)."""
    prose = ("You are a coding agent running in a terminal — read files, run commands, "
             "edit code; keep the user informed. ") * 330
    tools = [{"type": "function", "name": f"tool_{i}", "description": "Runs a thing. " * 20,
              "strict": False, "parameters": {"type": "object", "properties": {
                  f"arg_{j}": {"type": "string", "description": "an argument " * 5}
                  for j in range(6)}, "required": ["arg_0"]}} for i in range(12)]
    return {"model": "bench-model", "stream": True, "store": False,
            "tool_choice": "auto", "parallel_tool_calls": True, "tools": tools,
            "include": ["reasoning.encrypted_content"], "prompt_cache_key": "bench-session",
            "input": [{"type": "message", "role": "developer",
                       "content": [{"type": "input_text", "text": prose}]},
                      {"type": "message", "role": "user", "content": [
                          {"type": "input_text", "text": f"[[mock chunks={chunks}]]"}]}]}


# What the Codex CLI adds to a request on its socket.
CLIENT_METADATA = {"client_metadata": {"x-codex-installation-id": "bench",
                                       "x-codex-window-id": "bench:0", "session_id": "bench"}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Target:
    name: str
    base_url: str  # .../v1
    key: str = "unused"
    pid: int | None = None  # the process whose CPU/RSS is measured
    more: list[tuple[str, int]] = field(default_factory=list)  # other processes: (url, pid)


@dataclass
class Result:
    scenario: str
    target: str
    load: dict[str, Any]
    cpu_ms_per_request: float | None = None
    rss_mib: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def loadgen(url: str | list[str], body: dict[str, Any], key: str, concurrency: int,
            seconds: float, stream: bool = False, requests: int = 0) -> dict[str, Any]:
    """Run loadgen.js (``url``: one, or a list to spread the clients over); its own CPU
    seconds are added to the result as ``loadgen_cpu_s``."""
    cfg = {"urls" if isinstance(url, list) else "url": url, "body": body,
           "headers": {"Authorization": f"Bearer {key}"}, "concurrency": concurrency,
           "seconds": seconds, "stream": stream, "requests": requests}
    before = children_cpu_seconds()
    out = subprocess.run([NODE, str(BENCH / "loadgen.js"), json.dumps(cfg)], capture_output=True,
                         text=True, timeout=seconds + 120, check=True)
    load: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    load["loadgen_cpu_s"] = round(children_cpu_seconds() - before, 3)
    return load


def ws_loadgen(url: str, body: dict[str, Any], key: str, concurrency: int, seconds: float,
               pid: int | None, chain: dict[str, Any] | None = None
               ) -> tuple[dict[str, Any], float | None, float | None]:
    """Responses turns over WebSockets (wsloadgen.js: one socket per client, a turn at a
    time; ``chain``: continued with previous_response_id, see there). Returns the load,
    and the process's CPU seconds spent opening the sockets and from then on (the turns
    alone)."""
    cfg = {"url": url, "body": body, "headers": {"Authorization": f"Bearer {key}"},
           "concurrency": concurrency, "seconds": seconds, "chain": chain}
    start = proc_cpu_seconds(pid) if pid else None
    proc = subprocess.Popen([NODE, "--experimental-websocket", str(BENCH / "wsloadgen.js"),
                             json.dumps(cfg)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    json.loads(proc.stdout.readline())  # {"ready": N}: every socket is open
    ready = proc_cpu_seconds(pid) if pid else None
    out, _ = proc.communicate(timeout=seconds + 120)
    if proc.returncode:
        raise RuntimeError(f"wsloadgen.js exited with {proc.returncode}")
    load = json.loads(out.strip().splitlines()[-1])
    end = proc_cpu_seconds(pid) if pid else None
    if start is None or ready is None or end is None:
        return load, None, None
    return load, ready - start, end - ready


def measure(scenario: str, target: Target, path: str, body: dict[str, Any], concurrency: int,
            seconds: float, stream: bool = False, websocket: bool = False,
            chain: dict[str, Any] | None = None) -> Result:
    if websocket:
        return measure_websocket(scenario, target, path, body, concurrency, seconds, chain)
    pids = ([target.pid] if target.pid else []) + [pid for _, pid in target.more]
    before = sum(proc_cpu_seconds(pid) for pid in pids)
    urls = [target.base_url + path] + [url + path for url, _ in target.more]
    load = loadgen(urls if target.more else urls[0], body, target.key, concurrency, seconds,
                   stream)
    result = Result(scenario, target.name, load)
    if pids and load["requests"]:
        cpu = sum(proc_cpu_seconds(pid) for pid in pids) - before
        result.cpu_ms_per_request = round(cpu * 1000 / load["requests"], 3)
        result.rss_mib = round(proc_rss_mib(pids[0]), 1)
        result.extra["loadgen_cpu_ms_per_request"] = round(
            load["loadgen_cpu_s"] * 1000 / load["requests"], 3)
    return result


def measure_websocket(scenario: str, target: Target, path: str, body: dict[str, Any],
                      concurrency: int, seconds: float,
                      chain: dict[str, Any] | None = None) -> Result:
    """CPU per turn counts the turns alone; opening the sockets (once per client session)
    is reported apart, as ``connect_cpu_ms`` per socket."""
    url = "ws" + (target.base_url + path).removeprefix("http")
    load, connect, turns = ws_loadgen(url, body, target.key, concurrency, seconds, target.pid,
                                      chain)
    result = Result(scenario, target.name, load)
    if turns is not None and connect is not None and load["requests"] and target.pid:
        result.cpu_ms_per_request = round(turns * 1000 / load["requests"], 3)
        result.rss_mib = round(proc_rss_mib(target.pid), 1)
        result.extra["connect_cpu_ms"] = round(connect * 1000 / concurrency, 3)
    return result


# --- environment ---------------------------------------------------------------------------
# Shared with benchmarks/soak.py: the services a run needs, started and stopped the same way.

def service_env(database_url: str, redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    """The environment of Turnpike's processes (gateways, manage.py) for one run."""
    return {**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings",
            "DATABASE_URL": database_url, "REDIS_URL": redis_url,
            "SECRET_KEY": os.environ.get("SECRET_KEY", "bench-secret"),
            "GATEWAY_REDIS_PREFIX": prefix, "LOG_LEVEL": "WARNING", **extra}


def spawn(procs: list[subprocess.Popen[Any]], args: list[str], env: dict[str, str],
          log: Path | None = None) -> subprocess.Popen[Any]:
    """Start a process in the repository (output to ``log``, or nowhere); ``procs`` keeps it
    for ``stop``."""
    out: Any = subprocess.DEVNULL if log is None else log.open("ab")
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
                            if log is not None else subprocess.DEVNULL)
    if log is not None:
        out.close()
    procs.append(proc)
    return proc


def start_mock(procs: list[subprocess.Popen[Any]], env: dict[str, str]) -> int:
    """The Node mock upstream (benchmarks/mock_upstream.js); returns its port."""
    port = free_port()
    spawn(procs, [NODE, str(BENCH / "mock_upstream.js"), str(port)], env)
    wait_port(port)
    return port


def start_gateway(procs: list[subprocess.Popen[Any]], env: dict[str, str],
                  log: Path | None = None) -> tuple[subprocess.Popen[Any], int]:
    """One Turnpike process (``python -m portal.server``: daphne + uvloop), not yet waited
    for (``wait_port``); returns it and its port."""
    port = free_port()
    proc = spawn(procs, [PY, "-m", "portal.server", "-b", "127.0.0.1", "-p", str(port),
                         "-v", "0"], env, log)
    return proc, port


def migrate(env: dict[str, str]) -> None:
    subprocess.run([PY, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)


def manage_shell(env: dict[str, str], script: str) -> str:
    """Run ``script`` in ``manage.py shell -c``; returns its standard output."""
    out = subprocess.run([PY, "manage.py", "shell", "-c", script], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"manage.py shell failed:\n{out.stdout[-2000:]}{out.stderr[-4000:]}")
    return out.stdout


def flush_redis_prefix(redis_url: str, prefix: str) -> None:
    """Delete every Redis key under ``prefix`` (a run's private namespace)."""
    redis_flush = f"import redis; r=redis.Redis.from_url({redis_url!r}); " \
                  f"[r.delete(k) for k in r.scan_iter({prefix + '*'!r}, count=1000)]"
    subprocess.run([PY, "-c", redis_flush], check=True)


def stop(procs: list[subprocess.Popen[Any]]) -> None:
    """SIGTERM every process (last started first), then wait; SIGKILL what hangs."""
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def seed(env: dict[str, str], mock_port: int, keys: int = 1, usage_rows: int = 0,
         capture: bool = False) -> str:
    """Migrate, point the upstreams at the mock, make the benchmark key (every limit far
    above the load) and ``keys - 1`` filler keys, fill the usage log to ``usage_rows``, and
    empty the run's Redis namespace; returns the key's secret."""
    migrate(env)
    script = f"""
import sys
from datetime import timedelta
from django.utils import timezone
from gateway.models import Upstream
from gateway.services import upstream_create
from keys.models import ApiKey, Tenant
from keys.services import key_create, tenant_get_or_create
from keys.secrets import generate_secret, hash_secret, display_prefix
Upstream.objects.all().delete()
mock = "http://127.0.0.1:{mock_port}/v1"
upstream_create(name="mock", kind="openai", base_url=mock, models=["bench-model"],
                api_keys=["sk-mock"])
upstream_create(name="mock-chat", kind="openai-chat", base_url=mock,
                models=["bench-chat-only"], api_keys=["sk-mock"])
tenant, _ = tenant_get_or_create(name="bench")
ApiKey.objects.filter(tenant=tenant).delete()
capture = {{"capture_bodies": "on", "capture_bodies_until": timezone.now() + timedelta(days=1)}}
made = key_create(tenant=tenant, name="bench", rpm=10**9, rpd=10**9, concurrency=10**6,
                  **(capture if {capture} else {{}}))
extra = {keys} - 1
if extra > 0:
    rows = []
    for i in range(extra):
        s = generate_secret()
        rows.append(ApiKey(tenant=tenant, name=f"filler {{i}}", prefix=display_prefix(s),
                           last4=s[-4:], secret_hash=hash_secret(s)))
    ApiKey.objects.bulk_create(rows, batch_size=5000)
usage_rows = {usage_rows}
if usage_rows:
    from django.db import connection
    from billing.models import UsageLog
    have = UsageLog.objects.count()
    if have < usage_rows:  # a big table, made once: INSERT ... SELECT in the database
        with connection.cursor() as cur:
            cur.execute(
                "INSERT INTO billing_usagelog (created_at, request_id, key_prefix, endpoint, "
                "model, status_code, error_code, stream, input_tokens, cached_tokens, "
                "output_tokens, reasoning_tokens, cost, latency_ms, user_agent, attempts, "
                "estimated) "
                "SELECT now() - (g %% 86400) * interval '1 second', 'bench_' || g, 'sk-tp-x', "
                "'chat/completions', 'bench-model', 200, '', false, 10, 0, 100, 0, 0, 1, "
                "'bench', '[]', false FROM generate_series(%s, %s) g",
                [have + 1, usage_rows])
sys.stdout.write(made.secret)
"""
    out = manage_shell(env, script)
    flush_redis_prefix(env["REDIS_URL"], env["GATEWAY_REDIS_PREFIX"])
    return out.strip().splitlines()[-1]


class Stack:
    """The mock upstream and one Turnpike process against PostgreSQL and Redis."""

    def __init__(self, database_url: str, redis_url: str, keys: int,
                 usage_rows: int = 0, capture: bool = False) -> None:
        self.procs: list[subprocess.Popen[Any]] = []
        self.env = service_env(database_url, redis_url, "bench:")
        self.mock_port = start_mock(self.procs, self.env)
        self.mock = self.procs[-1]
        self.keys = keys
        self.usage_rows = usage_rows
        self.capture = capture
        self.key = self._seed()
        self.gateway, self.port = start_gateway(self.procs, self.env)
        if self.env.get("GATEWAY_USAGE_SINK") == "redis":  # usage written by its own process
            spawn(self.procs, [PY, "manage.py", "usagewriter"], self.env)
        wait_port(self.port)

    def _seed(self) -> str:
        return seed(self.env, self.mock_port, self.keys, self.usage_rows, self.capture)

    def targets(self) -> tuple[Target, Target]:
        direct = Target("direct (mock)", f"http://127.0.0.1:{self.mock_port}/v1",
                        pid=self.mock.pid)
        turnpike = Target("turnpike", f"http://127.0.0.1:{self.port}/v1", self.key,
                          pid=self.gateway.pid)
        return direct, turnpike

    def close(self) -> None:
        stop(self.procs)


# --- scenarios -----------------------------------------------------------------------------

def scenarios(seconds: float, smoke: bool) -> dict[str, dict[str, Any]]:
    chunks = 100
    return {
        "nonstream": dict(path="/chat/completions", body=CHAT, concurrency=64,
                          seconds=seconds),
        "stream": dict(path="/chat/completions", body={**CHAT, "stream": True,
                       "messages": [{"role": "user", "content": f"[[mock chunks={chunks}]]"}]},
                       concurrency=64, seconds=seconds, stream=True),
        "stream_responses": dict(path="/responses", body={**RESPONSES, "stream": True,
                                 "input": f"[[mock chunks={chunks}]]"}, concurrency=64,
                                 seconds=seconds, stream=True),
        # A Responses client on a Chat-only upstream: every event translated.
        "stream_translated": dict(path="/responses", body={
            "model": "bench-chat-only", "stream": True, "input": f"[[mock chunks={chunks}]]"},
            concurrency=64, seconds=seconds, stream=True, turnpike_only=True),
        # The same turns over Responses over WebSocket (one socket per client, a turn at a
        # time): compare with stream_responses and stream_translated.
        "ws_responses": dict(path="/responses", body={**RESPONSES, "stream": True,
                             "input": f"[[mock chunks={chunks}]]"}, concurrency=64,
                             seconds=seconds, websocket=True, turnpike_only=True),
        "ws_translated": dict(path="/responses", body={
            "model": "bench-chat-only", "stream": True, "input": f"[[mock chunks={chunks}]]"},
            concurrency=64, seconds=seconds, websocket=True, turnpike_only=True),
        # A Codex-sized request (~40 KB), 20 events back: over HTTP, the same request as a
        # socket's turn, and on a socket continued the way Codex does (4 turns of one new
        # item and previous_response_id after each full one).
        "codex_http": dict(path="/responses", body=codex_body(20), concurrency=16,
                           seconds=seconds, stream=True, turnpike_only=True),
        "codex_ws": dict(path="/responses", body={**codex_body(20), **CLIENT_METADATA},
                         concurrency=16, seconds=seconds, websocket=True, turnpike_only=True),
        "codex_ws_chained": dict(path="/responses", body={**codex_body(20), **CLIENT_METADATA},
                                 concurrency=16, seconds=seconds, websocket=True,
                                 turnpike_only=True, chain={"turns": 4, "input": [
                                     {"type": "function_call_output", "call_id": "call_1",
                                      "output": "ok [[mock chunks=20]]"}]}),
        "latency_1_client": dict(path="/chat/completions", body=CHAT, concurrency=1,
                                 seconds=seconds),
        # Responses as JSON, passed through and translated (these are stored: see
        # benchmarks/stored.py for store on against off).
        "nonstream_responses": dict(path="/responses", body=RESPONSES, concurrency=64,
                                    seconds=seconds),
        "nonstream_translated": dict(path="/responses", body={
            "model": "bench-chat-only", "input": "Say hello."}, concurrency=64,
            seconds=seconds, turnpike_only=True),
        # Streams as a model sends them: 100 events 5 ms apart, 128 at once, so each upstream
        # read is one event (the unpaced "stream" above can arrive in a read or two): what a
        # stream's relay costs per event when every event is a wake-up of its own.
        "stream_paced": dict(path="/chat/completions", body={**CHAT, "stream": True,
                             "messages": [{"role": "user",
                                           "content": f"[[mock chunks={chunks} delay=5]]"}]},
                             concurrency=128, seconds=seconds, stream=True),
        "ttfb_paced": dict(path="/chat/completions", body={**CHAT, "stream": True,
                           "messages": [{"role": "user",
                                         "content": "[[mock chunks=5 delay=20]]"}]},
                           concurrency=1, seconds=seconds, stream=True),
    } if not smoke else {
        "nonstream": dict(path="/chat/completions", body=CHAT, concurrency=8, seconds=seconds),
        "stream": dict(path="/chat/completions", body={**CHAT, "stream": True,
                       "messages": [{"role": "user", "content": "[[mock chunks=10]]"}]},
                       concurrency=8, seconds=seconds, stream=True),
    }


def idle_streams(target: Target, count: int) -> Result:
    """``count`` streams held open at once (the upstream holds them); RSS while they wait."""
    body = {**CHAT, "stream": True,
            "messages": [{"role": "user", "content": "[[mock chunks=1 hold=8000]]"}]}
    cfg = {"url": target.base_url + "/chat/completions", "body": body,
           "headers": {"Authorization": f"Bearer {target.key}"}, "concurrency": count,
           "seconds": 1, "stream": True, "requests": count}
    proc = subprocess.Popen([NODE, str(BENCH / "loadgen.js"), json.dumps(cfg)],
                            stdout=subprocess.PIPE, text=True)
    time.sleep(5)  # all connected and waiting
    rss = proc_rss_mib(target.pid) if target.pid else None
    out, _ = proc.communicate(timeout=120)
    load = json.loads(out.strip().splitlines()[-1])
    return Result("idle_streams", target.name, load, rss_mib=round(rss, 1) if rss else None,
                  extra={"held": count})


LITELLM_KEY = "sk-bench-litellm-master-key-0123456789"


def start_litellm(mock_port: int, venv: Path) -> tuple[subprocess.Popen[Any], Target]:
    """LiteLLM's proxy, installed into its own venv (created on first use), one worker,
    in front of the same mock: the gateway people replace with Turnpike, measured side by
    side."""
    binary = venv / "bin" / "litellm"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "litellm[proxy]"],
                       check=True)
    config = venv / "bench-config.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: bench-model\n"
        "    litellm_params:\n"
        "      model: openai/bench-model\n"
        f"      api_base: http://127.0.0.1:{mock_port}/v1\n"
        "      api_key: sk-mock\n"
        "litellm_settings:\n  telemetry: false\n"
        f"general_settings:\n  master_key: {LITELLM_KEY}\n")
    port = free_port()
    proc = subprocess.Popen(
        [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
         "--num_workers", "1"], env={**os.environ, "LITELLM_TELEMETRY": "False"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, timeout=180)
    return proc, Target("litellm", f"http://127.0.0.1:{port}/v1", LITELLM_KEY, pid=proc.pid)


def start_bare(stack: Stack) -> Target:
    """The bare daphne + aiohttp proxy (benchmarks/bare_proxy.py) in front of the stack's
    mock: the same server and upstream client as Turnpike, no policy."""
    env = {**stack.env, "BARE_PROXY_UPSTREAM": f"http://127.0.0.1:{stack.mock_port}/v1"}
    port = free_port()
    proc = spawn(stack.procs, [PY, "-m", "portal.server", "-b", "127.0.0.1", "-p", str(port),
                               "-v", "0", "benchmarks.bare_proxy:application"], env)
    wait_port(port)
    return Target("bare proxy", f"http://127.0.0.1:{port}/v1", pid=proc.pid)


def run_suite(args: argparse.Namespace) -> list[Result]:
    results: list[Result] = []
    stack = Stack(args.database_url, args.redis_url, args.keys, args.usage_rows,
                  capture=args.capture_bodies)
    try:
        direct, turnpike = stack.targets()
        peers = [Target(name, url, args.peer_key) for name, url in
                 (p.split("=", 1) for p in args.peer)]
        if args.bare:
            peers.append(start_bare(stack))
            loadgen(peers[-1].base_url + "/chat/completions", CHAT, "unused", 4, 1)
        if args.litellm:
            proc, litellm = start_litellm(stack.mock_port, Path(args.litellm_venv))
            stack.procs.append(proc)
            loadgen(litellm.base_url + "/chat/completions", CHAT, litellm.key, 4, 2)
            peers.append(litellm)
        wanted = set(args.only.split(",")) if args.only else None
        # Warm up: key snapshot, route table, connection pools, limiter scripts.
        loadgen(turnpike.base_url + "/chat/completions", CHAT, turnpike.key, 4, 1)
        for name, spec in scenarios(args.seconds, args.smoke).items():
            if wanted and name not in wanted:
                continue
            spec = dict(spec)
            only_turnpike = spec.pop("turnpike_only", False)
            targets = [turnpike] if only_turnpike else [direct, turnpike, *peers]
            for target in targets:
                results.append(measure(name, target, **spec))
                print(_row(results[-1]), flush=True)
        if not args.smoke and (not wanted or "idle_streams" in wanted):
            results.append(idle_streams(turnpike, args.idle))
            print(_row(results[-1]), flush=True)
    finally:
        stack.close()
    return results


# --- one gateway process against two ------------------------------------------------------

def scaling(args: argparse.Namespace) -> list[Result]:
    """The same load (64 clients; non-stream, then 100-event streams) against one Turnpike
    process, then spread over two (client i on process i % 2), in turns for ``args.rounds``
    rounds. Reports requests/s, the gateways' CPU per request (both processes summed), the
    cores they used, and the load generator's and the mock's CPU per request: on a 2-core
    machine that also runs the load generator, the mock, Redis and PostgreSQL, what is left
    for the second process is what bounds the scaling, and these say how much that was."""
    stack = Stack(args.database_url, args.redis_url, args.keys)
    results: list[Result] = []
    try:
        proc, port = start_gateway(stack.procs, stack.env)
        wait_port(port)
        a = f"http://127.0.0.1:{stack.port}/v1"
        b = f"http://127.0.0.1:{port}/v1"
        for url in (a, b):
            loadgen(url + "/chat/completions", CHAT, stack.key, 4, 1)
        one = Target("1 process", a, stack.key, pid=stack.gateway.pid)
        two = Target("2 processes", a, stack.key, pid=stack.gateway.pid, more=[(b, proc.pid)])
        specs = scenarios(args.seconds, False)
        wanted = args.only.split(",") if args.only else ["nonstream", "stream"]
        for _ in range(args.rounds):
            for name in wanted:
                for target in (one, two):
                    mock_before = proc_cpu_seconds(stack.mock.pid)
                    spec = {k: v for k, v in specs[name].items() if k != "turnpike_only"}
                    results.append(measure(name, target, **spec))
                    r = results[-1]
                    if r.load["requests"] and r.cpu_ms_per_request is not None:
                        r.extra["mock_cpu_ms_per_request"] = round(
                            (proc_cpu_seconds(stack.mock.pid) - mock_before) * 1000
                            / r.load["requests"], 3)
                        r.extra["gateway_cores"] = round(
                            r.cpu_ms_per_request * r.load["requests"] / 1000
                            / r.load["seconds"], 2)
                    print(_row(r), flush=True)
    finally:
        stack.close()
    print(scaling_summary(results))
    return results


def scaling_summary(results: list[Result]) -> str:
    import statistics

    lines = ["| scenario | processes | RPS (each round) | median RPS | gateway CPU ms/req | "
             "gateway cores used | loadgen CPU ms/req | mock CPU ms/req |",
             "|---|---|---|---|---|---|---|---|"]
    medians: dict[tuple[str, str], float] = {}
    for scenario in dict.fromkeys(r.scenario for r in results):
        for target in ("1 process", "2 processes"):
            rs = [r for r in results if r.scenario == scenario and r.target == target]
            if not rs:
                continue
            rps = [r.load["rps"] for r in rs]
            medians[scenario, target] = statistics.median(rps)

            def med(key: str, rs: list[Result] = rs) -> str:
                values = [r.extra[key] for r in rs if key in r.extra]
                return f"{statistics.median(values):.3f}" if values else "-"

            cpu = [r.cpu_ms_per_request for r in rs if r.cpu_ms_per_request is not None]
            lines.append(
                f"| {scenario} | {target} | {' / '.join(f'{v:.0f}' for v in rps)} | "
                f"{medians[scenario, target]:.0f} | "
                f"{statistics.median(cpu) if cpu else '-'} | {med('gateway_cores')} | "
                f"{med('loadgen_cpu_ms_per_request')} | {med('mock_cpu_ms_per_request')} |")
    lines.append("")
    for (scenario, target), median in medians.items():
        single = medians.get((scenario, "1 process"))
        if target == "2 processes" and single:
            lines.append(f"- {scenario}: 2 processes / 1 process = {median / single:.2f}x "
                         "requests/s")
    return "\n".join(lines)


# --- what observability costs ---------------------------------------------------------------

# The gateway variants compared by --observability: everything that observes requests off
# (metrics and the access line; tracing is off in every variant, no OTLP endpoint), the
# defaults (metrics in one in-memory registry per process, the access line in text), the
# defaults with prometheus-client's multiprocess mode (memory-mapped value files), and the
# production set-up: multiprocess metrics and JSON logs.
OBSERVABILITY_VARIANTS = {
    "off": {"GATEWAY_METRICS": "false", "GATEWAY_ACCESS_LOG": "false"},
    "on (in-memory)": {},
    "on (multiprocess)": {"PROMETHEUS_MULTIPROC_DIR": ""},  # set per run
    "on (multiprocess, JSON logs)": {"PROMETHEUS_MULTIPROC_DIR": "", "LOG_FORMAT": "json"},
}


def observability(args: argparse.Namespace) -> list[Result]:
    """The same non-stream load (64 clients) against one gateway process per variant,
    taking turns for ``args.rounds`` rounds so the machine's drift hits every variant
    alike; the gateway's CPU per request, and the in-process cost of one request's
    ``observe`` (and of the writes its flush makes)."""
    import tempfile

    stack = Stack(args.database_url, args.redis_url, args.keys)
    results: list[Result] = []
    try:
        multiproc = tempfile.mkdtemp(prefix="turnpike-prom-")
        targets: dict[str, Target] = {}
        for name, extra in OBSERVABILITY_VARIANTS.items():
            env = {**stack.env, **extra}
            if "PROMETHEUS_MULTIPROC_DIR" in extra:
                env["PROMETHEUS_MULTIPROC_DIR"] = multiproc
            proc, port = start_gateway(stack.procs, env)
            wait_port(port)
            targets[name] = Target(name, f"http://127.0.0.1:{port}/v1", stack.key, pid=proc.pid)
            loadgen(targets[name].base_url + "/chat/completions", CHAT, stack.key, 4, 1)
        for _ in range(args.rounds):
            for target in targets.values():
                results.append(measure("observability", target, "/chat/completions", CHAT,
                                       64, args.seconds))
                print(_row(results[-1]), flush=True)
    finally:
        stack.close()
    micro = {name: observe_micro(mode) for name, mode in (("in-memory", False),
                                                          ("multiprocess", True))}
    print(observability_summary(results, micro))
    return results


def observability_summary(results: list[Result], micro: dict[str, dict[str, float]]) -> str:
    import statistics

    by: dict[str, list[float]] = {}
    for r in results:
        if r.cpu_ms_per_request is not None:
            by.setdefault(r.target, []).append(r.cpu_ms_per_request)
    off = statistics.median(by["off"]) if by.get("off") else None
    lines = ["| gateway | CPU ms/request (each round) | median | vs off |", "|---|---|---|---|"]
    for name, values in by.items():
        median = statistics.median(values)
        change = f"{(median - off) / off * 100:+.1f}%" if off else "-"
        lines.append(f"| {name} | {' / '.join(f'{v:.3f}' for v in values)} | {median:.3f} | "
                     f"{change} |")
    lines += ["", "| values | observe() µs/request | + its flush, batched (µs/request) | "
              "flushed after every request (µs) |", "|---|---|---|---|"]
    for name, m in micro.items():
        lines.append(f"| {name} | {m['observe_us']:.2f} | {m['batched_us']:.2f} | "
                     f"{m['direct_us']:.2f} |")
    return "\n".join(lines)


def observe_micro(multiprocess: bool, n: int = 20000) -> dict[str, float]:
    """``gateway.metrics.observe`` on a served chat request (tokens, cost, one attempt),
    timed in a fresh process (CPU time, so other processes' load counts less): alone, with
    the flush every 1,000 requests (one second at 1,000 requests/s), and flushed after every
    request (what writing each metric directly would cost)."""
    import tempfile

    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if multiprocess:
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="turnpike-prom-micro-")
    out = subprocess.run([PY, "-c", f"from benchmarks.run import _observe_micro_child as f; "
                                    f"f({n})"], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _observe_micro_child(n: int) -> None:
    import asyncio
    from decimal import Decimal
    from types import SimpleNamespace

    import django

    django.setup()
    from gateway.context import RelayContext
    from gateway.metrics import observe
    from gateway.wire.usage import Usage
    from portal.infra.metrics import tally

    scope = {"headers": [(b"user-agent", b"bench")], "client": ("127.0.0.1", 1)}
    ctx = RelayContext.start(scope, "chat/completions")
    ctx.model, ctx.status, ctx.first_byte_at = "bench-model", 200, ctx.started + 0.002
    ctx.ticket = SimpleNamespace(limiter=None)  # type: ignore[assignment]
    ctx.settlement = SimpleNamespace(cost=Decimal("0.000123"))  # type: ignore[assignment]
    ctx.outcome.route = SimpleNamespace(upstream=SimpleNamespace(name="mock"))  # type: ignore[assignment]
    ctx.outcome.served = True
    ctx.outcome.usage = Usage(input_tokens=12, cached_tokens=4, output_tokens=30,
                              reasoning_tokens=8)
    ctx.outcome.attempts = [{"upstream": "mock", "upstream_id": 1, "credential_id": 1,
                             "status": 200, "error": "", "ms": 3}]

    async def run() -> dict[str, float]:
        observe(ctx)
        tally.flush()
        started = time.process_time()
        for _ in range(n):
            observe(ctx)
        alone = time.process_time() - started
        tally.flush()
        started = time.process_time()
        for i in range(n):
            observe(ctx)
            if i % 1000 == 999:
                tally.flush()
        batched = time.process_time() - started
        started = time.process_time()
        for _ in range(n // 10):
            observe(ctx)
            tally.flush(samples=False)
        direct = time.process_time() - started
        return {"observe_us": alone / n * 1e6, "batched_us": batched / n * 1e6,
                "direct_us": direct / (n // 10) * 1e6}

    print(json.dumps(asyncio.run(run())))


def _row(r: Result) -> str:
    load = r.load
    cpu = f"{r.cpu_ms_per_request:.3f}" if r.cpu_ms_per_request is not None else "-"
    rss = f"{r.rss_mib:.0f}" if r.rss_mib is not None else "-"
    return (f"{r.scenario:18} {r.target:16} rps {load['rps']:>8.1f}  p50 {load['p50_ms']!s:>7} "
            f"p99 {load['p99_ms']!s:>7}  ttfb50 {load['ttfb_p50_ms']!s:>7}  "
            f"frames/s {load['frames_per_s']:>9.0f}  cpu ms/req {cpu:>6}  rss MiB {rss:>5}  "
            f"err {load['errors']}"
            + (f"  connect cpu ms/socket {r.extra['connect_cpu_ms']}"
               if "connect_cpu_ms" in r.extra else ""))


def summary(results: list[Result]) -> str:
    """Markdown table with Turnpike/direct (and peer/Turnpike) ratios."""
    lines = ["| scenario | target | RPS | p50 ms | p99 ms | TTFB p50 ms | frames/s | "
             "CPU ms/req | RSS MiB | errors |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        load = r.load
        lines.append(
            f"| {r.scenario} | {r.target} | {load['rps']:.0f} | {load['p50_ms']} | "
            f"{load['p99_ms']} | {load['ttfb_p50_ms']} | {load['frames_per_s']:.0f} | "
            f"{r.cpu_ms_per_request if r.cpu_ms_per_request is not None else '-'} | "
            f"{r.rss_mib if r.rss_mib is not None else '-'} | {load['errors']} |")
    by = {(r.scenario, r.target): r for r in results}
    notes = []
    for (scenario, target), r in by.items():
        base = by.get((scenario, "direct (mock)"))
        if target == "turnpike" and base and scenario.startswith("latency"):
            notes.append(f"- {scenario}: Turnpike adds {r.load['p50_ms'] - base.load['p50_ms']:.2f}"
                         f" ms at p50, {r.load['p99_ms'] - base.load['p99_ms']:.2f} ms at p99")
        bare = by.get((scenario, "bare proxy"))
        if target == "turnpike" and bare and bare.load["rps"]:
            notes.append(f"- {scenario}: Turnpike/bare proxy = "
                         f"{r.load['rps'] / bare.load['rps']:.2f}x the throughput"
                         + (f", {r.cpu_ms_per_request / bare.cpu_ms_per_request:.2f}x the CPU "
                            "per request" if r.cpu_ms_per_request and bare.cpu_ms_per_request
                            else ""))
        peer = by.get((scenario, "litellm"))
        if target == "turnpike" and peer and peer.load["rps"]:
            notes.append(f"- {scenario}: Turnpike/LiteLLM = "
                         f"{r.load['rps'] / peer.load['rps']:.1f}x the throughput"
                         + (f", {peer.cpu_ms_per_request / r.cpu_ms_per_request:.1f}x less CPU "
                            "per request" if r.cpu_ms_per_request and peer.cpu_ms_per_request
                            else ""))
        if target == "turnpike" and base and scenario == "ttfb_paced":
            notes.append(f"- {scenario}: Turnpike adds "
                         f"{r.load['ttfb_p50_ms'] - base.load['ttfb_p50_ms']:.2f} ms to the "
                         "first byte at p50")
    return "\n".join(lines + [""] + notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="seconds, for CI")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--only", help="comma-separated scenario names; 'capacity': the "
                        "sizing figures of benchmarks/capacity.py")
    parser.add_argument("--keys", type=int, default=10, help="keys in the database")
    parser.add_argument("--idle", type=int, default=1000, help="idle streams to hold")
    parser.add_argument("--usage-rows", type=int, default=0,
                        help="fill the usage log to this many rows first (e.g. 10000000)")
    parser.add_argument("--capture-bodies", action="store_true",
                        help="switch body capture on for the benchmark key (its cost)")
    parser.add_argument("--peer", action="append", default=[],
                        help="NAME=BASE_URL of another gateway to run side by side")
    parser.add_argument("--peer-key", default="sk-bench")
    parser.add_argument("--litellm", action="store_true",
                        help="also run LiteLLM's proxy (its own venv) side by side")
    parser.add_argument("--litellm-venv", default=os.environ.get(
        "LITELLM_VENV", str(BENCH / ".litellm-venv")))
    parser.add_argument("--database-url", default=os.environ.get(
        "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/turnpike_bench"))
    parser.add_argument("--redis-url", default=os.environ.get(
        "BENCH_REDIS_URL", "redis://127.0.0.1:6379/13"))
    parser.add_argument("--json", help="write the results to this file too")
    parser.add_argument("--observability", action="store_true",
                        help="only compare the gateway's CPU per request with metrics (and "
                             "the access log) off and on, in turns")
    parser.add_argument("--rounds", type=int, default=3,
                        help="turns for --observability and --scaling")
    parser.add_argument("--bare", action="store_true",
                        help="also run the bare daphne + aiohttp proxy (benchmarks/bare_proxy.py)"
                             " side by side")
    parser.add_argument("--scaling", action="store_true",
                        help="only compare one gateway process with two, in turns")
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = 1.0 if args.smoke else 10.0
    ensure_database(args.database_url)
    if args.observability or args.scaling:
        results = observability(args) if args.observability else scaling(args)
        if args.json:
            Path(args.json).write_text(json.dumps([r.__dict__ for r in results], indent=1))
        return 0 if results and all(r.load["requests"] > 0 for r in results) else 1
    wanted = set(args.only.split(",")) if args.only else set()
    if "capacity" in wanted:  # benchmarks/capacity.py: its own Redis server and readings
        from benchmarks import capacity

        rows, memory = capacity.run(args.database_url, args.seconds, args.smoke,
                                    json_path=args.json)
        if not rows or any(r.errors for r in rows) or len(memory) < 2:
            return 1
        args.only = ",".join(sorted(wanted - {"capacity"}))
        if not args.only:
            return 0
    results = run_suite(args)
    print()
    print(summary(results))
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in results], indent=1))
    return 0 if results and all(r.load["requests"] > 0 for r in results) else 1


def ensure_database(url: str) -> None:
    """Create the run's PostgreSQL database if it does not exist yet."""
    if not url.startswith("postgres"):
        return
    import psycopg

    name = url.rsplit("/", 1)[1]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


if __name__ == "__main__":
    raise SystemExit(main())
