"""deploy/compose.yaml: valid under the Compose Specification's JSON schema, and it runs the
process topology of tests/deploy/topology.py (migrate once first, N web replicas probed on
/readyz, one worker, exactly one beat, the usage writer), with its environment from
deploy/turnpike.env.example. No container runtime runs here, so `docker compose config` is
replaced by the schema plus these checks."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.conftest import (
    COMPOSE,
    ENV_EXAMPLE,
    NOT_TURNPIKE_SETTINGS,
    compose_schema,
    is_read_by_settings,
    read_env_file,
    seconds,
    settings_read_by_turnpike,
)
from tests.deploy.topology import COMMANDS, ONE_OFF, READINESS_PATH, SERVICES, SINGLETONS, WEB_PORT

pytestmark = pytest.mark.fast


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def schema_errors(document: dict[str, Any]) -> list[str]:
    schema = compose_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(document)]


def test_compose_file_is_valid_under_the_compose_spec_schema(compose: dict[str, Any]) -> None:
    assert schema_errors(compose) == []


@pytest.mark.parametrize("break_it", [
    lambda c: c["services"]["web"]["depends_on"]["migrate"].update(condition="after_migrate"),
    lambda c: c["services"]["web"]["healthcheck"].update(interval=10),
    lambda c: c["services"]["web"].update(replica=2),
    lambda c: c["services"]["worker"].update(restart_policy="always"),
])
def test_the_schema_check_rejects_a_broken_file(compose: dict[str, Any], break_it: Any) -> None:
    broken = copy.deepcopy(compose)
    break_it(broken)
    assert schema_errors(broken)


def test_services_are_the_topology_plus_postgres_and_redis(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "redis", ONE_OFF, *SERVICES}
    for name, argv in COMMANDS.items():
        assert services[name]["command"] == argv, name
    images = {services[name]["image"] for name in COMMANDS}
    assert len(images) == 1, f"every Turnpike process runs the same image: {images}"
    assert services[ONE_OFF]["build"]["dockerfile"] == "Dockerfile"


def test_migrate_runs_once_before_every_process(compose: dict[str, Any]) -> None:
    services = compose["services"]
    migrate = services[ONE_OFF]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in SERVICES:
        depends = services[name]["depends_on"]
        assert depends[ONE_OFF]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name


def test_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    web = " ".join(services["web"]["healthcheck"]["test"])
    assert f"127.0.0.1:{WEB_PORT}{READINESS_PATH}" in web
    assert "inspect ping" in " ".join(services["worker"]["healthcheck"]["test"])
    # The image's own HEALTHCHECK probes the web port, which these do not serve.
    for name in ("beat", "usagewriter", ONE_OFF):
        assert services[name]["healthcheck"] == {"disable": True}, name


def test_replicas(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["web"]["deploy"]["replicas"] >= 2
    for name in SINGLETONS:
        assert services[name]["deploy"]["replicas"] == 1, name
    # Each web replica gets a host port of its own out of the published range.
    published = services["web"]["ports"][0].rsplit(":", 1)[0].rsplit(":", 1)[-1]
    low, high = (int(p) for p in published.split("-"))
    assert high - low + 1 >= services["web"]["deploy"]["replicas"]


def test_web_outlives_its_drain(compose: dict[str, Any]) -> None:
    env = read_env_file(ENV_EXAMPLE)
    drain = float(env["GATEWAY_DRAIN_SECONDS"])
    assert seconds(compose["services"]["web"]["stop_grace_period"]) > drain


def test_environment_comes_from_the_env_file(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in (*COMMANDS, "postgres"):
        assert services[name]["env_file"] == "turnpike.env", name
        assert "environment" not in services[name], f"{name}: settings belong in the env file"


def test_env_example_names_real_settings_and_agrees_with_itself() -> None:
    env = read_env_file(ENV_EXAMPLE)
    source = settings_read_by_turnpike()
    unknown = [name for name in env
               if name not in NOT_TURNPIKE_SETTINGS and not is_read_by_settings(name, source)]
    assert unknown == [], f"not read by portal/settings: {unknown}"
    for required in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "ALLOWED_HOSTS"):
        assert env.get(required), required
    # The usage writer runs, so the gateways leave the usage journal to it.
    assert env["GATEWAY_USAGE_SINK"] == "redis"
    user, password, db = env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"]
    assert env["DATABASE_URL"] == f"postgres://{user}:{password}@postgres:5432/{db}"
    assert env["REDIS_URL"].startswith("redis://redis:6379/")
