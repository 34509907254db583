"""A lean asyncio Redis client for the /v1 hot path: one connection per event loop, every
command pipelined on it, replies matched in order, parsed by hiredis.

Why not redis-py's asyncio client: its per-call connection-pool checkout, retry wrapper and
command packing cost more CPU than the round trip itself (profiled: ~20% of a request's
gateway CPU for two script calls). Here a call is: encode, append to a buffer that is
written once per event-loop iteration (so concurrent requests share one syscall), and await
a future resolved by the protocol when the reply arrives. Errors are redis-py's exception
classes, so callers catch ``redis.exceptions.RedisError`` as before.

Only what the gateway needs: ``execute(*args)`` and ``evalsha`` with script loading.
Everything else (admin, tasks) keeps using redis-py.

A connection is only handed to callers once it is ready: connected (TCP, TLS or a unix
socket, as REDIS_URL says; portal.infra.redisurl) and its AUTH and SELECT answered OK. Until then
``_transport`` is None and every caller waits in ``_ensure``, so no command can be written
ahead of SELECT's reply and land in database 0 (it did: 2 of 194 with a password and db 3),
on the first connection or on any reconnection.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import hiredis
from redis.exceptions import AuthenticationError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from portal.infra import metrics
from portal.infra.redisurl import RedisTarget, parse_redis_url

_pack = hiredis.pack_command
REPLY_TIMEOUT = 10.0  # a reply later than this means the connection is broken
CONNECT_TIMEOUT = 5.0  # TCP/unix connect plus TLS handshake (the sync client's too)


def _encode(args: tuple[Any, ...]) -> bytes:
    """One command in RESP: hiredis packs it in C (str, bytes, int and float arguments, the
    same bytes as below, a third of the time for a limiter script's ~25 arguments);
    anything else (a bool, say) is written as its ``str()``."""
    try:
        return _pack(args)
    except TypeError:
        return _encode_any(args)


def _encode_any(args: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        else:
            data = str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    def __init__(self, client: FastRedis) -> None:
        self.client = client
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.client._protocol is not self:  # an abandoned connection's late bytes
            return
        self.reader.feed(data)
        pending = self.client._pending
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            if not pending:  # a reply nobody waits for: the stream is out of step
                self.client._fail(RedisConnectionError("unexpected reply from Redis"))
                return
            future, _ = pending.popleft()
            if not future.done():
                if isinstance(reply, hiredis.ReplyError):
                    message = str(reply)
                    cls = NoScriptError if message.startswith("NOSCRIPT") else ResponseError
                    future.set_exception(cls(message))
                else:
                    future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        # Only the current connection's loss fails the pending commands: an old one, closed
        # after a newer connection was made, must not fail the newer one's commands.
        if self.client._protocol is self:
            self.client._fail(RedisConnectionError(f"Redis connection lost: {exc}"))


class FastRedis:
    def __init__(self, url: str, target: RedisTarget | None = None) -> None:
        """Parse and check ``url`` now (ValueError: a scheme or parameter it cannot honour),
        so a bad REDIS_URL fails the first request loudly instead of connecting elsewhere.
        ``target``: connect there instead (a cluster node, with the URL's credentials)."""
        target = target or parse_redis_url(url)
        self.target = target
        self._ssl = target.ssl_context()
        self._handshake: list[tuple[Any, ...]] = []
        if target.password:
            self._handshake.append(("AUTH", *((target.username,) if target.username else ()),
                                    target.password))
        if target.db:
            self._handshake.append(("SELECT", target.db))
        # _transport is set only while the connection is ready (handshake answered OK); the
        # protocol is current from connect on, so the handshake's replies are matched too.
        self._transport: asyncio.Transport | None = None
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._pending: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._wbuf: list[bytes] = []
        self._flush_scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._scripts: dict[str, str] = {}  # sha -> source
        self._shas: dict[str, str] = {}  # source -> sha (a 6 KB script's SHA1 is ~5 µs)

    async def _connect(self) -> None:
        """Open a connection and run its handshake; only then publish it as ``_transport``.

        AUTH and SELECT go out in one write and their replies are awaited before anything
        else may be written; a refused AUTH or SELECT closes the connection and raises to
        every caller waiting for it (AuthenticationError / ConnectionError, never a hang: the
        reply watchdog covers the handshake too).
        """
        loop = asyncio.get_running_loop()
        target = self.target
        try:
            if target.path is not None:
                opening = loop.create_unix_connection(lambda: _Protocol(self), target.path)
            else:
                opening = loop.create_connection(lambda: _Protocol(self), target.host,
                                                 target.port, ssl=self._ssl)
            transport, protocol = await asyncio.wait_for(opening, CONNECT_TIMEOUT)
        except OSError as exc:  # TimeoutError included
            raise RedisConnectionError(
                f"cannot connect to Redis at {target.where}: {str(exc) or 'timed out'}") from exc
        if target.path is None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._protocol = protocol
        if transport.is_closing():  # closed by the server at once (e.g. max clients reached)
            exc = RedisConnectionError(f"Redis at {target.where} closed the new connection")
            self._fail(exc)
            raise exc
        if self._handshake:
            futures = [self._expect() for _ in self._handshake]
            transport.write(b"".join(_encode(command) for command in self._handshake))
            try:
                replies = await asyncio.gather(*futures, return_exceptions=True)
            except BaseException:  # cancelled (loop shutdown): leave no half-open connection
                self._fail(RedisConnectionError("Redis connect cancelled"))
                raise
            for command, reply in zip(self._handshake, replies, strict=True):
                if isinstance(reply, BaseException):
                    raise self._refused(command[0], reply)
        self._transport = transport

    def _refused(self, command: str, reply: BaseException) -> Exception:
        """The handshake failed: drop the connection, return the error to raise."""
        message = str(reply)
        if isinstance(reply, ResponseError):
            if message.startswith(("NOAUTH", "WRONGPASS")) or "password" in message.lower():
                user = f" as user {self.target.username!r}" if self.target.username else ""
                exc: Exception = AuthenticationError(
                    f"Redis at {self.target.where} refused {command}{user}: {message} "
                    "(check the user and password in REDIS_URL)")
            else:
                exc = RedisConnectionError(
                    f"Redis at {self.target.where} refused {command}: {message}")
        else:  # the connection broke or timed out mid-handshake (already failed)
            exc = reply if isinstance(reply, Exception) else RedisConnectionError(message)
        self._fail(exc)
        return exc

    async def _ensure(self) -> None:
        """Wait until a ready connection exists (one connect shared by all waiters).

        A loop, not one wait: a connection that drops between its handshake and this waiter
        resuming is replaced, never used, so ``_send`` always queues on a ready connection
        (bounded: a server that drops every new connection is an error, not a reconnect storm).
        """
        for _ in range(3):
            if self._transport is not None and not self._transport.is_closing():
                return
            if self._connecting is None:
                self._connecting = connecting = asyncio.ensure_future(self._connect())
                connecting.add_done_callback(self._connected)
            await asyncio.shield(self._connecting)
        if self._transport is None or self._transport.is_closing():
            raise RedisConnectionError(f"Redis at {self.target.where} drops new connections")

    def _connected(self, future: asyncio.Future[None]) -> None:
        if self._connecting is future:
            self._connecting = None
        if not future.cancelled():
            future.exception()  # retrieved: every waiter got it already

    def _expect(self) -> asyncio.Future[Any]:
        """A future for the next reply on the current connection (handshake commands)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((future, time.monotonic()))
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().call_later(REPLY_TIMEOUT / 2,
                                                                    self._check_stalled)
        return future

    def _send(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((future, time.monotonic()))
        self._wbuf.append(_encode(args))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = loop.call_later(REPLY_TIMEOUT / 2, self._check_stalled)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._wbuf and self._transport is not None and not self._transport.is_closing():
            data = b"".join(self._wbuf)
            self._wbuf.clear()
            self._transport.write(data)

    def _check_stalled(self) -> None:
        self._watchdog = None
        if not self._pending:
            return
        if time.monotonic() - self._pending[0][1] > REPLY_TIMEOUT:
            self._fail(RedisTimeoutError("Redis did not answer in time"))
            return
        self._watchdog = asyncio.get_running_loop().call_later(REPLY_TIMEOUT / 2,
                                                                self._check_stalled)

    def _fail(self, exc: Exception) -> None:
        """Drop the current connection (ready or still in its handshake) and fail every
        command waiting on it; the next call connects afresh."""
        protocol, self._protocol = self._protocol, None
        self._transport = None
        pending = list(self._pending)
        self._pending.clear()
        self._wbuf.clear()
        for future, _ in pending:
            if not future.done():
                future.set_exception(exc)
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()

    async def execute(self, *args: Any) -> Any:
        transport = self._transport
        if transport is None or transport.is_closing():
            await self._ensure()
        return await self._send(args)

    async def execute_asking(self, *args: Any) -> Any:
        """``args`` preceded by ASKING (a Redis Cluster ASK redirection): both written in
        one go, with nothing between them on the connection (ASKING holds for the next
        command only, so another caller's command must not slip in between)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            await self._ensure()
        asking = self._send(("ASKING",))
        asking.add_done_callback(_retrieve)  # its error, if any, is the command's too
        return await self._send(args)

    async def evalsha(self, script: str, keys: list[Any], args: list[Any]) -> Any:
        """Run a Lua script by its SHA1, loading it on the first NOSCRIPT."""
        try:
            reply = self.send_evalsha(script, keys, args)  # a ready connection: sent now
            if reply is not None:
                return await reply
            return await self.execute("EVALSHA", self._sha(script), len(keys), *keys, *args)
        except NoScriptError:
            await self.execute("SCRIPT", "LOAD", script)
            return await self.execute("EVALSHA", self._sha(script), len(keys), *keys, *args)

    def send_evalsha(self, script: str, keys: list[Any],
                     args: list[Any]) -> asyncio.Future[Any] | None:
        """``evalsha`` without a coroutine, for a caller that handles the reply in a
        callback: the command queued now and its reply's future returned (NoScriptError
        in it when the script is not loaded: ``evalsha`` loads it). None, with nothing
        sent, when no connection is ready."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return None
        return self._send(("EVALSHA", self._sha(script), len(keys), *keys, *args))

    def _sha(self, script: str) -> str:
        """The script's SHA1 (computed once per script: they are kilobytes)."""
        sha = self._shas.get(script)
        if sha is None:
            sha = self._shas[script] = hashlib.sha1(script.encode()).hexdigest()
        return sha

    def close(self) -> None:
        self._fail(RedisConnectionError("Redis client closed"))


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


# --- Redis Cluster (REDIS_CLUSTER) ------------------------------------------------------

SLOTS = 16384
_KEYLESS = {b"PING", b"SCRIPT", b"INFO", b"CLUSTER", b"TIME"}


def _key_of(args: tuple[Any, ...]) -> Any | None:
    """The key a command is routed by: its first key (EVAL/EVALSHA: after numkeys); None
    for a command without one. Every command and script the gateway sends keeps its keys
    in one hash slot (portal.infra.rediskeys), so the first key names the slot."""
    name = args[0].encode().upper() if isinstance(args[0], str) else bytes(args[0]).upper()
    if name in (b"EVAL", b"EVALSHA"):
        return args[3] if int(args[2]) > 0 else None
    if name in _KEYLESS or len(args) < 2:
        return None
    return args[1]


class ClusterFastRedis:
    """The hot path's client on a Redis Cluster: one ``FastRedis`` (pipelined connection) per
    master, the slot map read with CLUSTER SLOTS from any node it knows (REDIS_URL's first),
    each command sent to its key's slot's master. ``MOVED`` updates the map (and re-reads
    it) and sends the command where it belongs; ``ASK`` sends it once to the importing node
    after ASKING. A lost connection or a ``CLUSTERDOWN`` fails the call (the caller's
    outage handling, GATEWAY_REDIS_FAILURE, decides) and re-reads the map on the next call,
    so a failover is followed without restarting.

    Resharding (a slot moving between masters while the gateways run): a command for a key
    already moved gets ``ASK`` (followed as above); a script whose keys are split between
    the two masters, or one the importing master lacks some keys of, gets ``TRYAGAIN`` until
    the move ends. A command refused with TRYAGAIN did not run, so it is sent again (from
    the slot's owner, after the pauses of ``moving_slot_pauses``) for up to
    ``tryagain_seconds`` (REDIS_CLUSTER_TRYAGAIN_SECONDS) before the TRYAGAIN is raised (an
    outage to the caller).
    Each MOVED, ASK and TRYAGAIN is counted (``turnpike_redis_redirects_total{kind}``)."""

    MAX_REDIRECTS = 5

    def __init__(self, url: str, tryagain_seconds: float = 2.0) -> None:
        target = parse_redis_url(url)
        if target.path is not None:
            raise ValueError("REDIS_CLUSTER needs a redis:// or rediss:// URL (not a socket)")
        if target.db:
            raise ValueError("REDIS_CLUSTER: a cluster has only database 0")
        self.url = url
        self.target = target
        self.tryagain_seconds = tryagain_seconds
        self._seeds: list[tuple[str, int]] = [(target.host, target.port)]
        self._nodes: dict[tuple[str, int], FastRedis] = {}
        self._slots: list[tuple[str, int] | None] = [None] * SLOTS
        self._stale = True
        self._refreshing: asyncio.Future[None] | None = None

    def _node(self, where: tuple[str, int]) -> FastRedis:
        client = self._nodes.get(where)
        if client is None:
            node = RedisTarget(scheme=self.target.scheme, host=where[0], port=where[1],
                               path=None, db=0, username=self.target.username,
                               password=self.target.password, tls=self.target.tls)
            client = self._nodes[where] = FastRedis(self.url, target=node)
        return client

    async def _refresh(self) -> None:
        """Read the slot map (one refresh shared by every caller waiting for it)."""
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._read_map())
            self._refreshing.add_done_callback(self._refreshed)
        await asyncio.shield(self._refreshing)

    def _refreshed(self, future: asyncio.Future[None]) -> None:
        self._refreshing = None
        if not future.cancelled():
            future.exception()

    async def _read_map(self) -> None:
        known = list(dict.fromkeys([*self._seeds, *self._nodes,
                                    *(w for w in self._slots if w is not None)]))
        error: Exception | None = None
        for where in known:
            try:
                reply = await asyncio.wait_for(self._node(where).execute("CLUSTER", "SLOTS"),
                                               CONNECT_TIMEOUT)
            except (OSError, RedisConnectionError, RedisTimeoutError, ResponseError) as exc:
                error = exc
                continue
            slots: list[tuple[str, int] | None] = [None] * SLOTS
            for entry in reply:
                start, end, master = int(entry[0]), int(entry[1]), entry[2]
                host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
                owner = (host or where[0], int(master[1]))
                for slot in range(start, end + 1):
                    slots[slot] = owner
            self._slots = slots
            self._stale = False
            owners = set(slots)
            for gone in [w for w in self._nodes if w not in owners and w not in self._seeds]:
                self._nodes.pop(gone).close()
            return
        raise RedisConnectionError(f"no Redis Cluster node answered CLUSTER SLOTS: {error}")

    async def _owner(self, key: Any) -> FastRedis:
        if self._stale:
            await self._refresh()
        if key is None:
            return self._node(next((w for w in self._slots if w is not None), self._seeds[0]))
        owner = self._slots[slot_of(key)]
        if owner is None:
            raise ResponseError(f"CLUSTERDOWN Hash slot {slot_of(key)} not served")
        return self._node(owner)

    async def execute(self, *args: Any) -> Any:
        return await self._routed(_key_of(args), args)

    async def _routed(self, key: Any, args: tuple[Any, ...]) -> Any:
        """``args`` on its key's master, following redirections; TRYAGAIN (a slot moving
        with this command's keys split) waited out for up to ``tryagain_seconds``."""
        pauses: Iterator[float] | None = None
        while True:
            try:
                return await self._redirected(key, args)
            except ResponseError as exc:
                if not str(exc).startswith("TRYAGAIN"):
                    raise
                pauses = pauses or moving_slot_pauses(self.tryagain_seconds)
                wait = next(pauses, None)
                if wait is None:
                    raise
            await asyncio.sleep(wait)

    async def _redirected(self, key: Any, args: tuple[Any, ...]) -> Any:
        client = await self._owner(key)
        asking = False
        for _ in range(self.MAX_REDIRECTS):
            try:
                if asking:
                    return await client.execute_asking(*args)
                return await client.execute(*args)
            except ResponseError as exc:
                message = str(exc)
                kind, _, rest = message.partition(" ")
                if kind not in ("MOVED", "ASK"):
                    if kind == "TRYAGAIN":
                        metrics.redis_redirected("tryagain")
                    elif kind == "CLUSTERDOWN":
                        self._stale = True
                    raise
                metrics.redis_redirected("ask" if kind == "ASK" else "moved")
                slot_text, _, address = rest.partition(" ")
                host, _, port = address.rpartition(":")
                where = (host or self.target.host, int(port))
                if kind == "MOVED":
                    self._slots[int(slot_text)] = where
                    self._stale = True  # a failover or resharding: read the whole map again
                client, asking = self._node(where), kind == "ASK"
            except (RedisConnectionError, RedisTimeoutError):
                self._stale = True  # the master may have failed over: re-read the map
                raise
        raise RedisConnectionError("Redis Cluster redirected a command too many times")

    async def evalsha(self, script: str, keys: list[Any], args: list[Any]) -> Any:
        """Run a Lua script by its SHA1 on its keys' master, loading it there on NOSCRIPT."""
        sha = hashlib.sha1(script.encode()).hexdigest()
        key = keys[0] if keys else None
        try:
            return await self._routed(key, ("EVALSHA", sha, len(keys), *keys, *args))
        except NoScriptError:
            return await self._routed(key, ("EVAL", script, len(keys), *keys, *args))

    def close(self) -> None:
        for client in self._nodes.values():
            client.close()
        self._nodes.clear()


def moving_slot_pauses(budget: float, first: float = 0.025,
                       most: float = 0.2) -> Iterator[float]:
    """The pauses before sending again a command refused because its slot is moving (it
    did not run): ``first`` seconds, doubling up to ``most``, as long as the next attempt
    still starts within ``budget`` seconds of the first refusal (this generator's first
    step). The hot path's client and the sync cluster client (portal.infra.redis) both."""
    deadline = time.monotonic() + budget
    wait = first
    while time.monotonic() + wait <= deadline:
        yield wait
        wait = min(wait * 2, most)


def slot_of(key: Any) -> int:
    """The hash slot of a key (CRC16 of its hash tag), as the cluster computes it."""
    from redis.crc import key_slot

    data = key if isinstance(key, bytes) else str(key).encode()
    return int(key_slot(data))
