"""A TCP relay that delays every byte by a fixed time in each direction: the namespace
topology's stand-in for ``tc netem`` on a kernel built without it.

Run inside a host's namespace, it listens on the host's bridge address and forwards to the
service on the namespace's own loopback, so every connection another host makes to the
service crosses it. Each chunk read is written out ``delay`` after it arrived, in order, and
reading goes on meanwhile: the delay is latency, not a bandwidth cap (a stream of chunks
arrives spaced as it was sent, each ``delay`` late). A close travels after the data before
it, like a FIN would.

    python -m tests.faults.delayrelay --listen 10.77.0.20:6379 --target 127.0.0.1:6379 \\
        --delay-ms 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:  # the sender closed: pass the close on, after what came before it
                with contextlib.suppress(OSError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(deliver())
    try:
        while True:
            try:
                data = await reader.read(65536)
            except OSError:
                data = b""
            queue.put_nowait((loop.time() + delay, data))
            if not data:
                break
        await sender
    except (OSError, asyncio.CancelledError):
        sender.cancel()
        raise


async def _relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter,
                 target: tuple[str, int], delay: float) -> None:
    try:
        server_reader, server_writer = await asyncio.open_connection(*target)
    except OSError:
        client_writer.close()
        return
    pumps = [asyncio.create_task(_pump(client_reader, server_writer, delay)),
             asyncio.create_task(_pump(server_reader, client_writer, delay))]
    try:
        await asyncio.gather(*pumps)
    except OSError:
        pass  # a reset on one side: drop both
    finally:
        for task in pumps:
            task.cancel()
        for w in (client_writer, server_writer):
            w.close()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def main(listen: tuple[str, int], target: tuple[str, int], delay: float) -> None:
    server = await asyncio.start_server(
        lambda r, w: _relay(r, w, target, delay), *listen, reuse_address=True, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, type=_address, help="host:port")
    parser.add_argument("--target", required=True, type=_address, help="host:port")
    parser.add_argument("--delay-ms", type=float, default=1.0)
    args = parser.parse_args()
    asyncio.run(main(args.listen, args.target, args.delay_ms / 1000))
