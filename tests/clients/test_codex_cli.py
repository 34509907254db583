"""The real Codex CLI (npm @openai/codex) as a client of Turnpike, run the way
../shared/CLIENTS.md describes: `codex exec` with a custom model provider on loopback, and
with its built-in provider pointed at Turnpike (`openai_base_url`), which speaks Responses
over a WebSocket first and falls back to HTTP when Turnpike refuses it."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import httpx
import orjson
import pytest

from billing.models import ModelPrice, UsageLog
from billing.services import tenant_topup
from gateway.services import upstream_create
from tests.conftest import UPSTREAM_SECRET, gateway_env
from tests.servers import start_gateway, stop

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


# The built-in provider ("openai") with its base URL pointed at Turnpike: it opens a
# WebSocket to <base>/responses first. `codex exec` takes its API key from CODEX_API_KEY
# (OPENAI_API_KEY is not read for the built-in provider).
BUILTIN_CONFIG = """
model = "{model}"
openai_base_url = "{base_url}"
check_for_update_on_startup = false

[analytics]
enabled = false

[features]
plugins = false
unbounded_connection_retries = false
"""


def run_codex(base_url: str, key: str, prompt: str, tmp: Path,
              model: str = "gpt-5-codex", builtin: bool = False
              ) -> subprocess.CompletedProcess[str]:
    home = tmp / "codex-home"
    work = tmp / "work"
    home.mkdir()
    work.mkdir()
    config = BUILTIN_CONFIG if builtin else CONFIG
    (home / "config.toml").write_text(config.format(base_url=base_url, model=model))
    # The tool's output carries the token that ends tool calling at the fake upstream.
    (work / "hint.txt").write_text("[[fake tool=]] the hint says hello\n")
    env = {**os.environ, "CODEX_HOME": str(home), "TURNPIKE_KEY": key}
    env.pop("OPENAI_API_KEY", None)
    if builtin:
        env["CODEX_API_KEY"] = key
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


# --- the built-in provider: Responses over WebSocket ---------------------------------------

def websocket_stats(url: str) -> dict[str, int]:
    return httpx.get(url + "/_gateway/status", timeout=5).json()["websockets"]


@pytest.mark.parametrize("kind", ["openai", "openai-chat", "openai-responses", "anthropic",
                                  "ollama"])
def test_codex_builtin_provider_completes_a_tool_task_over_the_websocket(
        gateway, api_key, fake_upstream, tmp_path, kind):
    """Codex warms the socket up (generate:false), then sends each request of the tool
    round trip on it with previous_response_id and only the new items (store:false):
    Turnpike expands them from the socket's memory, so every upstream kind gets the whole
    history."""
    base = fake_upstream.openai_url if kind.startswith("openai") else fake_upstream.url
    upstream_create(name=f"ws-{kind}", kind=kind, base_url=base, models=[f"m-{kind}"],
                    api_keys=[UPSTREAM_SECRET])
    fake_upstream.clear()
    before = websocket_stats(gateway.url)
    result = run_codex(gateway.base_url, api_key.secret, TOOL_PROMPT, tmp_path,
                       model=f"m-{kind}", builtin=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tok0 tok1 tok2" in result.stdout
    assert "Falling back" not in result.stderr and "Reconnecting" not in result.stderr
    after = websocket_stats(gateway.url)
    assert after["turns"] - before["turns"] == 2  # the tool call, then the answer
    assert after["warmups"] - before["warmups"] >= 1
    bodies = [r["body"] for r in fake_upstream.requests() if r["body"]]
    assert len(bodies) == 2
    first, last = (orjson.dumps(b).decode() for b in bodies)
    assert "the hint says hello" in last and "the hint says hello" not in first
    assert "read the hint" in last  # the whole history, though Codex sent only new items
    assert "previous_response_id" not in last
    deadline = time.monotonic() + 10  # both turns metered like HTTP requests
    while UsageLog.objects.filter(key_id=api_key.key.id, status_code=200).count() < 2:
        assert time.monotonic() < deadline, "no usage rows for the socket's turns"
        time.sleep(0.05)


def test_codex_builtin_provider_falls_back_to_http_when_websockets_are_off(
        api_key, fake_upstream, tmp_path):
    """GATEWAY_WEBSOCKETS=false: the upgrade is answered 426 and Codex sends the same turn
    over HTTP POST at once, with no retries."""
    upstream_create(name="ws-off", kind="openai-chat", base_url=fake_upstream.openai_url,
                    models=["m-off"], api_keys=[UPSTREAM_SECRET])
    fake_upstream.clear()
    off = start_gateway(gateway_env(GATEWAY_WEBSOCKETS="false", GATEWAY_SNAPSHOT_TTL="0"))
    try:
        result = run_codex(off.base_url, api_key.secret, TOOL_PROMPT, tmp_path, model="m-off",
                           builtin=True)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "tok0 tok1 tok2" in result.stdout
        assert "Reconnecting" not in result.stderr
        assert websocket_stats(off.url) == {"open": 0, "turns": 0, "warmups": 0}
        bodies = [r["body"] for r in fake_upstream.requests() if r["body"]]
        assert len(bodies) == 2 and "the hint says hello" in orjson.dumps(bodies[-1]).decode()
        deadline = time.monotonic() + 10
        while UsageLog.objects.filter(key_id=api_key.key.id, status_code=200).count() < 2:
            assert time.monotonic() < deadline, "no usage rows for the HTTP requests"
            time.sleep(0.05)
    finally:
        stop(off.proc)
