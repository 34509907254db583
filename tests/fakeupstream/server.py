"""Running the app: ``serve()`` (blocking, uvloop when importable) and the command line."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable, Iterable

from aiohttp import web

from tests.fakeupstream.app import build_app


async def _run(app: web.Application, host: str, port: int,
               announce: Callable[[str], None] | None = None) -> None:
    runner = web.AppRunner(
        app,
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=1.0,
        # Codex sends large metadata headers (x-codex-turn-metadata).
        max_field_size=65_536,
        max_line_size=65_536,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
    await site.start()
    bound_port = runner.addresses[0][1] if port == 0 else port
    url_host = f"[{host}]" if ":" in host else host
    url = f"http://{url_host}:{bound_port}"
    if announce is None:
        print(f"fake upstream listening on {url}", flush=True)
    else:
        announce(url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):
            pass  # not on the main thread or not supported: rely on the default handlers
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    api_keys: list[str] | None = None,
    models: list[str] | None = None,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Run the fake upstream until SIGINT/SIGTERM (blocking). ``announce`` is called with
    its URL once it listens (default: print ``fake upstream listening on URL``)."""
    app = build_app(api_keys, models)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_run(app, host, port, announce))


def split_models(value: str | None) -> list[str] | None:
    names = [name.strip() for name in (value or "").split(",") if name.strip()]
    return names or None


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakeupstream", description="Scriptable fake LLM upstream."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--api-key", action="append", dest="api_keys", help="repeatable")
    parser.add_argument("--models", help="comma-separated model ids for /v1/models and /api/tags")
    args = parser.parse_args(list(argv) if argv is not None else None)
    serve(args.host, args.port, args.api_keys, split_models(args.models))
