"""The cost of each /v1 answer: the ``x-turnpike-cost`` header on JSON answers, ``usage.cost``
in a stream's final usage event, for both protocols, passed through and translated, read
by the official SDK and by plain HTTP, and checked against the request's usage row and the
price table (group multiplier included)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import openai
import orjson
import pytest

from billing.models import ModelPrice
from billing.services import tenant_topup
from gateway.services import upstream_create
from keys.models import Group
from tests.conftest import UPSTREAM_SECRET, wait_for_usage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

MULTIPLIER = Decimal("1.5")
# Per million tokens: 0.001 per input token, 0.002 per output token, 0.00025 per cached one.
PRICE = {"input_per_million": Decimal("1000"), "output_per_million": Decimal("2000"),
         "cached_input_per_million": Decimal("250")}


def expected(input_tokens: int, output_tokens: int, cached: int = 0) -> Decimal:
    cost = (input_tokens - cached) * Decimal("0.001") + cached * Decimal("0.00025") \
        + output_tokens * Decimal("0.002")
    return (cost * MULTIPLIER).quantize(Decimal("0.000001"))


@pytest.fixture
def priced(tenant, fake_upstream):
    """Every test model priced, the tenant in a group that charges 1.5x, and money."""
    for model in ("gpt-4o-mini", "gpt-5", "m-*"):
        ModelPrice.objects.create(model=model, **PRICE)
    tenant.group = Group.objects.create(name="plus", price_multiplier=MULTIPLIER)
    tenant.save()
    tenant_topup(tenant=tenant, amount=Decimal("1000"))
    return tenant


@pytest.fixture
def sdk(gateway, upstream, api_key, priced) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=api_key.secret, max_retries=0)


@pytest.fixture
def translated(fake_upstream, priced) -> None:
    """Upstreams that need translation: m-chat speaks only Chat Completions, m-anthropic
    Anthropic's Messages."""
    upstream_create(name="chat-only", kind="openai-chat", base_url=fake_upstream.openai_url,
                    models=["m-chat"], api_keys=[UPSTREAM_SECRET])
    upstream_create(name="anthropic", kind="anthropic", base_url=fake_upstream.url,
                    models=["m-anthropic"], api_keys=[UPSTREAM_SECRET])


def sse_events(body: bytes) -> list[Any]:
    out = []
    for event in body.split(b"\n\n"):
        for line in event.split(b"\n"):
            if line.startswith(b"data: ") and line[6:] != b"[DONE]":
                out.append(orjson.loads(line[6:]))
    return out


# --- JSON answers: the header --------------------------------------------------------------

@pytest.mark.parametrize("model", ["gpt-4o-mini", "m-anthropic"])
def test_chat_completion_carries_its_cost_in_the_header(sdk, translated, model):
    raw = sdk.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "two words"}])
    completion = raw.parse()
    row = wait_for_usage(raw.headers["x-request-id"])
    assert raw.headers["x-turnpike-cost"] == str(row.cost)
    assert row.cost == expected(completion.usage.prompt_tokens,
                                completion.usage.completion_tokens) > 0


@pytest.mark.parametrize("model", ["gpt-5", "m-chat"])
def test_response_carries_its_cost_in_the_header(sdk, translated, model):
    raw = sdk.responses.with_raw_response.create(model=model,
                                                 input="one two three [[fake cached=1]]")
    response = raw.parse()
    row = wait_for_usage(raw.headers["x-request-id"])
    assert raw.headers["x-turnpike-cost"] == str(row.cost)
    usage = response.usage
    assert usage.input_tokens_details.cached_tokens == 1
    assert row.cost == expected(usage.input_tokens, usage.output_tokens, cached=1)
    # A JSON body is not touched: the cost is in the header only.
    assert "cost" not in raw.http_response.json()["usage"]


@pytest.mark.parametrize("model", ["gpt-5", "m-chat"])
def test_compaction_carries_its_cost_in_the_header(sdk, translated, model):
    """/v1/responses/compact: relayed to an upstream that compacts (gpt-5 on the openai
    kind), or summarised by Turnpike with the routed model (m-chat)."""
    raw = sdk.responses.with_raw_response.compact(model=model, input="a long history here")
    assert raw.parse().output[-1].type == "compaction"
    row = wait_for_usage(raw.headers["x-request-id"])
    assert row.endpoint == "responses/compact" and row.cost > 0
    assert raw.headers["x-turnpike-cost"] == str(row.cost)


def test_a_free_model_costs_zero(gateway, upstream, api_key):
    response = httpx.post(gateway.base_url + "/chat/completions",
                          headers={"Authorization": f"Bearer {api_key.secret}"},
                          json={"model": "o3", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 200
    assert response.headers["x-turnpike-cost"] == "0.000000"
    assert wait_for_usage(response.headers["x-request-id"]).cost == 0


def test_listing_models_costs_nothing(sdk):
    raw = sdk.models.with_raw_response.list()
    assert [m.id for m in raw.parse()]
    assert raw.headers["x-turnpike-cost"] == "0.000000"


@pytest.mark.parametrize("case", ["bad_key", "upstream_500", "quota", "unknown_path"])
def test_an_error_answer_says_it_cost_nothing(gateway, upstream, make_key, priced, case):
    made = make_key(quota=Decimal("0")) if case == "quota" else make_key()
    secret = "sk-tp-wrong" if case == "bad_key" else made.secret
    path = "/nothing/here" if case == "unknown_path" else "/chat/completions"
    content = "x [[fake status=500]]" if case == "upstream_500" else "x"
    response = httpx.post(gateway.base_url + path, headers={"Authorization": f"Bearer {secret}"},
                          json={"model": "gpt-4o-mini",
                                "messages": [{"role": "user", "content": content}]})
    assert response.status_code == {"bad_key": 401, "upstream_500": 500, "quota": 429,
                                    "unknown_path": 404}[case]
    assert "error" in response.json()
    assert response.headers["x-turnpike-cost"] == "0.000000"
    assert wait_for_usage(response.headers["x-request-id"]).cost == 0


# --- streams: the final usage event -------------------------------------------------------

@pytest.mark.parametrize("model", ["gpt-4o-mini", "m-anthropic"])
def test_chat_stream_usage_chunk_carries_the_cost(sdk, translated, model):
    raw = sdk.chat.completions.with_raw_response.create(
        model=model, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "count [[fake chunks=5]]"}])
    assert "x-turnpike-cost" not in raw.headers  # not known when the headers go out
    chunks = list(raw.parse())
    final = chunks[-1]
    assert final.choices == []
    row = wait_for_usage(raw.headers["x-request-id"])
    assert Decimal(str(final.usage.cost)) == row.cost  # the SDK keeps the extra field
    assert row.cost == expected(final.usage.prompt_tokens, final.usage.completion_tokens) > 0
    assert all(getattr(c.usage, "cost", None) is None for c in chunks[:-1])


def test_chat_stream_without_usage_has_no_cost_anywhere(sdk):
    with httpx.stream("POST", str(sdk.base_url) + "chat/completions",
                      headers={"Authorization": f"Bearer {sdk.api_key}"},
                      json={"model": "gpt-4o-mini", "stream": True,
                            "messages": [{"role": "user", "content": "hi"}]}) as response:
        body = response.read()
    assert b'"usage"' not in body.replace(b'"usage":null', b"")
    assert wait_for_usage(response.headers["x-request-id"]).cost > 0


@pytest.mark.parametrize("model", ["gpt-5", "m-chat", "m-anthropic"])
def test_responses_stream_completed_event_carries_the_cost(sdk, translated, model):
    raw = sdk.responses.with_raw_response.create(model=model, stream=True,
                                                 input="go [[fake chunks=4]]")
    assert "x-turnpike-cost" not in raw.headers
    events = list(raw.parse())
    completed = events[-1]
    assert completed.type == "response.completed"
    usage = completed.response.usage
    row = wait_for_usage(raw.headers["x-request-id"])
    assert Decimal(str(usage.cost)) == row.cost
    assert row.cost == expected(usage.input_tokens, usage.output_tokens) > 0


def test_the_stream_helpers_and_the_strict_sdk_accept_the_cost_field(gateway, upstream,
                                                                     api_key, priced):
    strict = openai.OpenAI(base_url=gateway.base_url, api_key=api_key.secret, max_retries=0,
                           _strict_response_validation=True)
    with strict.responses.stream(model="gpt-5", input="hi [[fake chunks=2]]") as stream:
        final = stream.get_final_response()
    assert final.output_text == "tok0 tok1 " and final.usage.cost > 0
    with strict.chat.completions.stream(
            model="gpt-4o-mini", stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "hi"}]) as stream:
        completion = stream.get_final_completion()
    assert completion.usage.cost > 0


def test_the_cost_is_an_exact_json_number_in_the_raw_stream(sdk):
    with httpx.stream("POST", str(sdk.base_url) + "responses",
                      headers={"Authorization": f"Bearer {sdk.api_key}"},
                      json={"model": "gpt-5", "stream": True, "input": "a b c"}) as response:
        body = response.read()
    row = wait_for_usage(response.headers["x-request-id"])
    assert f'"cost":{row.cost}'.encode() in body  # six places, never a float's rounding
    completed = [e for e in sse_events(body) if e["type"] == "response.completed"]
    assert len(completed) == 1 and b"event: response.completed\n" in body


def test_a_turnpike_compaction_stream_carries_the_cost(sdk, translated):
    raw = sdk.responses.with_raw_response.create(
        model="m-chat", stream=True,
        input=[{"role": "user", "content": "a long history"}, {"type": "compaction_trigger"}])
    events = list(raw.parse())
    assert events[-1].type == "response.completed"
    row = wait_for_usage(raw.headers["x-request-id"])
    assert row.cost > 0 and Decimal(str(events[-1].response.usage.cost)) == row.cost


def test_a_stream_without_reported_usage_carries_the_counted_cost(sdk, translated):
    """The upstream reports no usage: Turnpike counts the tokens, charges them, and the
    final event says so (tokens and cost as on the row)."""
    raw = sdk.responses.with_raw_response.create(model="m-chat", stream=True,
                                                 input="hello there [[fake usage=0]]")
    usage = list(raw.parse())[-1].response.usage
    row = wait_for_usage(raw.headers["x-request-id"])
    assert row.estimated and row.cost > 0
    assert (usage.input_tokens, usage.output_tokens) == (row.input_tokens, row.output_tokens)
    assert Decimal(str(usage.cost)) == row.cost


def test_raw_mode_streams_pass_through_untouched(sdk):
    raw = sdk.responses.with_raw_response.create(model="gpt-5", stream=True, input="hi",
                                                 extra_headers={"x-codex-mode": "raw"})
    usage = list(raw.parse())[-1].response.usage
    assert getattr(usage, "cost", None) is None
    assert wait_for_usage(raw.headers["x-request-id"]).cost > 0
