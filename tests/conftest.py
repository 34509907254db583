"""Shared fixtures: real PostgreSQL/Redis (from DATABASE_URL/REDIS_URL), a real fake
upstream process and a real gateway process (daphne) on loopback."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from django.conf import settings
from django.db import connection

from billing.models import UsageLog
from gateway.models import Upstream
from gateway.services import upstream_create
from keys.models import Tenant
from keys.services import CreatedKey, key_create, tenant_get_or_create
from portal.infra.redis import sync_redis
from tests import secretscan
from tests.servers import (
    LOG_FILES,
    FakeUpstream,
    Gateway,
    database_url,
    log_dir,
    start_fake_upstream,
    start_gateway,
    stop,
)

UPSTREAM_SECRET = "sk-upstream-test-credential-0001"
DEMO_MODELS = ["gpt-4o-mini", "gpt-5", "gpt-5-codex", "o3"]
TEST_BODY_LIMIT = 4 * 1024 * 1024

# Test-run plumbing that only makes the suite faster (see tests/speedups.py).
pytest_plugins = ["tests.speedups"]


FAST_DIR = Path(__file__).with_name("fast")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fast", action="store_true",
        help="only the fast tier (make test-fast): tests marked `fast` (all of tests/fast/ "
             "is) and not `e2e`; pure and in-process, no subprocess, server or SQL")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """With --fast, open only the modules that can hold fast tests: those under tests/fast/
    and those that say ``pytest.mark.fast``. Importing every other module (Selenium,
    schemathesis, the process helpers) would cost more than the whole tier takes to run."""
    if not config.getoption("fast") or collection_path.suffix != ".py":
        return None
    if not collection_path.name.startswith("test_") or FAST_DIR in collection_path.parents:
        return None
    return "pytest.mark.fast" not in collection_path.read_text(encoding="utf-8")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/fast/ is in the fast tier without saying so. With --fast, the
    rest is deselected: a module marked fast may still hold a test that starts a server;
    such a test is marked e2e too."""
    for item in items:
        if FAST_DIR in item.path.parents:
            item.add_marker(pytest.mark.fast)
    if not config.getoption("fast"):
        return
    keep = [item for item in items
            if item.get_closest_marker("fast") and not item.get_closest_marker("e2e")]
    if len(keep) < len(items):
        kept = {id(item) for item in keep}
        config.hook.pytest_deselected(items=[i for i in items if id(i) not in kept])
        items[:] = keep


# --- the secret scan (tests.secretscan): no secret the run used is in any log it wrote ---------

def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_SCAN_HANDLER] = secretscan.install(log_dir() / "pytest.log")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Keep this process's log in the scan: a test that reconfigures logging (dictConfig:
    the logging tests, a Celery app set up in process) drops the root's handlers."""
    handler = item.config.stash.get(_SCAN_HANDLER, None)
    root = logging.getLogger()
    if handler is not None and handler not in root.handlers:
        root.addHandler(handler)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Gateways and workers have stopped (session fixtures end before this): read every log
    of the run once. Any secret found fails the run."""
    handler = session.config.stash.get(_SCAN_HANDLER, None)
    if handler is None:
        return
    logging.getLogger().removeHandler(handler)
    handler.close()
    files = {*log_dir().glob("*.log"), *LOG_FILES}
    found = secretscan.scan(sorted(files), secretscan.SECRETS)
    session.config.stash[_SCAN_RESULT] = (len(files), len(secretscan.SECRETS), found)
    if found:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    else:
        shutil.rmtree(log_dir(), ignore_errors=True)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int,
                            config: pytest.Config) -> None:
    result = config.stash.get(_SCAN_RESULT, None)
    if result is None:
        return
    files, secrets, found = result
    if not found:
        terminalreporter.write_line(
            f"secret scan: {secrets} secrets, none in the {files} log files of this run")
        return
    terminalreporter.section("secret scan: secrets in the logs", red=True)
    for hit in found[:50]:
        terminalreporter.write_line(str(hit))
    terminalreporter.write_line(f"{len(found)} found; the logs are kept in {log_dir()}")


_SCAN_HANDLER = pytest.StashKey[logging.Handler]()
_SCAN_RESULT = pytest.StashKey[tuple[int, int, list[secretscan.Found]]]()


@pytest.fixture(autouse=True)
def _clean_redis() -> Iterator[None]:
    """Each test starts with no Turnpike state in Redis (cached snapshots included)."""
    client = sync_redis()

    def wipe() -> None:
        if client is not None:
            keys = list(client.scan_iter(settings.GATEWAY_REDIS_PREFIX + "*", count=1000))
            if keys:
                client.delete(*keys)

    wipe()
    yield
    wipe()


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeUpstream]:
    server = start_fake_upstream(UPSTREAM_SECRET)
    yield server
    stop(server.proc)


def gateway_env(**overrides: str) -> dict[str, str]:
    """Environment for a gateway process that shares this test run's database and Redis."""
    env = {
        "DATABASE_URL": database_url(connection.settings_dict),
        "SECRET_KEY": settings.SECRET_KEY,
        "GATEWAY_REDIS_PREFIX": settings.GATEWAY_REDIS_PREFIX,
        "GATEWAY_USAGE_FLUSH_INTERVAL": "0.05",
        # No load balancer to wait for: a stopped test gateway drains what is in flight
        # and exits at once (tests/faults/test_drain.py sets its own grace).
        "GATEWAY_DRAIN_GRACE_SECONDS": "0",
        "GATEWAY_MAX_BODY_BYTES": str(TEST_BODY_LIMIT),
        "LOG_LEVEL": "INFO",
    }
    if settings.REDIS_URL:
        env["REDIS_URL"] = settings.REDIS_URL
    return {**env, **overrides}


@pytest.fixture(scope="session")
def gateway(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Gateway]:
    """One daphne process serving portal.asgi against the test database.

    GATEWAY_SNAPSHOT_TTL=0 makes the gateway re-read the shared (Redis) snapshot on every
    request, so a row committed by a test is visible to its very next request.
    """
    with django_db_blocker.unblock():
        server = start_gateway(gateway_env(GATEWAY_SNAPSHOT_TTL="0"))
    yield server
    stop(server.proc)


@pytest.fixture(scope="session")
def gateway_default_ttl(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Gateway]:
    """A second gateway process with the production snapshot TTL (1 s)."""
    with django_db_blocker.unblock():
        server = start_gateway(gateway_env())
    yield server
    stop(server.proc)


@pytest.fixture(scope="session")
def gateway_default_ttl_2(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Gateway]:
    """A third gateway process, also with the production TTL: changes must reach both."""
    with django_db_blocker.unblock():
        server = start_gateway(gateway_env())
    yield server
    stop(server.proc)


@pytest.fixture(autouse=True)
def _gateway_quiet(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used the gateway, wait until it has finished every request and
    written every usage row, so the database flush between tests never races its writes.

    Before a test that uses a gateway with the production snapshot TTL, wait that TTL out:
    its in-memory route and price tables may still describe the previous test's rows."""
    if {"gateway_default_ttl", "gateway_default_ttl_2"} & set(request.fixturenames):
        time.sleep(1.1)
    yield
    # Every gateway process this test used, whatever its fixture is called.
    for name in request.fixturenames:
        if "gateway" not in name or name.startswith("_"):
            continue
        server = request.getfixturevalue(name)
        if not isinstance(server, Gateway):
            continue
        deadline = time.monotonic() + 15
        while True:
            state = httpx.get(server.url + "/_gateway/status").json()
            if state["in_flight"] == 0 and state["usage_pending"] == 0 and \
                    not state.get("usage_journal") and not state.get("store_pending") and \
                    not state.get("store_journal") and not state.get("background_runs") and \
                    not state.get("capture_pending") and not state.get("capture_journal"):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} still busy after the test: {state}")
            time.sleep(0.02)


@pytest.fixture
def upstream(fake_upstream: FakeUpstream) -> Upstream:
    fake_upstream.clear()
    return upstream_create(name="fake", kind="openai", base_url=fake_upstream.openai_url,
                           models=DEMO_MODELS, api_keys=[UPSTREAM_SECRET])


@pytest.fixture
def tenant() -> Tenant:
    return tenant_get_or_create(name="acme")[0]


@pytest.fixture
def make_key(tenant: Tenant) -> Callable[..., CreatedKey]:
    def make(**kwargs: Any) -> CreatedKey:
        kwargs.setdefault("name", "test key")
        return key_create(tenant=kwargs.pop("tenant", tenant), **kwargs)

    return make


@pytest.fixture
def api_key(make_key: Callable[..., CreatedKey]) -> CreatedKey:
    return make_key()


@pytest.fixture
def client(gateway: Gateway, upstream: Upstream, api_key: CreatedKey) -> openai.OpenAI:
    """The official SDK pointed at Turnpike, with retries off so failures show."""
    return openai.OpenAI(base_url=gateway.base_url, api_key=api_key.secret, max_retries=0)


def wait_for_usage(request_id: str, timeout: float = 10.0) -> UsageLog:
    """Usage rows are written off the response path; poll until this one lands."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = UsageLog.objects.filter(request_id=request_id).first()
        if row is not None:
            return row
        time.sleep(0.05)
    raise AssertionError(f"no usage row for {request_id} after {timeout}s")
