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
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from django.utils import timezone

from gateway.models import CapturedExchange, StoredResponse
from gateway.services import upstream_create
from keys.services import key_update
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


def converse(base_url: str, key: str, model: str, stream: bool,
             first: str = "first question") -> dict[str, Any]:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
           "BASE_URL": base_url, "API_KEY": key, "MODEL": model, "STREAM": "1" if stream
           else "0", "FIRST": first}
    done = subprocess.run([NODE or "node", str(HERE / "conversation.mjs")], env=env, cwd=HERE,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return orjson.loads(done.stdout.strip().splitlines()[-1])


def wait_captured(key: Any, count: int, timeout: float = 10.0) -> list[CapturedExchange]:
    """The key's captured exchanges, oldest first, once ``count`` are written (off the
    response path)."""
    deadline = time.monotonic() + timeout
    while len(rows := list(CapturedExchange.objects.filter(key=key)
                           .order_by("created_at", "pk"))) < count:
        assert time.monotonic() < deadline, f"{len(rows)} of {count} captures after {timeout}s"
        time.sleep(0.02)
    return rows


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
    # Body capture keeps the requests as the SDK sent them.
    key_update(key=api_key.key, capture_bodies="on",
               capture_bodies_until=timezone.now() + timedelta(hours=1))
    got = converse(gateway.base_url, api_key.secret, model_for(kind), stream)
    assert got["first"]["text"] and got["second"]["text"], got
    # The SDK sent the first answer as a reference...
    first = wait_stored(got["first"]["id"])
    answer_id = first.response["output"][0]["id"]
    sent_input = orjson.loads(wait_captured(api_key.key, 2)[1].request_body)["input"]
    assert [i.get("type") or i.get("role") for i in sent_input] == [
        "user", "item_reference", "user"], sent_input
    assert sent_input[1] == {"type": "item_reference", "id": answer_id}
    # ...stored as the item it names...
    second = wait_stored(got["second"]["id"])
    assert second.input_items[1] == first.response["output"][0]
    # ...and the upstream got the answer's text in its place.
    sent = sent_requests(fake_upstream)
    assert len(sent) == 2
    turns = [t for t in upstream_turns(sent[1]) if t[0] not in ("reasoning", "instructions")]
    assert turns == [("user", "first question"), ("assistant", got["first"]["text"]),
                     ("user", "second question")], turns


@pytest.mark.parametrize("kind", ["anthropic", "openai-responses"])
def test_a_reasoning_model_s_answer_comes_back_with_its_reasoning(
        gateway: Any, fake_upstream: Any, api_key: Any, kind: str) -> None:
    """For a model the SDK takes for a reasoning model (``gpt-5…``) it references the
    reasoning item too, and the text only after it: both resolve, and the upstream gets the
    reasoning back in its own form (Anthropic's signed thinking, the Responses item's
    encrypted content)."""
    fake_upstream.clear()
    upstream_create(name=f"aisdk-r-{kind}", kind=kind, models=["gpt-5-mini"],
                    base_url=fake_upstream.openai_url if kind.startswith("openai")
                    else fake_upstream.url, api_keys=[UPSTREAM_SECRET])
    key_update(key=api_key.key, capture_bodies="on",
               capture_bodies_until=timezone.now() + timedelta(hours=1))
    question = "[[fake reasoning=1]] first question"
    got = converse(gateway.base_url, api_key.secret, "gpt-5-mini", False, first=question)
    first = wait_stored(got["first"]["id"])
    assert [i["type"] for i in first.response["output"]] == ["reasoning", "message"]
    sent_input = orjson.loads(wait_captured(api_key.key, 2)[1].request_body)["input"]
    assert sent_input[1:3] == [{"type": "item_reference", "id": i["id"]}
                               for i in first.response["output"]], sent_input
    second = wait_stored(got["second"]["id"])
    assert [i["type"] for i in second.input_items] == ["message", "reasoning", "message",
                                                       "message"], second.input_items
    (sent,) = sent_requests(fake_upstream)[1:]
    turns = [t for t in upstream_turns(sent) if t[0] not in ("instructions", "reasoning")]
    assert turns == [("user", question), ("assistant", got["first"]["text"]),
                     ("user", "second question")], turns
    if kind == "anthropic":
        thinking = [b for m in sent.body["messages"] if m["role"] == "assistant"
                    for b in m["content"] if isinstance(b, dict) and b["type"] == "thinking"]
        assert thinking and thinking[0]["signature"] == "sig_fake"
    else:
        reasoning = [i for i in sent.body["input"] if i.get("type") == "reasoning"]
        assert reasoning and reasoning[0]["encrypted_content"] == "enc_fake"
