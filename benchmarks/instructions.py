"""Instructions per request of gateway processes under valgrind's callgrind: a figure that
does not move with the machine's load, unlike CPU time on a shared 2-core box.

    python -m benchmarks.instructions --tree now=. --tree main=/tmp/main-checkout --bare \\
        --nonstream 600 --stream 150

Starts the suite's Node mock and seeds PostgreSQL and Redis as ``benchmarks.run`` does, then
one process per ``--tree`` (``python -m portal.server`` run from that checkout, so two
versions of the code can be compared against the same database) and, with ``--bare``, the
bare daphne + aiohttp proxy (``benchmarks/bare_proxy.py``), all under callgrind with
instrumentation off while they start. For each process and scenario: 100 requests to warm
up, instrumentation on and counters zeroed, N requests (16 clients), the counters dumped
and read. Every thread of the process counts (the usage writer's included). Needs valgrind;
expect ~10 minutes per process on a busy machine.
"""

from __future__ import annotations

import argparse
import glob
import os
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.run import (
    PY,
    ROOT,
    Stack,
    ensure_database,
    free_port,
    loadgen,
    scenarios,
    wait_port,
)


def _read_total(dump: str) -> int:
    with open(dump) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", default=[],
                        help="NAME=PATH of a checkout to run a gateway from (default now=.)")
    parser.add_argument("--bare", action="store_true", help="also the bare proxy")
    parser.add_argument("--nonstream", type=int, default=600, help="non-stream requests")
    parser.add_argument("--stream", type=int, default=150, help="100-event streams")
    parser.add_argument("--paced", type=int, default=0,
                        help="100-event streams paced as a model sends them (events 50 ms "
                             "apart, 8 clients: one event per read even under valgrind)")
    parser.add_argument("--database-url", default=os.environ.get(
        "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/turnpike_bench"))
    parser.add_argument("--redis-url", default=os.environ.get(
        "BENCH_REDIS_URL", "redis://127.0.0.1:6379/13"))
    args = parser.parse_args(argv)
    trees = [t.split("=", 1) for t in (args.tree or [f"now={ROOT}"])]
    ensure_database(args.database_url)
    out_dir = tempfile.mkdtemp(prefix="turnpike-callgrind-")
    stack = Stack(args.database_url, args.redis_url, 10)
    procs: dict[str, tuple[subprocess.Popen[Any], int, str]] = {}
    try:
        env = {**stack.env, "BARE_PROXY_UPSTREAM": f"http://127.0.0.1:{stack.mock_port}/v1"}
        runs: list[tuple[str, Path, list[str]]] = [(name, Path(path).resolve(), [])
                                                   for name, path in trees]
        if args.bare:
            runs.append(("bare proxy", ROOT, ["benchmarks.bare_proxy:application"]))
        for name, root, app in runs:
            out = os.path.join(out_dir, name.replace(" ", "-") + ".out")
            port = free_port()
            proc = subprocess.Popen(
                ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                 f"--callgrind-out-file={out}", PY, "-m", "portal.server", "-b", "127.0.0.1",
                 "-p", str(port), "-v", "0", *app],
                cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs[name] = (proc, port, out)
        for _, port, _ in procs.values():
            wait_port(port, timeout=1800)
        specs = scenarios(10, False)
        print("| process | scenario | requests | instructions per request |\n|---|---|---|---|",
              flush=True)
        for name, (proc, port, out) in procs.items():
            url = f"http://127.0.0.1:{port}/v1"
            for scenario, n in (("nonstream", args.nonstream), ("stream", args.stream),
                                ("stream_paced", args.paced)):
                if not n:
                    continue
                spec = specs[scenario]
                clients = 16
                if scenario == "stream_paced":
                    spec = {**spec, "body": {**spec["body"], "messages": [
                        {"role": "user", "content": "[[mock chunks=100 delay=50]]"}]}}
                    clients = 8
                stream = bool(spec.get("stream"))
                loadgen(url + spec["path"], spec["body"], stack.key, 8, 600, stream,
                        requests=min(100, n))
                _control("-i", "on", str(proc.pid))
                _control("--zero", str(proc.pid))
                load = loadgen(url + spec["path"], spec["body"], stack.key, clients, 1800,
                               stream, requests=n)
                before = set(glob.glob(out + ".*"))
                _control("--dump", str(proc.pid))
                _control("-i", "off", str(proc.pid))
                dump = max(set(glob.glob(out + ".*")) - before, key=os.path.getmtime)
                per = _read_total(dump) / max(load["requests"], 1)
                print(f"| {name} | {scenario} | {load['requests']} (errors {load['errors']}) "
                      f"| {per:,.0f} |", flush=True)
    finally:
        for proc, _, _ in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _, _ in procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        stack.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
