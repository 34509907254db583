"""Access logging and tracing (issue 15): what they cost per /v1 request.

    python -m benchmarks.observability                    # both parts (a few minutes)
    python -m benchmarks.observability --only micro       # in process, seconds
    python -m benchmarks.observability --only e2e --seconds 8 --rounds 3

micro  In process: ``gateway.accesslog.emit`` for a served request (every field set, a
       client request id and a trace id), written by the real logging setup
       (``portal.infra.logconfig``) to /dev/null, in JSON and in text, and with the access
       logger switched off; and the tracing calls one request makes with tracing off
       (``start_request``, the ``authenticate``/``admit``/``attempt`` spans, the upstream
       traceparent check, ``end_request``). CPU microseconds per request, best of 5 runs.
e2e    End to end (``benchmarks/run.py``'s stack: the Node mock, one Turnpike process, the
       Node load generator): non-stream chat requests at 64 concurrent, with
       GATEWAY_ACCESS_LOG=false, with the access line in text and in JSON (the process
       restarted for each, its output to /dev/null as in run.py), each round starting with
       the next of the three, for ``--rounds``; the gateway's CPU per request.
"""

from __future__ import annotations

import argparse
import io
import logging
import logging.config
import os
import sys
import time
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _best(fn: Any, n: int) -> float:
    """CPU microseconds per call: the best of 5 runs of ``n`` calls (process time, so other
    work on a shared machine counts less)."""
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - started) / n * 1e6)
    return best


def served_context() -> Any:
    from gateway.context import RelayContext
    from gateway.wire.usage import Usage

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "client": ("203.0.113.9", 50000),
             "headers": [(b"authorization", b"Bearer sk-tp-x"), (b"content-type",
                                                                  b"application/json"),
                         (b"user-agent", b"openai-python/2.1"),
                         (b"x-request-id", b"7f0c1e2a-9d4b-4c1e-8f00-1a2b3c4d5e6f"),
                         (b"traceparent",
                          b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]}
    ctx = RelayContext.start(scope, "chat/completions")
    ctx.key = SimpleNamespace(tenant_id=7, prefix="sk-tp-ab12")  # type: ignore[assignment]
    ctx.model, ctx.status, ctx.first_byte_at = "gpt-5-mini", 200, ctx.started + 0.1
    ctx.outcome.usage = Usage(input_tokens=120, cached_tokens=20, output_tokens=30,
                              reasoning_tokens=5)
    ctx.outcome.route = SimpleNamespace(upstream=SimpleNamespace(name="openai"))  # type: ignore[assignment]
    ctx.outcome.attempts.append({"status": 200})
    ctx.settlement = SimpleNamespace(cost=Decimal("0.000420"))  # type: ignore[assignment]
    return ctx


def micro(n: int) -> str:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django

    django.setup()
    from gateway import accesslog, tracing
    from portal.infra.logconfig import logging_config

    ctx = served_context()
    sink = open(os.devnull, "w")  # noqa: SIM115 (kept for the run)
    results: dict[str, float] = {}
    for label, fmt, on in (("access line, JSON", "json", True),
                           ("access line, text", "text", True),
                           ("access log off (GATEWAY_ACCESS_LOG=false)", "json", False)):
        config = logging_config(fmt, "WARNING", on)
        config["handlers"]["console"]["stream"] = sink
        logging.config.dictConfig(config)
        accesslog.JSON = fmt == "json"
        results[label] = _best(lambda: accesslog.emit(ctx), n)
    # What the line looks like (checked, so the benchmark never times a broken line).
    check = io.StringIO()
    config = logging_config("json", "WARNING", True)
    config["handlers"]["console"]["stream"] = check
    logging.config.dictConfig(config)
    accesslog.JSON = True
    accesslog.emit(ctx)
    assert '"output_tokens":30' in check.getvalue(), check.getvalue()

    assert not tracing.ENABLED

    def request_tracing() -> None:
        ctx.trace = tracing.start_request(ctx)
        with tracing.span(ctx, "authenticate"):
            pass
        with tracing.span(ctx, "admit"):
            pass
        with tracing.attempt(ctx, ctx.outcome, ctx.outcome.route):
            if tracing.ENABLED:
                tracing.upstream_traceparent(ctx)
        tracing.end_request(ctx)

    results["tracing off, with an incoming traceparent"] = _best(request_tracing, n)
    traceparent = ctx.headers.pop(b"traceparent")
    results["tracing off, no traceparent"] = _best(request_tracing, n)
    ctx.headers[b"traceparent"] = traceparent
    lines = ["| per /v1 request | µs |", "|---|---|"]
    lines += [f"| {label} | {us:.2f} |" for label, us in results.items()]
    return "\n".join(lines)


def e2e(args: argparse.Namespace) -> str:
    from benchmarks.run import (
        CHAT,
        Stack,
        _row,
        ensure_database,
        measure,
        start_gateway,
        wait_port,
    )

    ensure_database(args.database_url)
    stack = Stack(args.database_url, args.redis_url, keys=1)
    modes = {"off": {"GATEWAY_ACCESS_LOG": "false"},
             "text": {"GATEWAY_ACCESS_LOG": "true", "LOG_FORMAT": "text"},
             "json": {"GATEWAY_ACCESS_LOG": "true", "LOG_FORMAT": "json"}}
    cpu: dict[str, list[float]] = {mode: [] for mode in modes}
    rps: dict[str, list[float]] = {mode: [] for mode in modes}
    try:
        names = list(modes)
        for round_ in range(args.rounds):  # each round starts with the next mode: no drift
            for mode in names[round_ % 3:] + names[:round_ % 3]:
                env = modes[mode]
                stack.gateway.terminate()
                stack.gateway.wait(timeout=20)
                stack.gateway, stack.port = start_gateway(stack.procs, {**stack.env, **env})
                wait_port(stack.port)
                _, turnpike = stack.targets()
                measure("warm-up", turnpike, path="/chat/completions", body=CHAT,
                        concurrency=8, seconds=1.0)
                result = measure(f"nonstream ({mode})", turnpike, path="/chat/completions",
                                 body=CHAT, concurrency=64, seconds=args.seconds)
                print(_row(result), flush=True)
                assert result.cpu_ms_per_request is not None
                cpu[mode].append(result.cpu_ms_per_request)
                rps[mode].append(result.load["rps"])
    finally:
        stack.close()
    lines = ["| access log | CPU ms/req (each round) | mean | RPS (each round) |",
             "|---|---|---|---|"]
    for mode in modes:
        mean = sum(cpu[mode]) / len(cpu[mode])
        lines.append(f"| {mode} | {', '.join(f'{c:.3f}' for c in cpu[mode])} | {mean:.3f} | "
                     f"{', '.join(str(round(r)) for r in rps[mode])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("micro", "e2e"))
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", default=os.environ.get(
        "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/turnpike_bench"))
    parser.add_argument("--redis-url", default=os.environ.get(
        "BENCH_REDIS_URL", "redis://127.0.0.1:6379/13"))
    args = parser.parse_args(argv)
    out = []
    if args.only in (None, "micro"):
        out.append(micro(args.calls))
        print(out[-1], flush=True)
    if args.only in (None, "e2e"):
        out.append(e2e(args))
        print(out[-1], flush=True)
    print()
    print("\n\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
