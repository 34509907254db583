"""The keep-alive clock of an upstream stream (gateway.exchange.upstream.Upstream.chunks and
its ``_Lull``): one timer for the whole stream. A wait as long as GATEWAY_KEEPALIVE_SECONDS
yields None (a keep-alive tick) and the stream goes on; a quick stream of many waits never
ticks; a real cancellation during a wait, even one that meets the clock's own, goes on as a
cancellation; and nothing of the clock is left once the stream is done."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.exchange import upstream as upstream_mod
from gateway.exchange.upstream import Upstream

pytestmark = pytest.mark.fast

SECONDS = 0.05


class FakeContent:
    """aiohttp's StreamReader as Upstream.chunks uses it, fed by the test."""

    def __init__(self) -> None:
        self.buffer: list[bytes] = []
        self.eof = False
        self.waiter: asyncio.Future[None] | None = None

    def feed(self, data: bytes) -> None:
        self.buffer.append(data)
        self._wake()

    def end(self) -> None:
        self.eof = True
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def read_nowait(self) -> bytes:
        data, self.buffer = b"".join(self.buffer), []
        return data

    def at_eof(self) -> bool:
        return self.eof and not self.buffer

    async def readany(self) -> bytes:
        while not self.buffer and not self.eof:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.read_nowait()


class FakeResponse:
    def __init__(self) -> None:
        self.content = FakeContent()


@pytest.fixture(autouse=True)
def quick_keepalive(monkeypatch):
    monkeypatch.setattr(upstream_mod.hot, "GATEWAY_KEEPALIVE_SECONDS", SECONDS, raising=False)


async def collect(resp: Any, out: list[bytes | None]) -> None:
    async for chunk in Upstream(resp).chunks():
        out.append(chunk)


def timers(loop: asyncio.AbstractEventLoop) -> int:
    return sum(1 for h in getattr(loop, "_scheduled", []) if not h.cancelled())


def test_a_silence_as_long_as_the_keepalive_yields_a_tick_and_the_stream_goes_on():
    async def main() -> list[bytes | None]:
        resp = FakeResponse()
        out: list[bytes | None] = []
        task = asyncio.ensure_future(collect(resp, out))
        resp.content.feed(b"a")
        await asyncio.sleep(SECONDS * 3.5)  # three ticks' worth of silence
        resp.content.feed(b"b")
        await asyncio.sleep(0)
        resp.content.end()
        await asyncio.wait_for(task, 2)
        assert timers(asyncio.get_running_loop()) == 0  # the clock is gone with the stream
        return out

    out = asyncio.run(main())
    assert out[0] == b"a" and out[-1] == b"b"
    assert 2 <= out.count(None) <= 3  # each tick a full keep-alive period after the last


def test_a_quick_stream_of_many_waits_never_ticks():
    async def main() -> list[bytes | None]:
        resp = FakeResponse()
        out: list[bytes | None] = []
        task = asyncio.ensure_future(collect(resp, out))
        for i in range(40):  # 40 waits of SECONDS / 5: 8 periods in all, none silent
            await asyncio.sleep(SECONDS / 5)
            resp.content.feed(b"%d" % i)
        resp.content.end()
        await asyncio.wait_for(task, 2)
        return out

    out = asyncio.run(main())
    assert None not in out and len(out) == 40


def test_a_real_cancellation_during_a_wait_is_not_taken_for_silence():
    async def main() -> None:
        resp = FakeResponse()
        out: list[bytes | None] = []
        task = asyncio.ensure_future(collect(resp, out))
        await asyncio.sleep(SECONDS / 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 2)
        assert out == []
        await asyncio.sleep(SECONDS * 2)
        assert timers(asyncio.get_running_loop()) == 0

    asyncio.run(main())


def test_a_cancellation_meeting_the_clocks_own_goes_on_as_a_cancellation():
    async def main() -> None:
        resp = FakeResponse()
        out: list[bytes | None] = []
        task = asyncio.ensure_future(collect(resp, out))
        await asyncio.sleep(0)  # the stream waits
        loop = asyncio.get_running_loop()
        # At the very moment the clock expires, someone else cancels the task too (a client
        # that left, the drain): the clock's own cancellation is taken back, the other not.
        loop.call_later(SECONDS, task.cancel)
        done, _ = await asyncio.wait([task], timeout=2)  # not left waiting for ever
        assert done and task.cancelled()
        assert out.count(None) <= 1

    asyncio.run(main())
