"""The commands in tests/deploy/topology.py are real: each names a module, management command
or Celery app that exists here, so the deployment files checked against it run real
processes."""

from __future__ import annotations

import importlib.util

import pytest

from tests.deploy.topology import COMMANDS, ONE_OFF, SERVICES, SINGLETONS

pytestmark = pytest.mark.fast


def test_every_process_has_a_command() -> None:
    assert set(COMMANDS) == {*SERVICES, ONE_OFF}
    assert set(SINGLETONS) <= set(SERVICES)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_runs_something_that_exists(name: str) -> None:
    argv = COMMANDS[name]
    if argv[:2] == ["python", "-m"]:
        assert importlib.util.find_spec(argv[2]) is not None, argv
    elif argv[:2] == ["python", "manage.py"]:
        from django.core.management import get_commands

        assert argv[2] in get_commands(), f"no management command {argv[2]!r}"
    else:
        assert argv[:3] == ["celery", "-A", "portal"], argv
        assert argv[3] in {"worker", "beat"}
        import portal

        # `celery -A portal` finds the app as the package's `celery_app` (or `app`).
        assert getattr(portal, "celery_app", None) or getattr(portal, "app", None)
