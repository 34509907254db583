"""Keep-alives across long upstream silences, and per-model rules from the admin."""

from __future__ import annotations

import httpx
import orjson
import pytest

from gateway.models import ModelRule
from gateway.services import upstream_create
from tests.conftest import UPSTREAM_SECRET, gateway_env
from tests.servers import start_gateway, stop

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


@pytest.fixture(scope="module")
def impatient_gateway(django_db_setup):
    """A gateway that bridges any 0.2 s of upstream silence with a keep-alive."""
    server = start_gateway(gateway_env(GATEWAY_SNAPSHOT_TTL="0", GATEWAY_KEEPALIVE_SECONDS="0.2"))
    yield server
    stop(server.proc)


def frames(text: str) -> list[str]:
    return [f for f in text.split("\n\n") if f.strip()]


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_long_upstream_silences_get_data_bearing_keepalives_for_responses_clients(
        impatient_gateway, fake_upstream, api_key, kind):
    base = fake_upstream.openai_url if kind == "openai" else fake_upstream.url
    upstream_create(name=kind, kind=kind, base_url=base, models=["slow"],
                    api_keys=[UPSTREAM_SECRET])
    resp = httpx.post(impatient_gateway.base_url + "/responses", timeout=30,
                      headers={"Authorization": f"Bearer {api_key.secret}"},
                      json={"model": "slow", "stream": True,
                            "input": "[[fake chunks=1 delay=0.35]]"})
    events = frames(resp.text)
    keepalives = [f for f in events if f.startswith("event: keepalive")]
    assert keepalives, resp.text
    data = orjson.loads(keepalives[0].split("data: ", 1)[1])
    assert data["type"] == "keepalive"  # an event with data: resets the Codex idle timer
    assert "response.completed" in events[-1]


def test_chat_clients_get_comment_keepalives(impatient_gateway, fake_upstream, api_key):
    upstream_create(name="o", kind="openai", base_url=fake_upstream.openai_url,
                    models=["slow"], api_keys=[UPSTREAM_SECRET])
    resp = httpx.post(impatient_gateway.base_url + "/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {api_key.secret}"},
                      json={"model": "slow", "stream": True, "messages": [
                          {"role": "user", "content": "[[fake chunks=1 delay=0.35]]"}]})
    assert ": keepalive" in frames(resp.text)
    assert frames(resp.text)[-1] == "data: [DONE]"


def test_a_model_rule_forces_defaults_and_drops_parameters(gateway, upstream, api_key,
                                                           fake_upstream):
    ModelRule.objects.create(model_pattern="gpt-5*", protocol="responses",
                             force={"reasoning": {"effort": "xhigh"}},
                             defaults={"metadata": {"via": "turnpike"}}, drop=["top_p"])
    resp = httpx.post(gateway.base_url + "/responses",
                      headers={"Authorization": f"Bearer {api_key.secret}"},
                      json={"model": "gpt-5", "input": "x", "top_p": 0.5,
                            "reasoning": {"effort": "low", "summary": "auto"}})
    assert resp.status_code == 200, resp.text
    sent = fake_upstream.requests()[-1]["body"]
    assert sent["reasoning"] == {"effort": "xhigh", "summary": "auto"}
    assert sent["metadata"] == {"via": "turnpike"} and "top_p" not in sent
    # A rule for another protocol leaves chat requests alone.
    httpx.post(gateway.base_url + "/chat/completions",
               headers={"Authorization": f"Bearer {api_key.secret}"},
               json={"model": "gpt-5", "top_p": 0.5, "messages": [
                   {"role": "user", "content": "x"}]})
    assert fake_upstream.requests()[-1]["body"]["top_p"] == 0.5


def test_raw_mode_skips_model_rules(gateway, upstream, api_key, fake_upstream):
    ModelRule.objects.create(model_pattern="gpt-5", force={"temperature": 0})
    httpx.post(gateway.base_url + "/responses",
               headers={"Authorization": f"Bearer {api_key.secret}", "X-Codex-Mode": "raw"},
               json={"model": "gpt-5", "input": "x", "temperature": 0.7})
    assert fake_upstream.requests()[-1]["body"]["temperature"] == 0.7
