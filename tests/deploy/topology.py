"""Turnpike's process topology in production, in one place: the deployment files
(deploy/compose.yaml, the Helm chart under deploy/helm/turnpike) are checked against it, and a
test that starts the whole set of processes should start these same commands: the
network-namespace test (tests/faults/test_netns_topology.py, via tests/faults/netns.py) runs
``migrate``, six ``web`` and a ``usagewriter`` from here.

Each entry is the command a process runs from the image (WORKDIR /app, the virtualenv first
on PATH). ``migrate`` runs once per release, before the rest; ``beat`` runs exactly once.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

WEB_PORT = 8000
# The gateway's probe paths (gateway/readiness.py).
LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"
METRICS_PATH = "/metrics"

COMMANDS: dict[str, list[str]] = {
    "migrate": ["python", "manage.py", "migrate", "--noinput"],
    "web": ["python", "-m", "portal.server", "-b", "0.0.0.0", "-p", str(WEB_PORT),
            "--proxy-headers"],
    "worker": ["celery", "-A", "portal", "worker", "-l", "info"],
    # The schedule file goes to /tmp: the image's files are read-only to its user.
    "beat": ["celery", "-A", "portal", "beat", "-l", "info", "-s", "/tmp/celerybeat-schedule"],
    # Only with GATEWAY_USAGE_SINK=redis (then at least one must run).
    "usagewriter": ["python", "manage.py", "usagewriter"],
}

# The long-running processes, and the one-off.
SERVICES = ("web", "worker", "beat", "usagewriter")
ONE_OFF = "migrate"
# Processes of which exactly one may run.
SINGLETONS = ("beat",)
