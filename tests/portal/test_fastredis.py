"""The Redis clients against private redis-server processes (a password, ACL users, a
database other than 0, a unix socket, TLS): the hot path's client (portal.infra.fastredis) writes
nothing before its AUTH and SELECT are answered, on the first connection and on every
reconnection; every client (fast, sync, Django cache, Celery broker) reaches the same server
and database for each accepted URL form; a URL that cannot be honoured is refused.

Each server is started here, on a free port or a socket in a temporary directory, with no
persistence, and stopped afterwards; the shared Redis of the test run is not touched.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from django.test import override_settings
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError

from portal.infra.fastredis import FastRedis
from portal.infra.redis import sync_client_for
from portal.infra.redisurl import celery_broker_url, parse_redis_url
from tests.servers import ROOT, free_port

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="needs the redis-server binary")

PASSWORD = "s3cret:/@pw"  # characters that must be percent-encoded in a URL
QUOTED = "s3cret%3A%2F%40pw"


@dataclass
class PrivateRedis:
    proc: subprocess.Popen[bytes]
    dir: Path
    port: int = 0
    tls_port: int = 0
    unixsocket: str = ""
    tls_files: dict[str, str] = field(default_factory=dict)

    def admin(self, db: int = 0) -> redis.Redis:
        """A plain redis-py client as the default user: the judge, independent of the code
        under test."""
        if self.unixsocket:
            return redis.Redis(unix_socket_path=self.unixsocket, password=PASSWORD, db=db)
        if self.port:
            return redis.Redis(port=self.port, password=PASSWORD, db=db)
        return redis.Redis(host="localhost", port=self.tls_port, password=PASSWORD, db=db,
                           ssl=True, ssl_ca_certs=self.tls_files["ca"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def start_redis(*, port: bool = True, unixsocket: bool = False,
                tls: dict[str, str] | None = None) -> PrivateRedis:
    # A short directory: a unix socket's path must fit in 107 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="tp-redis-"))
    server = PrivateRedis(proc=None, dir=workdir)  # type: ignore[arg-type]
    args = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(workdir), "--requirepass", PASSWORD]
    server.port = free_port() if port else 0
    args += ["--port", str(server.port)]
    if unixsocket:
        server.unixsocket = str(workdir / "redis.sock")
        args += ["--unixsocket", server.unixsocket, "--unixsocketperm", "700"]
    if tls is not None:
        server.tls_port, server.tls_files = free_port(), tls
        args += ["--tls-port", str(server.tls_port), "--tls-cert-file", tls["cert"],
                 "--tls-key-file", tls["key"], "--tls-ca-cert-file", tls["ca"],
                 "--tls-auth-clients", "no"]
    log = open(workdir / "redis.log", "wb")  # noqa: SIM115 (the process keeps it)
    server.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while True:
        try:
            if server.admin().ping():
                return server
        except redis.RedisError:
            pass
        if server.proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            output = (workdir / "redis.log").read_text(errors="replace")
            raise RuntimeError(f"redis-server did not start: {output[-2000:]}")
        time.sleep(0.02)


@pytest.fixture
def tcp_redis() -> Iterator[PrivateRedis]:
    server = start_redis()
    yield server
    server.stop()


def key_count(server: PrivateRedis, db: int) -> int:
    return int(server.admin(db).dbsize())


async def staggered_burst(client: FastRedis, prefix: str, n: int = 300) -> list[Any]:
    """``n`` SET+INCR pairs from coroutines that start over the first few dozen event-loop
    iterations and milliseconds: some before the connection exists, some while its
    handshake is running, some after."""

    async def one(i: int) -> None:
        for _ in range(i % 40):
            await asyncio.sleep(0)
        if i % 3 == 0:
            await asyncio.sleep((i % 7) / 1000)
        await client.execute("SET", f"{prefix}:k{i}", i)
        await client.execute("INCR", f"{prefix}:n")

    return await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)


# --- AUTH and SELECT before anything else ---------------------------------------------------

@pytest.mark.parametrize("acl_user", [False, True], ids=["default-user", "acl-user"])
async def test_no_command_is_written_before_auth_and_select_are_answered(tcp_redis, acl_user):
    if acl_user:
        tcp_redis.admin().acl_setuser("gw", enabled=True, passwords=["+" + PASSWORD],
                                      keys=["*"], commands=["+@all"])
    user = "gw" if acl_user else ""
    client = FastRedis(f"redis://{user}:{QUOTED}@127.0.0.1:{tcp_redis.port}/3")

    results = await staggered_burst(client, "a")

    assert [r for r in results if r is not None] == []
    assert key_count(tcp_redis, 0) == 0, "a command ran before SELECT 3"
    assert key_count(tcp_redis, 3) == 301
    assert int(tcp_redis.admin(3).get("a:n")) == 300
    if acl_user:  # the connection really is the ACL user's, not the default user's
        assert await client.execute("ACL", "WHOAMI") == b"gw"
    client.close()


async def test_a_wrong_password_fails_every_waiting_command_with_a_clear_error(tcp_redis):
    client = FastRedis(f"redis://:wrong@127.0.0.1:{tcp_redis.port}/3")

    results = await asyncio.wait_for(staggered_burst(client, "w", 100), timeout=10)

    assert len(results) == 100
    assert all(isinstance(r, AuthenticationError) for r in results), results[:3]
    message = str(results[0])
    assert "refused AUTH" in message and "WRONGPASS" in message and "REDIS_URL" in message
    assert "wrong" not in message  # the password is never echoed
    # Still refused (not hung, not half-connected) on the next call.
    with pytest.raises(AuthenticationError):
        await asyncio.wait_for(client.execute("PING"), timeout=5)
    assert key_count(tcp_redis, 0) == key_count(tcp_redis, 3) == 0


async def test_a_missing_password_is_an_authentication_error_too(tcp_redis):
    client = FastRedis(f"redis://127.0.0.1:{tcp_redis.port}/3")
    with pytest.raises(AuthenticationError, match="refused SELECT.*NOAUTH"):
        await asyncio.wait_for(client.execute("SET", "x", 1), timeout=5)
    assert key_count(tcp_redis, 0) == 0


async def test_a_refused_select_is_an_error_not_database_0(tcp_redis):
    client = FastRedis(f"redis://:{QUOTED}@127.0.0.1:{tcp_redis.port}/99")
    with pytest.raises(RedisConnectionError, match="refused SELECT.*DB index is out of range"):
        await asyncio.wait_for(client.execute("SET", "x", 1), timeout=5)
    assert key_count(tcp_redis, 0) == 0


async def test_a_server_refusing_new_connections_is_an_error_not_a_hang(tcp_redis):
    admin = tcp_redis.admin()
    admin.config_set("maxclients", 1)  # this admin connection is the one
    client = FastRedis(f"redis://:{QUOTED}@127.0.0.1:{tcp_redis.port}/3")
    results = await asyncio.wait_for(
        asyncio.gather(*(client.execute("PING") for _ in range(20)), return_exceptions=True),
        timeout=5)
    assert all(isinstance(r, RedisConnectionError) for r in results), results[:3]
    assert not any(isinstance(r, AuthenticationError) for r in results)  # not a password issue


async def test_every_reconnection_runs_the_handshake_before_any_command(tcp_redis):
    admin = tcp_redis.admin()
    client = FastRedis(f"redis://:{QUOTED}@127.0.0.1:{tcp_redis.port}/3")
    await client.execute("SET", "first", 1)

    # Dropped while idle: the next commands reconnect, AUTH and SELECT first.
    assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
    await asyncio.sleep(0.2)  # the client sees the connection close
    assert [r for r in await staggered_burst(client, "idle") if r is not None] == []

    # Dropped in the middle of a burst: commands in flight fail (ConnectionError), the
    # rest reconnect; whatever succeeded went to db 3.
    async def killer() -> None:
        for _ in range(15):
            await asyncio.sleep(0)
        admin.client_kill_filter(_type="normal", skipme=True)

    results, _ = await asyncio.gather(staggered_burst(client, "busy"), killer())
    errors = [r for r in results if r is not None]
    assert all(isinstance(r, RedisConnectionError) for r in errors), errors[:3]
    assert len(errors) < 300
    assert await client.execute("GET", "first") == b"1"

    assert key_count(tcp_redis, 0) == 0, "a command ran on a reconnection before SELECT 3"
    assert int(tcp_redis.admin(3).get("idle:n")) == 300
    assert int(tcp_redis.admin(3).get("busy:n")) > 0
    client.close()


# --- transports: unix sockets and TLS -------------------------------------------------------

async def test_unix_socket_url_with_password_and_db_for_both_clients():
    server = start_redis(port=False, unixsocket=True)
    try:
        url = f"unix://:{QUOTED}@{server.unixsocket}?db=5"
        fast = FastRedis(url)
        await fast.execute("SET", "via-fast", "1")
        assert await fast.execute("GET", "via-fast") == b"1"
        sync = sync_client_for(url)
        sync.set("via-sync", "2")
        assert sync.get("via-fast") == b"1"
        assert sorted(server.admin(5).keys()) == [b"via-fast", b"via-sync"]
        assert key_count(server, 0) == 0
        fast.close()
    finally:
        server.stop()


def make_tls_files(directory: Path) -> dict[str, str]:
    """A throw-away CA and a server certificate for the name ``localhost`` (no IP address)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key: Any, issuer: str, issuer_key: Any, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                              content_commitment=False, key_encipherment=False,
                              data_encipherment=False, key_agreement=False,
                              encipher_only=False, decipher_only=False), critical=True)
            builder = builder.add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    files = {"ca": directory / "ca.pem", "cert": directory / "server.pem",
             "key": directory / "server.key"}
    files["ca"].write_bytes(cert("Turnpike test CA", ca_key, "Turnpike test CA", ca_key, True)
                            .public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert("localhost", server_key, "Turnpike test CA", ca_key, False)
                              .public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return {name: str(path) for name, path in files.items()}


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[PrivateRedis]:
    probe = subprocess.run(["redis-server", "--port", "0", "--tls-port", "0"],
                           capture_output=True, text=True, timeout=10)
    if "tls-port" in probe.stdout + probe.stderr and "Bad directive" in probe.stdout + probe.stderr:
        pytest.skip("this redis-server is built without TLS (--tls-port is unknown)")
    certs = Path(tempfile.mkdtemp(prefix="tp-tls-"))
    server = start_redis(port=False, tls=make_tls_files(certs))
    yield server
    server.stop()
    shutil.rmtree(certs, ignore_errors=True)


def tls_url(server: PrivateRedis, host: str = "localhost", **params: str) -> str:
    query = "&".join(f"{name}={value}" for name, value in params.items())
    return f"rediss://:{QUOTED}@{host}:{server.tls_port}/4" + (f"?{query}" if query else "")


async def test_rediss_url_speaks_tls_with_the_given_ca_for_both_clients(tls_redis):
    url = tls_url(tls_redis, ssl_ca_certs=tls_redis.tls_files["ca"])
    fast = FastRedis(url)
    await fast.execute("SET", "tls-fast", "1")
    sync = sync_client_for(url)
    sync.set("tls-sync", "2")
    assert sync.get("tls-fast") == b"1" and await fast.execute("GET", "tls-sync") == b"2"
    assert set(tls_redis.admin(4).keys()) >= {b"tls-fast", b"tls-sync"}
    assert key_count(tls_redis, 0) == 0
    fast.close()


async def test_rediss_verifies_the_certificate_by_default(tls_redis):
    """Without ssl_ca_certs the system CAs are the judge: a private CA is refused."""
    url = tls_url(tls_redis)
    with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        await FastRedis(url).execute("PING")
    with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        sync_client_for(url).ping()


async def test_rediss_checks_the_host_name_unless_told_not_to(tls_redis):
    ca = tls_redis.tls_files["ca"]
    by_ip = tls_url(tls_redis, host="127.0.0.1", ssl_ca_certs=ca)
    with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        await FastRedis(by_ip).execute("PING")
    with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        sync_client_for(by_ip).ping()
    unchecked = tls_url(tls_redis, host="127.0.0.1", ssl_ca_certs=ca, ssl_check_hostname="false")
    assert await FastRedis(unchecked).execute("PING") == b"PONG"
    assert sync_client_for(unchecked).ping() is True


async def test_rediss_ssl_cert_reqs_none_skips_verification(tls_redis):
    url = tls_url(tls_redis, ssl_cert_reqs="none")
    assert await FastRedis(url).execute("PING") == b"PONG"
    assert sync_client_for(url).ping() is True


def test_plain_redis_to_a_tls_port_is_not_silently_accepted(tls_redis):
    with pytest.raises(RedisConnectionError):
        redis.Redis(host="localhost", port=tls_redis.tls_port, password=PASSWORD,
                    socket_timeout=2).ping()


# --- refused URLs ---------------------------------------------------------------------------

@pytest.mark.parametrize("url, named", [
    ("http://127.0.0.1:6379/0", "http://"),
    ("memcached://127.0.0.1:11211", "memcached://"),
    ("redis+socket:///tmp/redis.sock", "redis+socket://"),
    ("127.0.0.1:6379", "(none)"),
    ("rediss://h:6379/0?ssl_password=x", "ssl_password"),
    ("redis://h:6379/0?ssl_ca_certs=/ca.pem", "ssl_ca_certs needs a rediss://"),
    ("rediss://h:6379/0?ssl_cert_reqs=maybe", "ssl_cert_reqs must be"),
    ("unix://:pw@", "socket's path"),
    ("redis://h:6379/three", "invalid database"),
])
def test_a_url_that_cannot_be_honoured_is_refused_at_construction(url, named):
    for build in (FastRedis, sync_client_for, celery_broker_url):
        with pytest.raises(ValueError) as raised:
            build(url)
        assert named in str(raised.value)
        assert "pw" not in str(raised.value).replace("password", "")


def test_a_bad_redis_url_stops_start_up():
    env = {**os.environ, "REDIS_URL": "memcached://:hunter2@cache:11211",
           "DJANGO_SETTINGS_MODULE": "portal.settings"}
    env.pop("DATABASE_URL", None)
    done = subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "ImproperlyConfigured: REDIS_URL: Redis URL scheme memcached:// is not supported" \
        in done.stderr
    assert "hunter2" not in done.stderr


def test_the_url_forms_parse_like_redis_py():
    for url in [f"redis://:{QUOTED}@example:6380/7", f"rediss://u:{QUOTED}@example/2?db=3",
                f"unix://u:{QUOTED}@/run/redis.sock?db=4", "redis://localhost"]:
        ours, theirs = parse_redis_url(url), redis.connection.parse_url(url)
        assert (ours.db, ours.password, ours.username) == (
            theirs.get("db", 0), theirs.get("password"), theirs.get("username"))
        assert ours.path == theirs.get("path")
        if ours.path is None:
            assert (ours.host, ours.port) == (theirs["host"], theirs.get("port", 6379))


# --- REDIS_MAX_CONNECTIONS ------------------------------------------------------------------

def test_the_sync_pool_opens_at_most_redis_max_connections(tcp_redis):
    """Eight threads blocked at once on a 3-connection pool: Redis sees 3 connections from
    it, and the other threads wait their turn instead of failing."""
    admin = tcp_redis.admin()
    url = f"redis://:{QUOTED}@127.0.0.1:{tcp_redis.port}/2?client_name=pool-under-test"
    with override_settings(REDIS_MAX_CONNECTIONS=3):
        client = sync_client_for(url)
    assert client.connection_pool.max_connections == 3

    def pool_connections() -> int:
        return sum(1 for c in admin.client_list() if c["name"] == "pool-under-test")

    got: list[bytes] = []

    def worker() -> None:
        got.append(client.blpop(["queue"], timeout=8)[1])

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while int(admin.info("clients")["blocked_clients"]) < 3:
        assert time.monotonic() < deadline, "three BLPOPs never blocked"
        time.sleep(0.02)
    time.sleep(0.3)  # time for a fourth connection to appear, were the pool unbounded
    assert int(admin.info("clients")["blocked_clients"]) == 3
    assert pool_connections() == 3
    admin.execute_command("SELECT", 2)
    admin.rpush("queue", *[str(i) for i in range(8)])
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(got) == sorted(str(i).encode() for i in range(8))
    assert pool_connections() == 3


# --- the other users of REDIS_URL: the Django cache and the Celery broker -------------------

PROBE = """
import json, django
django.setup()
from django.conf import settings
from django.core.cache import cache
from portal.celery import app
from portal.infra.redis import sync_redis

cache.set("cache-probe", "ok", 60)
pool = cache._cache._get_connection_pool(True)
with app.connection_for_write() as conn:
    conn.ensure_connection(max_retries=1)
    broker = conn.default_channel.client
    broker.set("broker-probe", "ok")
    kwargs = broker.connection_pool.connection_kwargs
sync_redis().set("sync-probe", "ok")
print(json.dumps({"broker_url": settings.CELERY_BROKER_URL,
                  "broker_db": kwargs.get("db"),
                  "broker_cert_reqs": int(kwargs.get("ssl_cert_reqs", -1)),
                  "cache_pool": type(pool).__name__, "cache_max": pool.max_connections,
                  "sync_max": sync_redis().connection_pool.max_connections}))
"""


def probe_settings(redis_url: str) -> dict[str, Any]:
    env = {**os.environ, "REDIS_URL": redis_url, "REDIS_MAX_CONNECTIONS": "7",
           "DJANGO_SETTINGS_MODULE": "portal.settings"}
    env.pop("DATABASE_URL", None)
    env.pop("CELERY_BROKER_URL", None)
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_cache_broker_and_sync_client_follow_a_unix_socket_url():
    server = start_redis(port=False, unixsocket=True)
    try:
        seen = probe_settings(f"unix://:{QUOTED}@{server.unixsocket}?db=6")
        assert seen["broker_url"].startswith("redis+socket://")
        assert seen["broker_db"] == 6
        assert (seen["cache_pool"], seen["cache_max"], seen["sync_max"]) == (
            "BlockingConnectionPool", 7, 7)
        keys = sorted(key for key in server.admin(6).keys() if b"probe" in key)
        assert_probes(keys)
        assert key_count(server, 0) == 0
    finally:
        server.stop()


def test_cache_broker_and_sync_client_follow_a_rediss_url_and_verify(tls_redis):
    import ssl

    seen = probe_settings(tls_url(tls_redis, ssl_ca_certs=tls_redis.tls_files["ca"]))
    assert seen["broker_url"].startswith("rediss://")
    assert seen["broker_cert_reqs"] == ssl.CERT_REQUIRED  # kombu's own default is CERT_NONE
    assert seen["broker_db"] == 4
    keys = sorted(key for key in tls_redis.admin(4).keys() if b"probe" in key)
    assert_probes(keys)


def assert_probes(keys: list[bytes]) -> None:
    """The three clients' probe keys, all in the one database (the cache's under
    Turnpike's Redis prefix: ``<prefix>cache:1:cache-probe``)."""
    assert len(keys) == 3 and b"broker-probe" in keys and b"sync-probe" in keys
    assert any(k.endswith(b"cache:1:cache-probe") for k in keys), keys


def test_the_broker_url_keeps_a_plain_url_and_explicit_tls_choices():
    assert celery_broker_url("redis://127.0.0.1:6379/15") == "redis://127.0.0.1:6379/15"
    assert celery_broker_url("redis://h/2?socket_timeout=5&db=3") == "redis://h:6379/3"
    assert celery_broker_url(f"rediss://u:{QUOTED}@h:7000/1?ssl_cert_reqs=none") == \
        f"rediss://u:{QUOTED}@h:7000/1?ssl_cert_reqs=none"
    assert celery_broker_url(f"unix://:{QUOTED}@/run/r.sock?db=2") == \
        f"redis+socket://:{QUOTED}@/run/r.sock?virtual_host=2"
