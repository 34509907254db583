"""An Anthropic or Ollama upstream's base URL works with or without the ``/v1`` people paste
from the SDKs: stored as the server root, and tolerated where URLs are built for rows
written without ``save()``. End to end through a real gateway and the fake upstream."""

from __future__ import annotations

from io import StringIO
from typing import Any

import httpx
import pytest
from django.core.management import call_command

from gateway.health import probe
from gateway.models import Upstream, upstream_base_url
from gateway.providers.registry import PATHS
from gateway.services import upstream_create
from tests.conftest import UPSTREAM_SECRET

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

CHAT = {"model": "m-root", "messages": [{"role": "user", "content": "hi"}]}


def chat(gateway: Any, secret: str) -> httpx.Response:
    return httpx.post(gateway.base_url + "/chat/completions", json=CHAT,
                      headers={"Authorization": f"Bearer {secret}"}, timeout=20)


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"], ids=["root", "root-slash", "v1",
                                                                   "v1-slash"])
@pytest.mark.parametrize("kind", ["anthropic", "ollama"])
def test_a_server_root_kind_is_called_on_its_own_path_whether_or_not_v1_was_given(
        gateway: Any, fake_upstream: Any, api_key: Any, kind: str, suffix: str) -> None:
    fake_upstream.clear()
    upstream = upstream_create(name=kind, kind=kind, base_url=fake_upstream.url + suffix,
                               models=["m-root"], api_keys=[UPSTREAM_SECRET])
    assert upstream.base_url == fake_upstream.url
    assert Upstream.objects.get().base_url == fake_upstream.url

    resp = chat(gateway, api_key.secret)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"]
    assert [r["path"] for r in fake_upstream.requests()] == [PATHS[kind]]


@pytest.mark.parametrize("kind", ["anthropic", "ollama"])
def test_a_row_stored_with_v1_before_the_fix_is_still_called_on_the_right_path(
        gateway: Any, fake_upstream: Any, api_key: Any, kind: str) -> None:
    fake_upstream.clear()
    upstream = upstream_create(name=kind, kind=kind, base_url=fake_upstream.url,
                               models=["m-root"], api_keys=[UPSTREAM_SECRET])
    # A bulk update bypasses save(), as an old row or a hand edit in SQL would.
    Upstream.objects.filter(pk=upstream.pk).update(base_url=fake_upstream.url + "/v1/")
    assert Upstream.objects.get().base_url.endswith("/v1/")

    resp = chat(gateway, api_key.secret)
    assert resp.status_code == 200, resp.text
    assert [r["path"] for r in fake_upstream.requests()] == [PATHS[kind]]
    if kind == "ollama":  # the probe builds its URL the same tolerant way
        assert probe(Upstream.objects.get()).ok


def test_upstream_add_from_the_cli_and_an_admin_style_save_store_the_root() -> None:
    call_command("upstream", "add", "--name", "claude", "--kind", "anthropic",
                 "--base-url", "https://api.anthropic.com/v1/", "--models", "claude-*",
                 stdout=StringIO())
    upstream = Upstream.objects.get(name="claude")
    assert upstream.base_url == "https://api.anthropic.com"
    upstream.base_url = "http://ollama.internal:11434/v1"
    upstream.kind = "ollama"
    upstream.save()
    assert Upstream.objects.get(name="claude").base_url == "http://ollama.internal:11434"


@pytest.mark.parametrize(("kind", "given", "used"), [
    ("anthropic", "https://api.anthropic.com/v1", "https://api.anthropic.com"),
    ("ollama", "http://h:11434/v1/", "http://h:11434"),
    ("ollama", "http://h:11434/", "http://h:11434"),
    ("anthropic", "https://proxy.example.com/anthropic/v1", "https://proxy.example.com/anthropic"),
    # The OpenAI kinds' base URL includes the version path: kept.
    ("openai", "https://api.openai.com/v1/", "https://api.openai.com/v1"),
    ("openai-chat", "http://vllm:8000/v1", "http://vllm:8000/v1"),
    ("openai-responses", "https://chatgpt.example.com/backend-api/codex",
     "https://chatgpt.example.com/backend-api/codex"),
    # Only a whole trailing /v1 segment goes.
    ("anthropic", "https://example.com/apiv1", "https://example.com/apiv1"),
])
def test_upstream_base_url(kind: str, given: str, used: str) -> None:
    assert upstream_base_url(kind, given) == used
