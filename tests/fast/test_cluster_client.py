"""ClusterFastRedis on a slot being moved (resharding), with scripted nodes instead of a
cluster: TRYAGAIN is waited out within its budget and then raised, ASK sends ASKING and the
command together, NOSCRIPT after ASK falls back to EVAL, and each reply is counted. The
same steps against a real cluster: tests/faults/test_redis_cluster.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from redis.exceptions import NoScriptError, ResponseError

from portal.infra import fastredis, metrics
from portal.infra.fastredis import ClusterFastRedis, FastRedis, moving_slot_pauses, slot_of

KEY = "gw:{g1.0}acct:tenant:1"
SLOT = slot_of(KEY)
SOURCE, TARGET = ("127.0.0.1", 7001), ("127.0.0.1", 7002)


class Node:
    """A master's connection: answers each command with ``answer(node, args, asking)``."""

    def __init__(self, where: tuple[str, int], answer: Callable[..., Any]) -> None:
        self.where, self.answer = where, answer
        self.sent: list[tuple[Any, ...]] = []  # in the order written, ASKING included

    async def execute(self, *args: Any) -> Any:
        self.sent.append(args)
        return self._reply(args, asking=False)

    async def execute_asking(self, *args: Any) -> Any:
        self.sent += [("ASKING",), args]
        return self._reply(args, asking=True)

    def _reply(self, args: tuple[Any, ...], asking: bool) -> Any:
        reply = self.answer(self, args, asking)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def close(self) -> None:
        pass


def cluster(answer: Callable[..., Any], tryagain_seconds: float = 2.0) -> ClusterFastRedis:
    client = ClusterFastRedis("redis://127.0.0.1:7001/0", tryagain_seconds=tryagain_seconds)
    nodes = {where: Node(where, answer) for where in (SOURCE, TARGET)}
    client._nodes = nodes  # type: ignore[assignment]
    client._slots = [SOURCE] * len(client._slots)
    client._stale = False
    return client


def counted() -> dict[str, float]:
    return {kind: metrics.REDIS_REDIRECTS.labels(kind)._value.get()
            for kind in ("moved", "ask", "tryagain")}


def moving(tryagains: int) -> Callable[..., Any]:
    """The slot half moved: the source sends every command to the target (ASK); the target
    refuses the first ``tryagains`` (TRYAGAIN: keys split), then answers."""
    left = [tryagains]

    def answer(node: Node, args: tuple[Any, ...], asking: bool) -> Any:
        if node.where == SOURCE:
            return ResponseError(f"ASK {SLOT} 127.0.0.1:7002")
        if not asking:
            return ResponseError(f"MOVED {SLOT} 127.0.0.1:7001")
        if left[0] > 0:
            left[0] -= 1
            return ResponseError("TRYAGAIN Multiple keys request during rehashing of slot")
        return b"done"

    return answer


def test_tryagain_is_sent_again_from_the_slots_owner_until_the_move_lets_it_run() -> None:
    before = counted()
    client = cluster(moving(tryagains=3))
    assert asyncio.run(client.execute("HGET", KEY, "avail")) == b"done"
    after = counted()
    assert after["tryagain"] - before["tryagain"] == 3
    assert after["ask"] - before["ask"] == 4  # each attempt went by way of the source
    target = client._nodes[TARGET]
    assert isinstance(target, Node)
    # ASKING right before each command on the importing master, never alone.
    assert target.sent == [("ASKING",), ("HGET", KEY, "avail")] * 4


def test_tryagain_past_its_budget_is_raised_for_the_outage_handling() -> None:
    client = cluster(moving(tryagains=1000), tryagain_seconds=0.1)
    loop = asyncio.new_event_loop()
    try:
        started = loop.time()
        with pytest.raises(ResponseError, match="^TRYAGAIN"):
            loop.run_until_complete(client.execute("HGET", KEY, "avail"))
        assert loop.time() - started < 0.5
    finally:
        loop.close()
    # No budget: the first TRYAGAIN is raised at once.
    client = cluster(moving(tryagains=1000), tryagain_seconds=0)
    with pytest.raises(ResponseError, match="^TRYAGAIN"):
        asyncio.run(client.execute("HGET", KEY, "avail"))


def test_a_script_the_importing_master_lacks_is_sent_again_as_eval_after_ask() -> None:
    def answer(node: Node, args: tuple[Any, ...], asking: bool) -> Any:
        if node.where == SOURCE:
            return ResponseError(f"ASK {SLOT} 127.0.0.1:7002")
        if args[0] == "EVALSHA":
            return NoScriptError("NOSCRIPT No matching script.")
        return b"ran"

    client = cluster(answer)
    assert asyncio.run(client.evalsha("return 1", [KEY], ["x"])) == b"ran"
    target = client._nodes[TARGET]
    assert isinstance(target, Node)
    assert [a[0] for a in target.sent] == ["ASKING", "EVALSHA", "ASKING", "EVAL"]
    assert target.sent[-1] == ("EVAL", "return 1", 1, KEY, "x")


def test_asking_and_its_command_are_written_together_on_the_connection() -> None:
    """FastRedis.execute_asking: nothing another caller sends at the same moment can come
    between ASKING and the command (ASKING holds for the next command only)."""
    written: list[bytes] = []

    class Transport:
        def is_closing(self) -> bool:
            return False

        def write(self, data: bytes) -> None:
            written.append(data)

    async def run() -> None:
        client = FastRedis("redis://127.0.0.1:7002/0")
        client._transport = Transport()  # type: ignore[assignment]
        calls = [asyncio.ensure_future(client.execute("GET", "other0")),
                 asyncio.ensure_future(client.execute_asking("GET", KEY)),
                 asyncio.ensure_future(client.execute("GET", "other1")),
                 asyncio.ensure_future(client.execute("GET", "other2"))]
        await asyncio.sleep(0.01)  # the write happens once per loop iteration
        for call in calls:
            call.cancel()

    asyncio.run(run())
    data = b"".join(written)
    asking = b"*1\r\n$6\r\nASKING\r\n"
    assert data.count(asking) == 1
    assert data.split(asking)[1].startswith(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n"
                                           % (len(KEY), KEY.encode()))


def test_the_pauses_double_to_their_ceiling_and_end_with_the_budget(monkeypatch) -> None:
    """One policy for both cluster clients: 25 ms doubling to 200 ms, counted from the first
    refusal, no attempt started past the budget (the clock moves only by the pauses)."""
    clock = [100.0]
    monkeypatch.setattr(fastredis.time, "monotonic", lambda: clock[0])
    pauses = moving_slot_pauses(1.0)
    clock[0] = 250.0  # the budget starts at the first refusal, not when the policy is made
    taken = []
    for wait in pauses:
        taken.append(wait)
        clock[0] += wait
    assert taken == [0.025, 0.05, 0.1, 0.2, 0.2, 0.2, 0.2]  # 0.975 s; one more would pass 1 s
    assert list(moving_slot_pauses(0.01)) == []  # a budget shorter than one pause: none
