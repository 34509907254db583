"""Hosts simulated with Linux network namespaces (``ip netns`` and veth pairs, iproute2):
each host is a namespace ``tpn-<name>`` with one interface (eth0, 10.77.0.x/24) on a bridge
in the root namespace, which holds 10.77.0.1 so the test process reaches every host. Where
the kernel has netem, every host's eth0 delays what it sends by ``DELAY`` (so a round trip
between two hosts takes twice that). On a kernel without netem (this project's CI machines
are such: ``tc`` answers "Specified qdisc kind is unknown"), the shared-state hosts (Redis
and PostgreSQL) listen on their own loopback behind ``tests/faults/delayrelay.py``, which
adds the same delay in each direction of every connection another host makes to them.

Only names ``tpn-*`` and addresses in 10.77.0.0/24 are used; what a previous, aborted run
left behind (namespaces, their processes, the bridge) is removed before building, and one
run at a time holds the lock file, so two test runs on one machine wait for each other
instead of tearing down each other's hosts.
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.deploy.topology import COMMANDS
from tests.servers import ROOT, Gateway, new_log, wait_for_port

PREFIX = "tpn-"
BRIDGE = "tpn-br0"
NETWORK = "10.77.0"
ROOT_ADDRESS = f"{NETWORK}.1"  # the test process's side of the bridge
HOSTS = {"lb": 10, "gw1": 11, "gw2": 12, "gw3": 13, "redis": 20, "pg": 21, "up": 30}
DELAY = "1ms"
LOCK = Path(tempfile.gettempdir()) / "tpn-topology.lock"


def address(host: str) -> str:
    return f"{NETWORK}.{HOSTS[host]}"


def namespace(host: str) -> str:
    return PREFIX + host


def inside(host: str) -> list[str]:
    """The prefix that runs a command on ``host``."""
    return ["ip", "netns", "exec", namespace(host)]


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")
    return done


@contextmanager
def exclusive() -> Iterator[None]:
    """One topology on the machine at a time."""
    with open(LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ours() -> list[str]:
    listed = sh("ip", "netns", "list").stdout.splitlines()
    return [line.split()[0] for line in listed if line.startswith(PREFIX)]


def tear_down() -> None:
    """Kill every process in a ``tpn-*`` namespace, delete the namespaces and the bridge
    (the host ends of the veth pairs go with their namespaces)."""
    for name in ours():
        for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        sh("ip", "netns", "del", name, check=False)
    if sh("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        sh("ip", "link", "del", BRIDGE)
    for stale in glob.glob(os.path.join(tempfile.gettempdir(), "tpn-pg-*")):
        shutil.rmtree(stale, ignore_errors=True)  # an aborted run's database cluster


def build() -> bool:
    """Make the bridge and every host; returns whether the latency could be added (the
    kernel may have been built without netem)."""
    tear_down()
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "addr", "add", f"{ROOT_ADDRESS}/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    delayed = True
    for host in HOSTS:
        ns = namespace(host)
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", ns, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", ns, "master", BRIDGE, "up")
        sh("ip", "-n", ns, "addr", "add", f"{address(host)}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        if delayed:
            netem = sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root",
                       "netem", "delay", DELAY, check=False)
            if netem.returncode != 0:
                if "unknown" not in netem.stderr.lower():
                    raise RuntimeError(f"tc netem failed: {netem.stderr.strip()}")
                delayed = False
    return delayed


def service_bind(host: str, delayed: bool) -> str:
    """Where a service on ``host`` listens: its bridge address when netem delays the links,
    else its namespace's loopback, behind ``relay()``."""
    return address(host) if delayed else "127.0.0.1"


def relay(host: str, port: int) -> subprocess.Popen[Any]:
    """The delaying relay on ``host``: its bridge address and ``port`` to the service on the
    namespace's loopback, ``DELAY`` each way (see delayrelay.py)."""
    delay_ms = DELAY.removesuffix("ms")
    return subprocess.Popen(
        [*inside(host), sys.executable, "-m", "tests.faults.delayrelay",
         "--listen", f"{address(host)}:{port}", "--target", f"127.0.0.1:{port}",
         "--delay-ms", delay_ms], cwd=ROOT, stdout=new_log(f"relay-{host}").open("ab"),
        stderr=subprocess.STDOUT)


def command(name: str) -> list[str]:
    """A process's command from the deployment topology (tests/deploy/topology.py), with
    this virtualenv's interpreter for the image's ``python`` (and its ``celery``)."""
    argv = list(COMMANDS[name])
    if argv[0] == "python":
        argv[0] = sys.executable
    elif argv[0] == "celery":
        argv[0] = str(Path(sys.executable).with_name("celery"))
    return argv


def web_command(bind: str, port: int) -> list[str]:
    """The ``web`` process's command, listening on ``bind``:``port``."""
    argv = command("web")
    argv[argv.index("-b") + 1] = bind
    argv[argv.index("-p") + 1] = str(port)
    return argv


def launch_web(host: str, port: int, env: dict[str, str]) -> Gateway:
    """Start a ``web`` process on ``host``:``port`` (see ``wait_listening``)."""
    log = new_log(f"gateway-{host}-{port}")
    with open(log, "ab") as out:
        proc = subprocess.Popen([*inside(host), *web_command(address(host), port)], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    return Gateway(proc=proc, url=f"http://{address(host)}:{port}", log=log)


def wait_listening(gateway: Gateway) -> Gateway:
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    try:
        wait_for_port(int(port), gateway.proc, timeout=240, host=host)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; its output: {gateway.log.read_text(errors='replace')[-3000:]}"
                           ) from None
    return gateway


def start_web(host: str, port: int, env: dict[str, str]) -> Gateway:
    return wait_listening(launch_web(host, port, env))


def start(host: str, name: str, env: dict[str, str]) -> subprocess.Popen[Any]:
    """A topology process other than ``web`` (``usagewriter``, ...), on ``host``."""
    out = open(new_log(f"{name}-{host}"), "ab")  # noqa: SIM115 (the process keeps it)
    return subprocess.Popen([*inside(host), *command(name)], cwd=ROOT, env=env, stdout=out,
                            stderr=subprocess.STDOUT)


def run(host: str, name: str, env: dict[str, str]) -> None:
    """A one-off topology process (``migrate``), on ``host``, to its end."""
    done = subprocess.run([*inside(host), *command(name)], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed: {(done.stdout + done.stderr)[-3000:]}")


class Postgres:
    """A PostgreSQL cluster of its own (initdb) running on the ``pg`` host, trusting the
    10.77.0.0/24 network."""

    PORT = 5432

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                       key=lambda p: int(Path(p).parts[-3]))
        if not found:
            raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql")
        self.bin = Path(found[-1]).parent
        self.home = Path(tempfile.mkdtemp(prefix="tpn-pg-"))
        shutil.chown(self.home, "postgres", "postgres")
        self.data = self.home / "data"

    def as_postgres(self, *args: str, host: str | None = None) -> None:
        sh(*(inside(host) if host else []), "runuser", "-u", "postgres", "--", *args)

    def start(self, bind: str) -> None:
        """``bind``: the listen address (``service_bind``)."""
        self.as_postgres(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust",
                         "-U", "postgres", "-E", "UTF8", "--no-sync")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = '{bind}'\nport = {self.PORT}\n"
                       f"unix_socket_directories = '{self.home}'\nmax_connections = 300\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
        with open(self.data / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {NETWORK}.0/24 trust\n")
        self.as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l",
                         str(self.home / "log"), "-w", "-t", "60", "start", host="pg")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            sh("runuser", "-u", "postgres", "--", str(self.bin / "pg_ctl"), "-D",
               str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.home, ignore_errors=True)

    def url(self, name: str) -> str:
        return f"postgres://postgres@{address('pg')}:{self.PORT}/{name}"
