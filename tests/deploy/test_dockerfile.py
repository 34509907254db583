"""The Dockerfile, parsed with dockerfile-parse (no container runtime here): two stages, the
runtime stage copies only the virtualenv and /app from the build stage, runs as a numeric
non-root user, installs nothing, probes /healthz with Python, and runs the gateway's command
(tests/deploy/topology.py)."""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser

from tests.deploy.topology import COMMANDS, LIVENESS_PATH, REPO, WEB_PORT

pytestmark = pytest.mark.fast

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


@pytest.fixture(scope="module")
def stages() -> list[list[dict[str, Any]]]:
    parser = DockerfileParser(path=str(DOCKERFILE))
    by_stage: list[list[dict[str, Any]]] = []
    for instruction in parser.structure:
        if instruction["instruction"] == "COMMENT":
            continue
        if instruction["instruction"] == "FROM":
            by_stage.append([])
        assert by_stage, f"{instruction['instruction']} before the first FROM"
        by_stage[-1].append(instruction)
    return by_stage


def instructions(stage: list[dict[str, Any]], name: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == name]


def exec_form(value: str) -> list[str]:
    argv = json.loads(value)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), value
    return argv


def test_two_stages_from_the_same_slim_base(stages: list[list[dict[str, Any]]]) -> None:
    froms = [stage[0]["value"] for stage in stages]
    assert froms == ["python:3.11-slim AS build", "python:3.11-slim AS runtime"]


def test_build_stage_installs_and_collects_static(stages: list[list[dict[str, Any]]]) -> None:
    runs = " ".join(instructions(stages[0], "RUN"))
    assert "pip install" in runs
    assert "manage.py collectstatic --noinput" in runs


def test_runtime_stage_copies_only_the_venv_and_the_app(
        stages: list[list[dict[str, Any]]]) -> None:
    runtime = stages[1]
    copies = instructions(runtime, "COPY")
    assert copies and all(c.startswith("--from=build ") for c in copies), copies
    assert sorted(shlex.split(c)[1:] for c in copies) == [["/app", "/app"],
                                                          ["/opt/venv", "/opt/venv"]]
    assert instructions(runtime, "ADD") == []
    runs = " ".join(instructions(runtime, "RUN"))
    for tool in ("pip", "apt-get", "gcc", "make", "curl", "wget"):
        assert tool not in shlex.split(runs), f"the runtime stage runs {tool}"


def test_runtime_runs_as_a_numeric_non_root_user(stages: list[list[dict[str, Any]]]) -> None:
    users = instructions(stages[1], "USER")
    assert users, "no USER in the runtime stage"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, users  # numeric: Kubernetes' runAsNonRoot checks it
    assert not gid or (gid.isdigit() and int(gid) != 0)
    # The user is set after the last RUN (nothing later runs as root).
    names = [i["instruction"] for i in stages[1]]
    assert max(n for n, i in enumerate(names) if i == "RUN") < names.index("USER")


def test_healthcheck_probes_liveness_with_python(stages: list[list[dict[str, Any]]]) -> None:
    (check,) = instructions(stages[1], "HEALTHCHECK")
    options, _, command = check.partition("CMD ")
    argv = exec_form(command)
    assert argv[:2] == ["python", "-c"]
    assert f"http://127.0.0.1:{WEB_PORT}{LIVENESS_PATH}" in argv[2]
    compile(argv[2], "<healthcheck>", "exec")
    assert "--interval=" in options and "--timeout=" in options


def test_exposes_the_port_and_runs_the_gateway(stages: list[list[dict[str, Any]]]) -> None:
    runtime = stages[1]
    assert instructions(runtime, "EXPOSE") == [str(WEB_PORT)]
    (cmd,) = instructions(runtime, "CMD")
    assert exec_form(cmd) == COMMANDS["web"]
    assert instructions(runtime, "WORKDIR") == ["/app"]
    env = " ".join(instructions(runtime, "ENV"))
    assert "PATH=/opt/venv/bin:$PATH" in env


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    patterns = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "tests", "staticfiles", "deploy", "**/*.env"} <= patterns
