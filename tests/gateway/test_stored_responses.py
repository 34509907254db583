"""Stored responses and previous_response_id, end to end (issue 14): the official ``openai``
SDK -> Turnpike (daphne, PostgreSQL, Redis) -> the fake upstream speaking each upstream
kind, over loopback.

A conversation is carried only by ``previous_response_id``: three turns (a question that
makes a tool call, the tool's output, a follow-up), streamed or not. An ``openai`` upstream
keeps responses itself, so it gets only the new input and the id (the request is pinned to
the route that made the response); every other kind gets the whole conversation, expanded
from Turnpike's store (reasoning with its encrypted content, instructions not carried).
Then what the store answers (GET, DELETE, input_items) and to whom: another tenant's id is
the same 404 as an id that never existed; storage off keeps nothing; retention deletes what
is due and nothing else.

Writes happen off the response path: a test that reads the database waits for them with a
deadline (``wait_stored``), never by sleeping.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest
from django.conf import settings

from gateway.models import StoredResponse
from gateway.services import upstream_create
from gateway.stored import store
from gateway.tasks import expire_stored_responses
from keys.models import Tenant
from keys.services import key_create, tenant_update
from tests.conftest import UPSTREAM_SECRET
from tests.gateway.matrix_cases import KINDS, model_for, sent_requests, upstream_turns

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

WEATHER_TOOL = {"type": "function", "name": "get_weather",
                "description": "Current weather in a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]}}
QUESTION = "[[fake tool=get_weather reasoning=1]] What is the weather in Paris?"
TOOL_OUTPUT = "[[fake tool=]] sunny"
FOLLOW_UP = "and tomorrow?"
DEFAULT_TEXT = "tok0 tok1 tok2 "


@pytest.fixture
def upstreams(fake_upstream: Any) -> dict[str, Any]:
    """One upstream per kind, each serving its own model ``m-<kind>``."""
    fake_upstream.clear()
    return {
        kind: upstream_create(
            name=f"stored-{kind}", kind=kind, models=[model_for(kind)],
            base_url=fake_upstream.openai_url if kind.startswith("openai") else fake_upstream.url,
            api_keys=[UPSTREAM_SECRET])
        for kind in KINDS
    }


@pytest.fixture
def sdk(gateway: Any, upstreams: dict[str, Any], api_key: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=api_key.secret, max_retries=0)


def create(sdk: openai.OpenAI, stream: bool, **body: Any) -> Any:
    """responses.create, or the SDK's stream helper's final response."""
    if not stream:
        return sdk.responses.create(**body)
    with sdk.responses.stream(**body) as events:
        for _ in events:
            pass
        return events.get_final_response()


def wait_stored(*ids: str, timeout: float = 10.0) -> list[StoredResponse]:
    """The rows of these responses, once the writer has put them all in the database."""
    deadline = time.monotonic() + timeout
    while True:
        rows = {r.id: r for r in StoredResponse.objects.filter(pk__in=ids)}
        if len(rows) == len(ids):
            return [rows[i] for i in ids]
        if time.monotonic() > deadline:
            raise AssertionError(f"stored {sorted(rows)} of {ids} after {timeout}s")
        time.sleep(0.02)


def without_reasoning(turns: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [t for t in turns if t != ("reasoning",)]


def tool_call_of(response: Any) -> Any:
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1, response.output
    return calls[0]


# --- a conversation carried by previous_response_id, on every upstream kind ----------------

@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_conversation_carried_only_by_response_ids(sdk: openai.OpenAI, fake_upstream: Any,
                                                     kind: str, stream: bool) -> None:
    model = model_for(kind)
    first = create(sdk, stream, model=model, instructions="Be brief.", tools=[WEATHER_TOOL],
                   input=QUESTION)
    call = tool_call_of(first)
    assert call.name == "get_weather" and first.status == "completed"

    second = create(sdk, stream, model=model, tools=[WEATHER_TOOL],
                    previous_response_id=first.id,
                    input=[{"type": "function_call_output", "call_id": call.call_id,
                            "output": TOOL_OUTPUT}])
    assert second.output_text == DEFAULT_TEXT
    assert second.previous_response_id == first.id

    third = create(sdk, stream, model=model, tools=[WEATHER_TOOL],
                   previous_response_id=second.id, input=FOLLOW_UP)
    assert third.output_text == DEFAULT_TEXT and third.previous_response_id == second.id

    sent = sent_requests(fake_upstream)
    assert len(sent) == 3
    if kind == "openai":
        # Pinned: the upstream keeps the conversation; it gets the id and the new input.
        assert sent[1].body["previous_response_id"] == first.id
        assert sent[1].body["input"] == [{"type": "function_call_output",
                                          "call_id": call.call_id, "output": TOOL_OUTPUT}]
        assert sent[2].body["previous_response_id"] == second.id
        assert sent[2].body["input"] == FOLLOW_UP
        assert "instructions" not in sent[2].body
    else:
        # Expanded from the store: the whole conversation, in the upstream's protocol.
        for body in (sent[1].body, sent[2].body):
            assert "previous_response_id" not in body
            assert "Be brief." not in str(body)  # instructions are not carried over
        arguments = {"city": "Paris"}
        history = [("user", QUESTION), ("tool_call", call.call_id, "get_weather", arguments),
                   ("tool_result", call.call_id, TOOL_OUTPUT)]
        turns2 = without_reasoning(upstream_turns(sent[1]))
        turns3 = without_reasoning(upstream_turns(sent[2]))
        assert turns2[-3:] == history, turns2
        assert turns3[-5:] == [*history, ("assistant", DEFAULT_TEXT), ("user", FOLLOW_UP)], \
            turns3
        if kind == "anthropic":  # the signed thinking comes back, from encrypted_content
            thinking = [b for m in sent[1].body["messages"] if m["role"] == "assistant"
                        for b in m["content"] if isinstance(b, dict) and b["type"] == "thinking"]
            assert thinking and thinking[0]["signature"] == "sig_fake"
        if kind == "openai-responses":
            reasoning = [i for i in sent[1].body["input"] if i.get("type") == "reasoning"]
            assert reasoning and reasoning[0]["encrypted_content"] == "enc_fake"
            assert all("id" not in i for i in sent[1].body["input"][:3])

    # What the store holds: each turn's own input, its chain, its route.
    rows = wait_stored(first.id, second.id, third.id)
    assert [r.ancestors for r in rows] == [[], [first.id], [first.id, second.id]]
    assert [r.previous_response_id for r in rows] == [None, first.id, second.id]
    assert rows[1].input_items[0]["type"] == "function_call_output"
    assert rows[2].input_items == [{"id": rows[2].input_items[0]["id"], "type": "message",
                                    "role": "user", "status": "completed",
                                    "content": [{"type": "input_text", "text": FOLLOW_UP}]}]
    assert {r.upstream.kind for r in rows} == {kind}
    assert rows[0].request["instructions"] == "Be brief." and "input" not in rows[0].request
    got = sdk.responses.retrieve(third.id)
    assert got.id == third.id and got.output_text == DEFAULT_TEXT


# --- a conversation carried by item references (the Vercel AI SDK with store on) -------------

def referenced(response: Any) -> list[dict[str, str]]:
    """An answered turn as the Vercel AI SDK sends it back while ``store`` is on: each
    output item named by its id, its content left out."""
    return [{"type": "item_reference", "id": item.id} for item in response.output]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_conversation_whose_answers_are_item_references(
        sdk: openai.OpenAI, fake_upstream: Any, kind: str, stream: bool) -> None:
    """The whole conversation in ``input``, the earlier answers as item references and no
    previous_response_id. An ``openai`` upstream served those items and keeps responses:
    it gets the references as sent. Every other kind gets the items from Turnpike's store,
    at once (the writer has not run: the staged index), the same history an expansion by
    previous_response_id sends."""
    model = model_for(kind)
    first = create(sdk, stream, model=model, tools=[WEATHER_TOOL], input=QUESTION)
    call = tool_call_of(first)
    second = create(sdk, stream, model=model, tools=[WEATHER_TOOL], input=[
        {"role": "user", "content": QUESTION}, *referenced(first),
        {"type": "function_call_output", "call_id": call.call_id, "output": TOOL_OUTPUT}])
    assert second.output_text == DEFAULT_TEXT and second.status == "completed"
    third = create(sdk, stream, model=model, tools=[WEATHER_TOOL], input=[
        {"role": "user", "content": QUESTION}, *referenced(first),
        {"type": "function_call_output", "call_id": call.call_id, "output": TOOL_OUTPUT},
        *referenced(second), {"role": "user", "content": FOLLOW_UP}])
    assert third.output_text == DEFAULT_TEXT

    sent = sent_requests(fake_upstream)
    assert len(sent) == 3
    if kind == "openai":
        assert sent[1].body["input"][1:-1] == referenced(first)
        return
    for body in (sent[1].body, sent[2].body):
        assert "item_reference" not in str(body)
    history = [("user", QUESTION), ("tool_call", call.call_id, "get_weather",
                                    {"city": "Paris"}),
               ("tool_result", call.call_id, TOOL_OUTPUT)]
    assert without_reasoning(upstream_turns(sent[1]))[-3:] == history
    assert without_reasoning(upstream_turns(sent[2]))[-5:] == [
        *history, ("assistant", DEFAULT_TEXT), ("user", FOLLOW_UP)]
    # The turn was stored with the items it named: a later turn by previous_response_id
    # expands to the same conversation.
    fourth = create(sdk, stream, model=model, tools=[WEATHER_TOOL],
                    previous_response_id=second.id, input=FOLLOW_UP)
    assert fourth.output_text == DEFAULT_TEXT
    sent = sent_requests(fake_upstream)
    assert "item_reference" not in str(sent[3].body)
    assert without_reasoning(upstream_turns(sent[3]))[-5:] == [
        *history, ("assistant", DEFAULT_TEXT), ("user", FOLLOW_UP)]
    if kind == "anthropic":  # the signed thinking comes back, from the stored item
        thinking = [b for m in sent[1].body["messages"] if m["role"] == "assistant"
                    for b in m["content"] if isinstance(b, dict) and b["type"] == "thinking"]
        assert thinking and thinking[0]["signature"] == "sig_fake"
    if kind == "openai-responses":  # it keeps no responses: the items, without their ids
        reasoning = [i for i in sent[1].body["input"] if i.get("type") == "reasoning"]
        assert reasoning and reasoning[0]["encrypted_content"] == "enc_fake"
        assert all("id" not in i for i in sent[1].body["input"][1:-1])


def test_an_item_reference_turnpike_does_not_hold_is_a_400_on_a_translated_route(
        sdk: openai.OpenAI, gateway: Any, fake_upstream: Any) -> None:
    """Never stored, or another tenant's: the same answer, and nothing reaches the
    upstream."""
    other = Tenant.objects.create(name="other-items")
    theirs = openai.OpenAI(base_url=gateway.base_url, max_retries=0,
                           api_key=key_create(tenant=other, name="o").secret)
    their_answer = theirs.responses.create(model=model_for("anthropic"), input="hello")
    for item_id in ("msg_never_stored", their_answer.output[0].id):
        before = len(sent_requests(fake_upstream))
        with pytest.raises(openai.BadRequestError) as caught:
            sdk.responses.create(model=model_for("anthropic"), input=[
                {"role": "user", "content": "hi"}, {"type": "item_reference", "id": item_id}])
        error = caught.value.body
        assert error["param"] == "input" and f"Item with id '{item_id}' not found" in \
            error["message"], error
        assert len(sent_requests(fake_upstream)) == before


def test_the_expanded_conversation_is_what_is_reserved_and_charged(
        sdk: openai.OpenAI, fake_upstream: Any, gateway: Any, api_key: Any) -> None:
    """Usage counts the history the upstream was sent (the fake counts its words)."""
    model = model_for("openai-chat")
    first = sdk.responses.create(model=model, input="one two three four five six")
    second = sdk.responses.create(model=model, previous_response_id=first.id, input="seven")
    sent = sent_requests(fake_upstream)
    assert second.usage is not None and first.usage is not None
    # History (6 words + the 3-word answer) plus the new word.
    assert first.usage.input_tokens == 6
    assert second.usage.input_tokens == 6 + 3 + 1
    assert len(sent[1].body["messages"]) == 3


def test_a_pinned_route_that_fails_over_sends_the_expanded_conversation(
        gateway: Any, fake_upstream: Any, api_key: Any) -> None:
    """The route that made the response goes first; when it fails before the answer starts
    the next route (here one that keeps nothing) gets the whole conversation."""
    fake_upstream.clear()
    upstream_create(name="pinned", kind="openai", models=["m-fo"], priority=1,
                    base_url=fake_upstream.openai_url, api_keys=[UPSTREAM_SECRET])
    upstream_create(name="backup", kind="openai-chat", models=["m-fo"],
                    base_url=fake_upstream.openai_url, api_keys=[UPSTREAM_SECRET])
    sdk = openai.OpenAI(base_url=gateway.base_url, api_key=api_key.secret, max_retries=0)
    first = sdk.responses.create(model="m-fo", input="where am I")
    fake_upstream.script_key(UPSTREAM_SECRET, status=503, count=1)
    second = sdk.responses.create(model="m-fo", previous_response_id=first.id, input="and now")
    assert second.output_text == DEFAULT_TEXT
    sent = sent_requests(fake_upstream)
    assert [s.protocol for s in sent] == ["responses", "responses", "chat"]
    assert sent[1].body["previous_response_id"] == first.id  # the pinned try (the 503)
    assert upstream_turns(sent[-1]) == [("user", "where am I"), ("assistant", DEFAULT_TEXT),
                                        ("user", "and now")]
    rows = wait_stored(first.id, second.id)
    assert (rows[0].upstream.name, rows[1].upstream.name) == ("pinned", "backup")
    assert rows[1].ancestors == [first.id]


# --- reading, deleting, listing --------------------------------------------------------------

def test_retrieve_delete_and_input_items(sdk: openai.OpenAI, gateway: Any,
                                        api_key: Any) -> None:
    model = model_for("openai-chat")
    first = sdk.responses.create(model=model, input=[
        {"role": "user", "content": "alpha"}, {"role": "user", "content": "beta"},
        {"type": "message", "role": "user", "id": "msg_mine",
         "content": [{"type": "input_text", "text": "gamma"}]}])
    second = sdk.responses.create(model=model, previous_response_id=first.id, input="delta")

    got = sdk.responses.retrieve(first.id)
    assert got.id == first.id and got.output_text == first.output_text
    # The list holds every item the response had as input: the earlier turns' too.
    items = sdk.responses.input_items.list(second.id, order="asc")
    texts = [(i.type, getattr(i, "role", None)) for i in items.data]
    assert texts == [("message", "user")] * 3 + [("message", "assistant"), ("message", "user")]
    assert items.data[2].id == "msg_mine"
    assert all(i.id for i in items.data)
    desc = sdk.responses.input_items.list(second.id, limit=2)
    assert [i.id for i in desc.data] == [items.data[4].id, items.data[3].id]
    assert desc.has_more is True and desc.first_id == items.data[4].id
    after = sdk.responses.input_items.list(second.id, limit=2, after=desc.last_id)
    assert [i.id for i in after.data] == [items.data[2].id, items.data[1].id]
    before = sdk.responses.input_items.list(second.id, order="asc", limit=2,
                                            extra_query={"before": items.data[3].id})
    assert [i.id for i in before.data] == [items.data[1].id, items.data[2].id]
    assert before.has_more is True
    every = list(sdk.responses.input_items.list(second.id, limit=1))  # the SDK's pager
    assert [i.id for i in every] == [i.id for i in reversed(items.data)]

    headers = {"Authorization": f"Bearer {api_key.secret}"}
    for query, param in (({"limit": 0}, "limit"), ({"limit": 101}, "limit"),
                         ({"order": "up"}, "order"), ({"after": "nope"}, "after"),
                         ({"include[]": "bogus"}, "include")):
        answer = httpx.get(f"{gateway.base_url}/responses/{second.id}/input_items",
                           params=query, headers=headers)
        assert answer.status_code == 400, (query, answer.text)
        assert answer.json()["error"]["param"] == param

    # DELETE: OpenAI's shape, then gone everywhere (the staged copy and the row).
    deleted = httpx.delete(f"{gateway.base_url}/responses/{first.id}", headers=headers)
    assert deleted.status_code == 200
    assert deleted.json() == {"id": first.id, "object": "response.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError) as raised:
        sdk.responses.create(model=model, previous_response_id=first.id, input="again")
    assert raised.value.code == "previous_response_not_found"
    wait_stored(second.id)
    deadline = time.monotonic() + 10
    while StoredResponse.objects.filter(pk=first.id).exists():  # the writer may race it
        assert time.monotonic() < deadline
        time.sleep(0.02)
    # The conversation goes on without the deleted turn.
    third = sdk.responses.create(model=model, previous_response_id=second.id, input="eps")
    assert third.output_text == DEFAULT_TEXT
    # Other paths and methods of the stored endpoints.
    for path in (f"/codex/v1/responses/{second.id}", f"/responses/{second.id}"):
        assert httpx.get(gateway.url + path, headers=headers).json()["id"] == second.id
    wrong = httpx.post(f"{gateway.base_url}/responses/{second.id}", headers=headers)
    assert wrong.status_code == 405
    cancel = httpx.post(f"{gateway.base_url}/responses/{second.id}/cancel", headers=headers)
    assert cancel.status_code == 400
    stream = httpx.get(f"{gateway.base_url}/responses/{second.id}",
                       params={"stream": "true"}, headers=headers)
    assert stream.status_code == 400 and stream.json()["error"]["param"] == "stream"


def test_include_encrypted_reasoning_on_retrieve(sdk: openai.OpenAI) -> None:
    model = model_for("openai-responses")
    made = sdk.responses.create(model=model, input="[[fake reasoning=1]] think")
    plain = sdk.responses.retrieve(made.id)
    reasoning = [i for i in plain.output if i.type == "reasoning"]
    assert reasoning and reasoning[0].encrypted_content is None
    full = sdk.responses.retrieve(made.id, include=["reasoning.encrypted_content"])
    assert [i for i in full.output if i.type == "reasoning"][0].encrypted_content == "enc_fake"


# --- tenants, storage off, retention ---------------------------------------------------------

def test_another_tenants_response_is_the_same_404_as_none(sdk: openai.OpenAI, gateway: Any,
                                                          upstreams: Any) -> None:
    model = model_for("openai-chat")
    mine = sdk.responses.create(model=model, input="secret plans")
    other = key_create(tenant=Tenant.objects.create(name="globex"), name="spy")
    spy = openai.OpenAI(base_url=gateway.base_url, api_key=other.secret, max_retries=0)
    headers = {"Authorization": f"Bearer {other.secret}"}

    def answers(response_id: str) -> list[tuple[int, Any]]:
        base = f"{gateway.base_url}/responses/{response_id}"
        out = [httpx.get(base, headers=headers), httpx.delete(base, headers=headers),
               httpx.get(base + "/input_items", headers=headers),
               httpx.post(base + "/cancel", headers=headers),
               httpx.get(base, params={"stream": "true", "starting_after": 0},
                         headers=headers)]
        return [(a.status_code, a.json()["error"] | {
            "message": a.json()["error"]["message"].replace(response_id, "ID")}) for a in out]

    assert answers(mine.id) == answers("resp_neverexisted")
    assert {status for status, _ in answers(mine.id)} == {404}
    with pytest.raises(openai.NotFoundError) as raised:
        spy.responses.create(model=model, previous_response_id=mine.id, input="tell me")
    error = raised.value.body
    assert error == {"message": f"Previous response with id '{mine.id}' not found.",
                     "type": "invalid_request_error", "param": "previous_response_id",
                     "code": "previous_response_not_found"}
    # Still there for its owner.
    assert sdk.responses.retrieve(mine.id).id == mine.id


def test_storage_off_stores_nothing_and_refuses_previous_response_id(
        sdk: openai.OpenAI, gateway: Any, api_key: Any, tenant: Tenant) -> None:
    model = model_for("openai-chat")
    kept = sdk.responses.create(model=model, input="kept")
    wait_stored(kept.id)
    tenant_update(tenant=tenant, response_storage="off")
    for stream in (False, True):
        made = create(sdk, stream, model=model, input="forget me")
        assert made.store is False
        with pytest.raises(openai.NotFoundError):
            sdk.responses.retrieve(made.id)
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.responses.create(model=model, previous_response_id=kept.id, input="more")
    assert raised.value.code == "response_storage_disabled"
    # store: false from the client keeps nothing either, with storage on.
    tenant_update(tenant=tenant, response_storage="on")
    unstored = sdk.responses.create(model=model, input="ephemeral", store=False)
    # Nothing written, nothing waiting: the writer is idle and the table holds one row.
    status = httpx.get(gateway.url + "/_gateway/status").json()
    assert not status["store_pending"] and not status["store_journal"]
    assert list(StoredResponse.objects.values_list("id", flat=True)) == [kept.id]
    assert unstored.id != kept.id


def test_a_key_can_turn_storage_off_for_itself(sdk: openai.OpenAI, gateway: Any,
                                               make_key: Any) -> None:
    quiet = make_key(name="zdr", response_storage="off")
    zdr = openai.OpenAI(base_url=gateway.base_url, api_key=quiet.secret, max_retries=0)
    made = zdr.responses.create(model=model_for("openai-chat"), input="nothing kept")
    kept = sdk.responses.create(model=model_for("openai-chat"), input="kept")
    wait_stored(kept.id)
    assert not StoredResponse.objects.filter(pk=made.id).exists()


def test_retention_deletes_what_is_due_and_nothing_else(sdk: openai.OpenAI,
                                                        tenant: Tenant) -> None:
    model = model_for("openai-chat")
    tenant_update(tenant=tenant, response_retention_days=1)
    short = sdk.responses.create(model=model, input="short-lived")
    tenant_update(tenant=tenant, response_retention_days=30)
    long = sdk.responses.create(model=model, input="long-lived")
    rows = wait_stored(short.id, long.id)
    # Kept for the retention from when it was stored (the answer's created_at is whole seconds).
    assert abs((rows[0].expires_at - rows[0].created_at).total_seconds() - 86400) < 5
    assert abs((rows[1].expires_at - rows[1].created_at).total_seconds() - 30 * 86400) < 5
    now = time.time()
    assert expire_stored_responses() == 0  # the beat task, now: nothing is due
    assert store.expire(now=now + 2 * 86400) == 1
    assert list(StoredResponse.objects.values_list("id", flat=True)) == [long.id]
    assert store.expire(now=now + 2 * 86400) == 0
    schedule = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {"gateway.tasks.expire_stored_responses", "gateway.drain_store_journal"} <= schedule
