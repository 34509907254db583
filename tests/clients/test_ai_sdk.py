"""The real Vercel AI SDK (npm ``ai`` and ``@ai-sdk/openai``, pinned in
tests/clients/aisdk/package.json, installed there by .ci/run) as a client of Turnpike: a
two-turn conversation through its OpenAI Responses provider (tests/clients/aisdk/
conversation.mjs). With ``store`` on, its default, the SDK sends the first answer back as
an ``item_reference``: Turnpike resolves it from its store for upstreams that keep no
responses, so the upstream gets the whole conversation."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.models import StoredResponse
from gateway.services import upstream_create
from tests.conftest import UPSTREAM_SECRET
from tests.gateway.matrix_cases import model_for, sent_requests, upstream_turns

HERE = Path(__file__).parent / "aisdk"
NODE = shutil.which("node")
INSTALLED = (HERE / "node_modules" / "ai").is_dir() and (
    HERE / "node_modules" / "@ai-sdk" / "openai").is_dir()

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.e2e,
    pytest.mark.skipif(NODE is None or not INSTALLED,
                       reason="the AI SDK is not installed: npm ci --prefix tests/clients/aisdk"),
]


def converse(base_url: str, key: str, model: str, stream: bool) -> dict[str, Any]:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
           "BASE_URL": base_url, "API_KEY": key, "MODEL": model, "STREAM": "1" if stream
           else "0"}
    done = subprocess.run([NODE or "node", str(HERE / "conversation.mjs")], env=env, cwd=HERE,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return orjson.loads(done.stdout.strip().splitlines()[-1])


def wait_stored(response_id: str, timeout: float = 10.0) -> StoredResponse:
    """The row, once the store's writer has put it in the database (off the response path)."""
    deadline = time.monotonic() + timeout
    while (row := StoredResponse.objects.filter(pk=response_id).first()) is None:
        assert time.monotonic() < deadline, f"{response_id} not stored after {timeout}s"
        time.sleep(0.02)
    return row


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("kind", ["anthropic", "openai-chat", "openai-responses"])
def test_a_two_turn_conversation_with_store_on(gateway: Any, fake_upstream: Any,
                                               api_key: Any, kind: str, stream: bool) -> None:
    fake_upstream.clear()
    upstream_create(name=f"aisdk-{kind}", kind=kind, models=[model_for(kind)],
                    base_url=fake_upstream.openai_url if kind.startswith("openai")
                    else fake_upstream.url, api_keys=[UPSTREAM_SECRET])
    got = converse(gateway.base_url, api_key.secret, model_for(kind), stream)
    assert got["first"]["text"] and got["second"]["text"], got
    # The SDK sent the first answer as a reference (what Turnpike stored of its input)...
    second = wait_stored(got["second"]["id"])
    assert [i["type"] for i in second.input_items] == ["message", "item_reference",
                                                       "message"], second.input_items
    first = wait_stored(got["first"]["id"])
    assert second.input_items[1]["id"] == first.response["output"][0]["id"]
    # ...and the upstream got the answer's text in its place.
    sent = sent_requests(fake_upstream)
    assert len(sent) == 2
    turns = [t for t in upstream_turns(sent[1]) if t[0] not in ("reasoning", "instructions")]
    assert turns == [("user", "first question"), ("assistant", got["first"]["text"]),
                     ("user", "second question")], turns
