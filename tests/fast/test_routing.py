"""Routing as pure functions: which upstreams serve a model (exact names, wildcards, model
maps, groups and dedicated upstreams), the order a request tries its routes (priority tiers,
weighted rendezvous hashing, the sticky binding, cooling credentials), and the route table
decoded from its cached form."""

from __future__ import annotations

from collections import Counter

import pytest

from gateway.crypto import encrypt
from gateway.routing import (
    CredentialRef,
    RouteTable,
    UpstreamRef,
    decode_route_table,
    plan,
    shortest_cooldown,
)


def upstream(ident: int, models: tuple[str, ...] = ("gpt-5",), *, priority: int = 0,
             weight: int = 1, creds: tuple[int, ...] = (), groups: frozenset[int] = frozenset(),
             model_map: tuple[tuple[str, str], ...] = ()) -> UpstreamRef:
    return UpstreamRef(
        id=ident, name=f"up{ident}", kind="openai", base_url=f"http://u{ident}.test/v1",
        models=models, model_map=model_map, priority=priority, weight=weight, created=0,
        credentials=tuple(CredentialRef(id=c, secret=f"sk-{c}") for c in creds), groups=groups)


# --- which upstreams serve a model ------------------------------------------------------------

@pytest.mark.parametrize(("models", "model", "served"), [
    (("gpt-5",), "gpt-5", True),
    (("gpt-5",), "gpt-5-mini", False),  # an exact name is not a prefix
    (("gpt-5*",), "gpt-5-mini", True),
    (("gpt-5*",), "gpt-4o", False),
    (("o?",), "o3", True),
    (("o?",), "o3-mini", False),
    (("claude-[sh]*",), "claude-sonnet-4", True),
    (("claude-[sh]*",), "claude-opus-4", False),
    (("GPT-5",), "gpt-5", False),  # case-sensitive
])
def test_an_upstream_serves_exact_names_and_shell_wildcards(models, model, served):
    assert upstream(1, models).serves(model) is served


def test_a_model_map_name_is_served_and_renamed_upstream():
    up = upstream(1, ("gpt-5",), model_map=(("fast", "gpt-5-mini"),))
    assert up.serves("fast") and up.upstream_model("fast") == "gpt-5-mini"
    assert up.upstream_model("gpt-5") == "gpt-5"  # an unmapped name goes up as it is


def test_groups_open_an_upstream_to_their_keys_and_dedicated_keys_see_only_theirs():
    shared, restricted = upstream(1), upstream(2, groups=frozenset({7}))
    table = RouteTable(upstreams=(shared, restricted))
    assert [u.id for u in table.serving("gpt-5")] == [1]  # no group: unrestricted only
    assert [u.id for u in table.serving("gpt-5", group_id=7)] == [1, 2]
    assert [u.id for u in table.serving("gpt-5", group_id=8)] == [1]
    assert [u.id for u in table.serving("gpt-5", group_id=7, dedicated=True)] == [2]
    assert table.serving("gpt-5", group_id=None, dedicated=True) == []


def test_serving_answers_are_cached_but_callers_get_their_own_list():
    table = RouteTable(upstreams=(upstream(1),))
    first = table.serving("gpt-5")
    first.clear()
    assert [u.id for u in table.serving("gpt-5")] == [1]


def test_listed_models_are_the_concrete_names_first_upstream_wins():
    table = RouteTable(upstreams=(
        upstream(1, ("gpt-5", "o*"), model_map=(("fast", "gpt-5-mini"),)),
        upstream(2, ("gpt-5", "gpt-4o"), groups=frozenset({3})),
    ))
    assert {m: u.id for m, u in table.listed_models().items()} == {"gpt-5": 1, "fast": 1}
    assert {m: u.id for m, u in table.listed_models(group_id=3).items()} == {
        "gpt-5": 1, "fast": 1, "gpt-4o": 2}


# --- the order of the routes ------------------------------------------------------------------

def bindings(routes) -> list[str]:
    return [r.binding for r in routes]


def test_higher_priority_tiers_come_first_whatever_the_hash():
    low, high = upstream(1, creds=(11,), priority=0), upstream(2, creds=(21,), priority=5)
    for session in ("a", "b", "c", "d"):
        assert bindings(plan([low, high], "gpt-5", session)) == ["2:21", "1:11"]


def test_the_order_is_a_pure_function_of_the_session():
    ups = [upstream(1, creds=(11, 12, 13)), upstream(2, creds=(21, 22))]
    assert bindings(plan(ups, "gpt-5", "conv-1")) == bindings(plan(list(reversed(ups)),
                                                                    "gpt-5", "conv-1"))
    orders = {tuple(bindings(plan(ups, "gpt-5", f"s{i}"))) for i in range(50)}
    assert len(orders) > 1  # sessions spread over the credentials


def test_every_credential_of_every_upstream_is_a_route_and_keyless_upstreams_one():
    ups = [upstream(1, creds=(11, 12)), upstream(2, creds=())]
    assert sorted(bindings(plan(ups, "gpt-5", "s"))) == ["1:11", "1:12", "2:0"]


def test_weights_share_first_choices_in_proportion():
    ups = [upstream(1, creds=(11,), weight=3), upstream(2, creds=(21,), weight=1)]
    firsts = Counter(plan(ups, "gpt-5", f"session-{i}")[0].upstream.id for i in range(4000))
    assert 0.70 < firsts[1] / 4000 < 0.80  # 3/4, within sampling noise of 4,000 draws


def test_a_credential_dropping_out_moves_only_its_own_sessions():
    full = [upstream(1, creds=(11, 12, 13))]
    fewer = [upstream(1, creds=(11, 12))]
    for i in range(200):
        before = plan(full, "gpt-5", f"s{i}")[0].binding
        after = plan(fewer, "gpt-5", f"s{i}")[0].binding
        if before != "1:13":
            assert after == before


def test_cooling_credentials_are_left_out_and_a_keyless_upstream_stays():
    ups = [upstream(1, creds=(11, 12)), upstream(2)]
    assert sorted(bindings(plan(ups, "gpt-5", "s", cooled={11}))) == ["1:12", "2:0"]
    assert bindings(plan([upstream(1, creds=(11,))], "gpt-5", "s", cooled={11})) == []


def test_the_sticky_binding_goes_first_even_from_a_lower_tier():
    ups = [upstream(1, creds=(11,), priority=9), upstream(2, creds=(21, 22))]
    routes = plan(ups, "gpt-5", "s", sticky="2:22")
    assert routes[0].binding == "2:22" and len(routes) == 3
    # A binding to a route this request cannot take (cooling, gone) changes nothing.
    assert bindings(plan(ups, "gpt-5", "s", sticky="2:22", cooled={22})) == bindings(
        plan(ups, "gpt-5", "s", cooled={22}))
    assert bindings(plan(ups, "gpt-5", "s", sticky="9:99")) == bindings(plan(ups, "gpt-5", "s"))


def test_routes_carry_the_upstream_model_name():
    routes = plan([upstream(1, ("gpt-5",), creds=(11,), model_map=(("fast", "gpt-5-mini"),))],
                  "fast", "s")
    assert [r.model for r in routes] == ["gpt-5-mini"]


def test_shortest_cooldown_is_the_first_cooling_credential_back():
    ups = [upstream(1, creds=(11, 12)), upstream(2, creds=(21,))]
    now = 1_000_000
    assert shortest_cooldown(ups, {11: now + 9000, 21: now + 2500, 99: now + 1}, now) == 2.5
    assert shortest_cooldown(ups, {12: now - 10}, now) == 0.0  # already over: no wait
    assert shortest_cooldown(ups, {99: now + 1000}, now) is None  # not one of theirs


# --- the route table from its cached form -----------------------------------------------------

def test_the_cached_table_decodes_sorted_by_priority_with_secrets_decrypted():
    data = {"upstreams": [
        {"id": 1, "name": "cheap", "kind": "openai", "base_url": "http://a/v1",
         "models": ["gpt-5*"], "model_map": [["fast", "gpt-5-mini"]], "priority": 0,
         "weight": 0, "created": 5, "groups": [4],
         "credentials": [{"id": 11, "secret_encrypted": encrypt("sk-real"), "rpm": 60}],
         "timeouts": [1.5, None, 30.0], "proxy": "http://proxy:3128"},
        {"id": 2, "name": "first", "kind": "anthropic", "base_url": "http://b/v1",
         "models": ["claude-*"], "priority": 10, "weight": 2, "created": 6,
         "credentials": [{"id": 21, "secret_encrypted": ""}]},
    ]}
    table = decode_route_table(data)
    assert [u.name for u in table.upstreams] == ["first", "cheap"]
    cheap = table.upstreams[1]
    assert cheap.credentials == (CredentialRef(id=11, secret="sk-real", rpm=60),)
    assert cheap.weight == 1  # a zero weight still gets a share
    assert (cheap.timeout_connect, cheap.timeout_first_byte, cheap.timeout_idle) == (
        1.5, None, 30.0)
    assert cheap.groups == frozenset({4}) and cheap.proxy == "http://proxy:3128"
    assert cheap.upstream_model("fast") == "gpt-5-mini"
    first = table.upstreams[0]
    assert first.credentials[0].secret == "" and first.groups == frozenset()
    assert [u.id for u in table.serving("claude-opus-4")] == [2]
