"""Helpers shared by the deployment files' tests (tests/deploy/)."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

from tests.deploy.topology import REPO

DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / "turnpike.env.example"
CHART = DEPLOY / "helm" / "turnpike"

# Variables the deployment files set that Turnpike's settings do not read themselves.
# POSTGRES_*: PostgreSQL's image. PROMETHEUS_MULTIPROC_DIR: prometheus-client reads it.
# GATEWAY_DRAIN_SECONDS: the graceful drain on SIGTERM (issue 16), read by the server once that
# work lands; drop it from here then, so the check covers it too.
NOT_TURNPIKE_SETTINGS = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB",
                         "PROMETHEUS_MULTIPROC_DIR"}


def compose_schema() -> dict[str, Any]:
    """The Compose Specification's JSON schema (compose-spec/compose-spec,
    schema/compose-spec.json) as the check-jsonschema package vendors and updates it."""
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads(vendor.joinpath("compose-spec.json").read_text(encoding="utf-8"))


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines, as Compose's env_file reads them (comments and blanks skipped)."""
    env: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=value: {line!r}"
        env[key.strip()] = value.strip()
    return env


def settings_read_by_turnpike() -> str:
    """The source of portal/settings (where every setting is read from the environment)."""
    return "\n".join(p.read_text(encoding="utf-8")
                     for p in sorted((REPO / "portal" / "settings").glob("*.py")))


def is_read_by_settings(name: str, source: str) -> bool:
    return re.search(rf"""["']{re.escape(name)}["']""", source) is not None


def seconds(duration: str) -> float:
    """A Compose duration such as `40s`, `1m30s`."""
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", duration)
    assert parts and "".join(a + b for a, b in parts) == duration, duration
    unit = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 0.000001}
    for amount, u in parts:
        total += float(amount) * unit[u]
    return total
