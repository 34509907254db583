"""Real processes for end-to-end tests: the fake upstream, the gateway under daphne and a
Celery worker."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

ROOT = Path(__file__).resolve().parent.parent

# Every log file a process of this test run writes: the secret scan (tests.secretscan) reads
# them all at the end of the session. Subprocesses started here write into log_dir(); a log
# a test chose the path of is added to LOG_FILES.
LOG_FILES: list[Path] = []
_log_dir: Path | None = None
_serial = itertools.count(1)


def log_dir() -> Path:
    """This test run's log folder (made on first use)."""
    global _log_dir
    if _log_dir is None:
        _log_dir = Path(tempfile.mkdtemp(prefix="turnpike-test-logs-"))
    return _log_dir


def new_log(name: str) -> Path:
    """A fresh file in the run's log folder for one process's output."""
    return keep_log(log_dir() / f"{name}-{next(_serial)}.log")


def keep_log(path: Path) -> Path:
    """Have the secret scan read ``path`` too."""
    LOG_FILES.append(path)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[Any], timeout: float = 20.0,
                  host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {host}:{port} after {timeout}s")


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class FakeUpstream:
    proc: subprocess.Popen[Any]
    url: str  # server root: http://127.0.0.1:PORT

    @property
    def openai_url(self) -> str:
        return self.url + "/v1"

    def requests(self) -> list[dict[str, Any]]:
        return httpx.get(self.url + "/_fake/requests").json()

    def clear(self) -> None:
        httpx.delete(self.url + "/_fake/requests")
        httpx.delete(self.url + "/_fake/keys")
        httpx.post(self.url + "/_fake/stats/reset")

    def script_key(self, key: str, **behaviour: Any) -> None:
        """Make requests presenting credential ``key`` fail or wait (see the fake)."""
        httpx.post(self.url + "/_fake/keys", json={"key": key, **behaviour}).raise_for_status()

    def stats(self) -> dict[str, int]:
        return httpx.get(self.url + "/_fake/stats").json()


def start_fake_upstream(*api_keys: str) -> FakeUpstream:
    port = free_port()
    args = [sys.executable, "-m", "tests.fakeupstream", "--port", str(port)]
    for key in api_keys:
        args += ["--api-key", key]
    proc = subprocess.Popen(args, cwd=ROOT)
    wait_for_port(port, proc)
    return FakeUpstream(proc=proc, url=f"http://127.0.0.1:{port}")


def database_url(settings_dict: dict[str, Any]) -> str:
    if settings_dict["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    user = quote(settings_dict.get("USER") or "", safe="")
    password = quote(settings_dict.get("PASSWORD") or "", safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = settings_dict.get("PORT") or 5432
    return f"postgres://{auth}{host}:{port}/{settings_dict['NAME']}"


@dataclass
class Gateway:
    proc: subprocess.Popen[Any]
    url: str  # http://127.0.0.1:PORT
    log: Path  # its stdout and stderr

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def log_lines(self) -> list[str]:
        return self.log.read_text(encoding="utf-8", errors="replace").splitlines()


def start_gateway(env_overrides: dict[str, str], log: Path | None = None) -> Gateway:
    """A daphne process on a free port, its stdout and stderr going to ``log`` (default: a
    new file in the run's log folder)."""
    port = free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings", **env_overrides}
    log = keep_log(log) if log is not None else new_log("gateway")
    with open(log, "ab") as out:  # the process has its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "portal.server", "-b", "127.0.0.1", "-p", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; its output: {log.read_text(errors='replace')[-3000:]}") \
            from None
    return Gateway(proc=proc, url=f"http://127.0.0.1:{port}", log=log)


@dataclass
class CeleryWorker:
    """A real ``celery -A portal worker`` process (thread pool), restartable."""

    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[Any] | None = None

    def start(self, timeout: float = 60.0) -> None:
        """Start it and wait until it says it is ready to take tasks."""
        self.log.write_bytes(b"")
        keep_log(self.log)
        out = open(self.log, "ab")  # noqa: SIM115 (the process keeps it)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "portal", "worker", "-P", "threads",
             "-c", "4", "-l", "INFO", "-n", f"turnpike-test-{free_port()}@%h",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env={**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings",
                           **self.env},
            stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while b" ready." not in self.log.read_bytes():
            if self.proc.poll() is not None:
                raise RuntimeError("the Celery worker exited: "
                                   + self.log.read_text(errors="replace")[-2000:])
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Celery worker was not ready after {timeout}s")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the worker dies mid-task, as a crashed machine's would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


def start_celery_worker(env_overrides: dict[str, str], log: Path) -> CeleryWorker:
    worker = CeleryWorker(env=env_overrides, log=log)
    worker.start()
    return worker


class TcpProxy:
    """A loopback TCP proxy that can be cut and restored, to make a database unreachable
    for a while the way a network blip or a restart would."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        import threading

        self.target = (target_host, target_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        # The local port of every connection made to the target: a PostgreSQL test ends by
        # terminating the backends still attached to them (terminate_backends).
        self.upstream_ports: set[int] = set()
        self.resume()

    def resume(self) -> None:
        import threading

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def pause(self) -> None:
        """Refuse new connections and break every open one."""
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            # Shut down before closing: a close alone leaves the socket listening while the
            # accept thread is blocked in accept() on it (the call holds it open), so resume()
            # could not bind the port again until some client happened to connect.
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            self.upstream_ports.add(upstream.getsockname()[1])
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass


def terminate_backends(proxy: TcpProxy) -> None:
    """End the PostgreSQL sessions that came through ``proxy``. A cut can leave one "idle in
    transaction" with its locks held until PostgreSQL notices the client is gone (the server
    setting DATABASE_IDLE_IN_TRANSACTION_TIMEOUT bounds that); the test's own database
    teardown must not wait for it."""
    from django.db import connection

    if not proxy.upstream_ports:
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE client_port = ANY(%s) AND pid <> pg_backend_pid()",
                       [sorted(proxy.upstream_ports)])


class RedisServer:
    """A private redis-server that a test can stop and start again on the same port and
    data directory, with the append-only file on: what it held survives a restart, as in a
    production Redis configured for it."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 (the process keeps it)
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir)],
            stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.proc)

    def stop(self) -> None:
        """SIGTERM: Redis finishes its append-only file and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def fresh_database(database_url: str, name: str) -> str:
    """A new, empty PostgreSQL database ``name`` on the server of ``database_url`` (any
    database of that name is dropped first, with its connections): the benchmark smoke runs
    migrate it from nothing, so a schema a previous run or another branch left cannot break
    them. Returns its URL."""
    import psycopg

    base = database_url.rsplit("/", 1)[0]
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{base}/{name}"


def _port_pair_free(port: int) -> bool:
    """``port`` and its cluster bus port (+10000) both free on loopback."""
    for candidate in (port, port + 10000):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                return False
    return True


def _cluster_ports(count: int) -> list[int]:
    """TEST_REDIS_CLUSTER_PORT_BASE: consecutive ports from there; else free ones."""
    base = os.environ.get("TEST_REDIS_CLUSTER_PORT_BASE")
    if base:
        return [int(base) + i for i in range(count)]
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port < 55000 and port not in ports and _port_pair_free(port):
            ports.append(port)
    return ports


class RedisClusterServers:
    """A local Redis Cluster: ``masters`` masters and as many replicas (one each, when
    ``replicas``), created with ``redis-cli --cluster create``, data under a temporary
    directory. ``node_timeout_ms`` is how long a master may be silent before its replica
    takes over."""

    def __init__(self, masters: int = 3, replicas: bool = True,
                 node_timeout_ms: int = 2000) -> None:
        self.count = masters * (2 if replicas else 1)
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.ports = _cluster_ports(self.count)
        self.dir = Path(tempfile.mkdtemp(prefix="cluster-", dir="/tmp"))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """REDIS_URL for the cluster: its first node (the rest are discovered)."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start_node(self, port: int) -> None:
        node_dir = self.dir / str(port)
        node_dir.mkdir(exist_ok=True)
        log = new_log(f"redis-cluster-{port}")
        with open(log, "ab") as out:
            self.procs[port] = subprocess.Popen(
                ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                 "--appendonly", "no", "--cluster-enabled", "yes",
                 "--cluster-config-file", str(node_dir / "nodes.conf"),
                 "--cluster-node-timeout", str(self.node_timeout_ms), "--dir", str(node_dir)],
                stdout=out, stderr=subprocess.STDOUT)
        wait_for_port(port, self.procs[port])

    def start(self) -> None:
        for port in self.ports:
            self.start_node(port)
        args = ["redis-cli", "--cluster", "create",
                *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-yes"]
        if self.replicas:
            args += ["--cluster-replicas", "1"]
        subprocess.run(args, check=True, capture_output=True, timeout=60)
        self.wait_healthy()

    def cli(self, port: int, *args: str, timeout: float = 10) -> str:
        return subprocess.run(["redis-cli", "-p", str(port), *args], check=True,
                              capture_output=True, text=True, timeout=timeout).stdout

    def alive(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def wait_healthy(self, timeout: float = 60.0, skip: tuple[int, ...] = ()) -> None:
        """Until every running node (but ``skip``) says cluster_state:ok and sees every
        slot served."""
        deadline = time.monotonic() + timeout
        while True:
            states = {}
            for port in self.alive():
                if port in skip:
                    continue
                try:
                    states[port] = self.cli(port, "cluster", "info", timeout=2)
                except (subprocess.SubprocessError, OSError):
                    states[port] = "unreachable"
            if all("cluster_state:ok" in s and "cluster_slots_ok:16384" in s
                   for s in states.values()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"Redis Cluster not healthy after {timeout}s: {states}")
            time.sleep(0.2)

    def nodes(self, port: int | None = None) -> list[dict[str, Any]]:
        """CLUSTER NODES as seen by ``port`` (default: the first live node)."""
        text = self.cli(port or self.alive()[0], "cluster", "nodes")
        out = []
        for line in text.splitlines():
            parts = line.split()
            out.append({"id": parts[0], "port": int(parts[1].split("@")[0].rsplit(":", 1)[1]),
                        "flags": parts[2].split(","), "master": parts[3],
                        "slots": parts[8:]})
        return out

    def master_of(self, slot: int, port: int | None = None) -> int:
        for node in self.nodes(port):
            if "master" not in node["flags"] or "fail" in node["flags"]:
                continue
            for span in node["slots"]:
                if span.startswith("["):
                    continue
                low, _, high = span.partition("-")
                if int(low) <= slot <= int(high or low):
                    return int(node["port"])
        raise RuntimeError(f"no master serves slot {slot}")

    def replica_of(self, master_port: int) -> int:
        nodes = self.nodes()
        master_id = next(n["id"] for n in nodes if n["port"] == master_port)
        return next(n["port"] for n in nodes if n["master"] == master_id
                    and "fail" not in n["flags"])

    def stop(self) -> None:
        import shutil

        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
