"""A real HAProxy in front of gateway processes, and the mixed load (streams and plain
answers) that checks a rolling restart behind it loses nothing: shared by the loopback drain
test (tests/faults/test_drain.py) and the network-namespace topology test
(tests/faults/test_netns_topology.py)."""

from __future__ import annotations

import asyncio
import csv
import io
import re
import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.servers import free_port, new_log, wait_for_port

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

HAPROXY_CONFIG = """\
global
    maxconn 2000
    stats socket {socket} level admin
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    # A connection refused (a process between its grace and its exit, or not started yet)
    # is tried again on another server; so is a response that never started.
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response
    # HAProxy can only send a request again if it holds all of it: without this, a request
    # whose body came a moment after its headers, sent on a kept-alive connection that the
    # draining process closed at that instant, is not retried; HAProxy closes the client's
    # connection without an answer instead (seen once in CI: "Server disconnected").
    option http-buffer-request

frontend api
    bind {bind}:{port}
    default_backend gateways

backend gateways
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 200ms fastinter 200ms downinter 200ms fall 2 rise 2
{servers}
listen stats
    bind {bind}:{stats_port}
    stats enable
    stats uri /stats
"""


# An access line's status, termination state and retries (httplog: ... status bytes
# cookie cookie TERM actconn/feconn/beconn/srv_conn/RETRIES ...).
ACCESS_LINE = re.compile(r" (-?\d+) \d+ \S+ \S+ (\S{4}) \d+/\d+/\d+/\d+/(\+?\d+) ")


@dataclass
class HAProxy:
    proc: subprocess.Popen
    url: str
    stats_url: str
    log: Path

    def _rows(self) -> list[dict[str, str]]:
        text = httpx.get(self.stats_url + "/stats;csv", timeout=5).text.lstrip("# ")
        return [row for row in csv.DictReader(io.StringIO(text))
                if row["pxname"] == "gateways" and row["svname"] != "BACKEND"]

    def states(self) -> dict[str, str]:
        """Each server's health as HAProxy sees it (UP, DOWN, ...), by name (g0, g1, ...)."""
        return {row["svname"]: row["status"] for row in self._rows()}

    def unusual(self, limit: int = 20) -> list[str]:
        """The access lines of the load's requests that were retried, redispatched or not
        answered 200 with a clean end (termination state ``----``), for a failure's
        message."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            match = ACCESS_LINE.search(line) if " api gateways/" in line else None
            if match and (match[1], match[2], match[3]) != ("200", "----", "0"):
                found.append(line)
        return found[-limit:]

    def sessions(self) -> dict[str, int]:
        """How many requests (sessions) each server has been given so far."""
        return {row["svname"]: int(row["stot"] or 0) for row in self._rows()}


def start_haproxy(servers: Sequence[tuple[str, int]], workdir: Path, *,
                  bind: str = "127.0.0.1", port: int | None = None,
                  stats_port: int | None = None, launcher: Sequence[str] = ()) -> HAProxy:
    """HAProxy balancing over ``servers`` (host, port), named g0, g1, ... in that order and
    health-checked on /readyz; ``launcher``: a command prefix (e.g. ``ip netns exec NS``)."""
    port = port or free_port()
    stats_port = stats_port or free_port()
    lines = "".join(f"    server g{i} {host}:{p} check\n" for i, (host, p) in enumerate(servers))
    config = workdir / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(socket=workdir / "haproxy.sock", bind=bind,
                                            port=port, stats_port=stats_port, servers=lines))
    log = new_log("haproxy")
    with open(log, "ab") as out:
        proc = subprocess.Popen([*launcher, HAPROXY, "-db", "-f", str(config)], stdout=out,
                                stderr=subprocess.STDOUT)
    wait_for_port(port, proc, host=bind)
    wait_for_port(stats_port, proc, host=bind)
    return HAProxy(proc, f"http://{bind}:{port}", f"http://{bind}:{stats_port}", log)


def stream_body(text: str) -> dict:
    return {"model": "gpt-4o-mini", "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": text}]}


def events(raw: bytes) -> list[bytes]:
    """The data of each SSE event."""
    return [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]


@dataclass
class Result:
    stream: bool
    status: int  # 0: the transport broke
    request_id: str
    complete: bool  # the whole answer (a stream: its chunks, usage and [DONE])
    detail: str = ""


async def one_request(client: httpx.AsyncClient, url: str, secret: str, n: int) -> Result:
    """Request ``n`` of a client: even ones stream six chunks, odd ones a plain answer."""
    headers = {"Authorization": f"Bearer {secret}"}
    stream = n % 2 == 0
    try:
        if not stream:
            resp = await client.post(url + "/chat/completions", headers=headers, json={
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "[[fake hold=0.1 chunks=3]] hi"}]})
            ok = resp.status_code == 200 and \
                resp.json()["choices"][0]["message"]["content"] == "tok0 tok1 tok2 "
            return Result(False, resp.status_code, resp.headers.get("x-request-id", ""), ok,
                          "" if ok else resp.text[:300])
        async with client.stream("POST", url + "/chat/completions", headers=headers,
                                 json=stream_body("[[fake chunks=6 delay=0.1]] hi")) as resp:
            raw = b"".join([chunk async for chunk in resp.aiter_raw()])
            data = events(raw)
            ok = resp.status_code == 200 and bool(data) and data[-1] == b"[DONE]" and \
                b'"completion_tokens":6' in raw and b"tok5 " in raw
            return Result(True, resp.status_code, resp.headers.get("x-request-id", ""), ok,
                          "" if ok else raw[-300:].decode("utf-8", "replace"))
    except httpx.TransportError as exc:
        return Result(stream, 0, "", False, repr(exc))


def rolling_restart(proxy: HAProxy, url: str, secret: str, clients: int, servers: int,
                    restart: Callable[[int], None], up_within: float = 30.0,
                    answers_between: int = 20) -> list[Result]:
    """``clients`` closed-loop clients through ``url`` while each of the ``servers`` behind
    ``proxy`` is restarted in turn (``restart(i)`` for server gi, returning once the new
    process runs); before the next one, HAProxy sees gi UP again (within ``up_within``
    seconds) and ``answers_between`` more answers come. Every result of the load."""
    from tests.faults.test_process_faults import wait_until

    results: list[Result] = []
    stop_load = threading.Event()
    loader = threading.Thread(target=load, args=(url, secret, clients, stop_load, results))
    loader.start()
    try:
        wait_until(lambda: len(results) >= 20, 60, "the load to start")
        for i in range(servers):
            before, name = len(results), f"g{i}"
            restart(i)
            wait_until(lambda name=name: proxy.states().get(name) == "UP", up_within,
                       lambda name=name: f"HAProxy to see the new {name} up: {proxy.states()}")
            # Requests went on being answered through the restart.
            wait_until(lambda before=before: len(results) >= before + answers_between, 60,
                       "answers after the restart")
    finally:
        stop_load.set()
        loader.join(120)
    assert not loader.is_alive()
    return results


def all_answered(results: list[Result], proxy: HAProxy) -> list[str]:
    """Assert that every request of the load was answered 200 in full (a stream to its
    [DONE]), streams and plain answers alike, each with its own request id; the ids."""
    outcomes = Counter((r.stream, r.status, r.complete) for r in results)
    bad = [r for r in results if r.status != 200 or not r.complete]
    assert not bad, (outcomes, bad[:5], proxy.unusual())
    assert outcomes[(True, 200, True)] >= 20 and outcomes[(False, 200, True)] >= 20, outcomes
    ids = [r.request_id for r in results]
    assert len(set(ids)) == len(ids), "a request id was answered twice"
    return ids


def load(url: str, secret: str, clients: int, stop_event: threading.Event,
         results: list[Result]) -> None:
    """``clients`` closed-loop clients on ``url`` until ``stop_event`` is set, each result
    appended to ``results`` as it comes."""
    async def client_loop(client: httpx.AsyncClient, i: int) -> None:
        n = i
        while not stop_event.is_set():
            results.append(await one_request(client, url, secret, n))
            n += 1

    async def run() -> None:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(
                max_connections=clients * 2, max_keepalive_connections=clients)) as client:
            await asyncio.gather(*(client_loop(client, i) for i in range(clients)))

    asyncio.run(run())
