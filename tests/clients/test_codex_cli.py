"""The real Codex CLI (npm @openai/codex) as a client of Turnpike, run the way
../shared/CLIENTS.md describes: `codex exec` with a custom model provider on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from billing.models import ModelPrice, UsageLog
from billing.services import tenant_topup
from gateway.services import upstream_create
from tests.conftest import UPSTREAM_SECRET

CODEX = shutil.which("codex")

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.e2e,
    pytest.mark.skipif(CODEX is None, reason="Codex CLI not installed: npm i -g @openai/codex"),
]

CONFIG = """
model = "{model}"
model_provider = "turnpike"
check_for_update_on_startup = false

[analytics]
enabled = false

[features]
plugins = false
unbounded_connection_retries = false

[model_providers.turnpike]
name = "Turnpike"
base_url = "{base_url}"
env_key = "TURNPIKE_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
"""


def run_codex(base_url: str, key: str, prompt: str, tmp: Path,
              model: str = "gpt-5-codex") -> subprocess.CompletedProcess[str]:
    home = tmp / "codex-home"
    work = tmp / "work"
    home.mkdir()
    work.mkdir()
    (home / "config.toml").write_text(CONFIG.format(base_url=base_url, model=model))
    # The tool's output carries the token that ends tool calling at the fake upstream.
    (work / "hint.txt").write_text("[[fake tool=]] the hint says hello\n")
    env = {**os.environ, "CODEX_HOME": str(home), "TURNPIKE_KEY": key}
    env.pop("OPENAI_API_KEY", None)
    return subprocess.run(
        [CODEX, "exec", "--skip-git-repo-check", prompt],
        cwd=work, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )


def test_codex_cli_gets_its_answer_through_turnpike(gateway, upstream, api_key, fake_upstream,
                                                    tmp_path):
    result = run_codex(gateway.base_url, api_key.secret, "say hi [[fake chunks=4]]", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tok0 tok1 tok2 tok3" in result.stdout
    sent = [r for r in fake_upstream.requests() if r["path"] == "/v1/responses"][-1]
    assert sent["body"]["stream"] is True and sent["body"]["store"] is False
    assert sent["headers"]["originator"] == "codex_exec"  # Codex's own headers pass through
    assert sent["headers"]["authorization"].startswith("Bearer sk-upstream-")


def test_codex_cli_reports_a_turnpike_auth_error(gateway, upstream, tmp_path):
    result = run_codex(gateway.base_url, "sk-tp-not-a-real-key", "say hi", tmp_path)
    assert result.returncode != 0
    assert "invalid_api_key" in result.stderr or "not valid" in result.stderr


# The fake answers the first turn with a call of Codex's own shell tool; Codex runs it
# (reading hint.txt) and sends the output back, which ends the tool calls.
TOOL_PROMPT = 'read the hint [[fake tool=exec_command args={"cmd":"cat\\u0020hint.txt"}]]'


@pytest.mark.parametrize("kind", ["openai", "openai-chat", "openai-responses", "anthropic",
                                  "ollama"])
def test_codex_cli_completes_a_tool_task_against_every_upstream_kind(
        gateway, api_key, fake_upstream, tmp_path, kind):
    base = fake_upstream.openai_url if kind.startswith("openai") else fake_upstream.url
    upstream_create(name=f"codex-{kind}", kind=kind, base_url=base, models=[f"m-{kind}"],
                    api_keys=[UPSTREAM_SECRET])
    fake_upstream.clear()
    result = run_codex(gateway.base_url, api_key.secret, TOOL_PROMPT, tmp_path,
                       model=f"m-{kind}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tok0 tok1 tok2" in result.stdout
    bodies = [r["body"] for r in fake_upstream.requests() if r["body"]]
    assert len(bodies) >= 2  # the tool call, then the answer after the tool ran
    assert "the hint says hello" in orjson.dumps(bodies[-1]).decode()
    assert "the hint says hello" not in orjson.dumps(bodies[0]).decode()


@pytest.mark.parametrize("kind", ["openai", "openai-chat"])
def test_codex_cli_accepts_the_cost_in_response_completed(gateway, api_key, fake_upstream,
                                                          tmp_path, kind):
    """The final usage carries ``cost`` (passed through, or translated): Codex parses
    ``response.completed`` with it and finishes the turn at the first attempt."""
    base = fake_upstream.openai_url
    upstream_create(name=f"priced-{kind}", kind=kind, base_url=base, models=["m-priced"],
                    api_keys=[UPSTREAM_SECRET])
    ModelPrice.objects.create(model="m-priced", input_per_million=Decimal("1000"),
                              output_per_million=Decimal("2000"))
    tenant_topup(tenant=api_key.key.tenant, amount=Decimal("100"))
    fake_upstream.clear()
    result = run_codex(gateway.base_url, api_key.secret, "say hi [[fake chunks=2]]", tmp_path,
                       model="m-priced")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tok0 tok1" in result.stdout
    assert len([r for r in fake_upstream.requests() if r["body"]]) == 1  # no retry
    deadline = time.monotonic() + 10  # the row is written off the response path
    while not UsageLog.objects.filter(model="m-priced", cost__gt=0).exists():
        assert time.monotonic() < deadline, "no charged usage row"
        time.sleep(0.05)
