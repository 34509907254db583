"""The worked example of the provider contract (gateway/providers/azure.py): an
OpenAI-compatible kind whose credential travels in an ``api-key`` header. End to end through
a real gateway and the fake upstream, which demands the credential; and the registry's
promise that every kind an operator can choose has a provider."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from gateway.health import probe
from gateway.models import UpstreamKind
from gateway.providers.registry import PROVIDERS
from gateway.services import upstream_create
from tests.conftest import UPSTREAM_SECRET

MODEL = "azure-gpt"


def test_every_upstream_kind_has_its_provider() -> None:
    assert sorted(PROVIDERS) == sorted(UpstreamKind.values)
    for kind, provider in PROVIDERS.items():
        assert provider.kind == kind
        assert set(provider.speaks) == {"chat", "responses", "compact"}


@pytest.fixture
def azure(fake_upstream: Any) -> Any:
    fake_upstream.clear()
    return upstream_create(name="azure", kind="azure", base_url=fake_upstream.openai_url,
                           models=[MODEL], api_keys=[UPSTREAM_SECRET])


def sent_auth(fake_upstream: Any) -> list[tuple[str, str | None, str | None]]:
    return [(r["path"], r["headers"].get("api-key"), r["headers"].get("authorization"))
            for r in fake_upstream.requests()]


@pytest.mark.django_db(transaction=True)
@pytest.mark.e2e
def test_an_azure_upstream_gets_its_credential_in_the_api_key_header(
        gateway: Any, fake_upstream: Any, azure: Any, api_key: Any) -> None:
    sdk = openai.OpenAI(base_url=gateway.base_url, api_key=api_key.secret, max_retries=0)
    chat = sdk.chat.completions.create(model=MODEL,
                                       messages=[{"role": "user", "content": "hi"}])
    assert chat.choices[0].message.content
    with sdk.responses.stream(model=MODEL, input="hi") as stream:
        final = stream.get_final_response()
    assert final.output_text and final.status == "completed"
    assert sent_auth(fake_upstream) == [("/v1/chat/completions", UPSTREAM_SECRET, None),
                                        ("/v1/responses", UPSTREAM_SECRET, None)]
    # Passed through: the client's protocol is the upstream's, so the body went up as sent.
    assert fake_upstream.requests()[0]["body"]["messages"] == [
        {"role": "user", "content": "hi"}]


@pytest.mark.django_db(transaction=True)
@pytest.mark.e2e
def test_an_azure_upstream_is_compacted_by_turnpike_and_probed_with_its_header(
        gateway: Any, fake_upstream: Any, azure: Any, api_key: Any) -> None:
    sdk = openai.OpenAI(base_url=gateway.base_url, api_key=api_key.secret, max_retries=0)
    compacted = sdk.responses.compact(model=MODEL, input=[
        {"role": "user", "content": "Plan a trip."}])
    assert compacted.output[-1].type == "compaction"
    assert compacted.output[-1].encrypted_content.startswith("tpc1.")
    result = probe(azure)
    assert result.ok, result.error
    assert sent_auth(fake_upstream) == [("/v1/responses", UPSTREAM_SECRET, None),
                                        ("/v1/models", UPSTREAM_SECRET, None)]


@pytest.mark.django_db(transaction=True)
def test_an_azure_probe_with_a_wrong_key_fails(fake_upstream: Any) -> None:
    fake_upstream.clear()
    upstream = upstream_create(name="azure-bad", kind="azure", base_url=fake_upstream.openai_url,
                               models=[MODEL], api_keys=["not-the-key"])
    result = probe(upstream)
    assert not result.ok and result.error == "HTTP 401"
