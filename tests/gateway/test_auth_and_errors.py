"""Every way to send a key, every path, and the OpenAI error envelope for bad input."""

from __future__ import annotations

from datetime import timedelta

import httpx
import openai
import pytest
from django.utils import timezone

from billing.models import UsageLog
from gateway.services import upstream_create
from keys.models import Status
from keys.services import tenant_get_or_create
from tests.conftest import TEST_BODY_LIMIT, UPSTREAM_SECRET, wait_for_usage
from tests.servers import free_port

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def assert_envelope(resp: httpx.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    error = resp.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    assert error["code"] == code
    assert error["message"] and error["type"]
    return error


@pytest.mark.parametrize("header", [
    "Authorization: Bearer {k}", "Authorization: bearer {k}", "Authorization: {k}",
    "x-api-key: {k}", "api-key: {k}",
])
def test_every_key_header_form_is_accepted(gateway, upstream, api_key, header):
    name, value = header.split(": ")
    resp = httpx.post(gateway.base_url + "/chat/completions", json=CHAT,
                      headers={name: value.format(k=api_key.secret)})
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "tok0 tok1 tok2 "


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer"}, {"Authorization": ""},
                                     {"x-api-key": ""}])
def test_a_request_without_a_key_is_401_missing_api_key(gateway, upstream, headers):
    resp = httpx.post(gateway.base_url + "/chat/completions", json=CHAT, headers=headers)
    assert_envelope(resp, 401, "missing_api_key")
    row = wait_for_usage(resp.headers["x-request-id"])
    assert row.status_code == 401 and row.key_id is None


def test_an_unknown_key_is_401_invalid_api_key(gateway, upstream):
    resp = httpx.post(gateway.base_url + "/responses", json={"model": "gpt-5", "input": "x"},
                      headers={"Authorization": "Bearer sk-tp-notarealkeyatallnotarealkey12"})
    assert_envelope(resp, 401, "invalid_api_key")


def test_the_sdk_sees_an_authentication_error_for_a_bad_key(gateway, upstream):
    bad = openai.OpenAI(base_url=gateway.base_url, api_key="sk-tp-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.models.list()
    assert info.value.code == "invalid_api_key"


def test_a_disabled_key_or_tenant_is_refused_at_once(gateway, upstream, api_key):
    headers = {"Authorization": f"Bearer {api_key.secret}"}
    assert httpx.post(gateway.base_url + "/chat/completions", json=CHAT,
                      headers=headers).status_code == 200
    key = api_key.key
    key.status = Status.DISABLED
    key.save()
    resp = httpx.post(gateway.base_url + "/chat/completions", json=CHAT, headers=headers)
    assert_envelope(resp, 403, "api_key_disabled")
    key.status = Status.ACTIVE
    key.save()
    key.tenant.status = Status.DISABLED
    key.tenant.save()
    resp = httpx.post(gateway.base_url + "/chat/completions", json=CHAT, headers=headers)
    assert_envelope(resp, 403, "tenant_disabled")


def test_an_expired_key_is_401_api_key_expired(gateway, upstream, make_key):
    made = make_key(expires_at=timezone.now() - timedelta(seconds=1))
    resp = httpx.post(gateway.base_url + "/chat/completions", json=CHAT,
                      headers={"Authorization": f"Bearer {made.secret}"})
    assert_envelope(resp, 401, "api_key_expired")


def _code(surface: str, resp: httpx.Response) -> tuple[int, str]:
    """(status, code) from each surface's own error shape."""
    body = resp.json()
    if surface == "/api/balance":  # the deprecated API: {"message", "extra": {"code"}}
        return resp.status_code, body["extra"]["code"]
    return resp.status_code, body["error"]["code"]  # /v1 and /api/v1: {"error": {"code"}}


@pytest.mark.parametrize("header", ["Authorization: Bearer {k}", "x-api-key: {k}",
                                    "api-key: {k}"])
def test_v1_the_tenant_api_and_the_old_api_refuse_a_key_alike(gateway, upstream, make_key,
                                                               header):
    """One rule (keys.authn) for every surface that takes an API key: the same status and
    code for a disabled key, a key of a disabled tenant, an expired key, a key used from an
    address outside its list and an unknown key, whichever header carries it."""
    off = make_key(name="off")
    off.key.status = Status.DISABLED
    off.key.save()
    other = tenant_get_or_create(name="closed")[0]
    closed = make_key(name="closed", tenant=other)
    other.status = Status.DISABLED
    other.save()
    late = make_key(name="late", expires_at=timezone.now() - timedelta(seconds=1))
    far = make_key(name="far", allowed_ips=["10.0.0.0/8"])  # the test client is 127.0.0.1
    cases = [(off.secret, 403, "api_key_disabled"), (closed.secret, 403, "tenant_disabled"),
             (late.secret, 401, "api_key_expired"), (far.secret, 403, "ip_not_allowed"),
             ("sk-tp-" + "x" * 40, 401, "invalid_api_key")]
    name, value = header.split(": ")
    for secret, status, code in cases:
        headers = {name: value.format(k=secret)}
        v1 = httpx.post(gateway.base_url + "/chat/completions", json=CHAT, headers=headers)
        assert _code("/v1", v1) == (status, code), v1.text
        for path in ("/api/v1/balance", "/api/balance"):
            resp = httpx.get(gateway.url + path, headers=headers)
            assert _code(path, resp) == (status, code), (path, resp.text)
    # A known key is still served by all three.
    ok = {name: value.format(k=make_key(name="fine").secret)}
    assert httpx.post(gateway.base_url + "/chat/completions", json=CHAT,
                      headers=ok).status_code == 200
    for path in ("/api/v1/balance", "/api/balance"):
        assert httpx.get(gateway.url + path, headers=ok).status_code == 200, path


@pytest.mark.parametrize("path", [
    "/v1/chat/completions", "/chat/completions", "/codex/v1/chat/completions",
    "/codex/chat/completions", "/v1/chat/completions/",
])
def test_chat_is_served_on_every_path_variant(gateway, upstream, api_key, path):
    resp = httpx.post(gateway.url + path, json=CHAT,
                      headers={"Authorization": f"Bearer {api_key.secret}"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["object"] == "chat.completion"


@pytest.mark.parametrize("path", ["/v1/responses", "/responses", "/codex/v1/responses",
                                  "/codex/responses"])
def test_responses_is_served_on_every_path_variant(gateway, upstream, api_key, path):
    resp = httpx.post(gateway.url + path, json={"model": "gpt-5", "input": "x"},
                      headers={"Authorization": f"Bearer {api_key.secret}"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["object"] == "response"


@pytest.mark.parametrize("path", ["/v1/models", "/models", "/codex/v1/models", "/codex/models"])
def test_models_is_served_on_every_path_variant(gateway, upstream, api_key, path):
    resp = httpx.get(gateway.url + path, headers={"Authorization": f"Bearer {api_key.secret}"})
    assert resp.status_code == 200
    assert resp.json()["object"] == "list"


def test_models_lists_only_what_the_key_may_use(gateway, upstream, make_key):
    made = make_key(models="gpt-5*", denied_models="gpt-5-codex")
    sdk = openai.OpenAI(base_url=gateway.base_url, api_key=made.secret, max_retries=0)
    assert [m.id for m in sdk.models.list()] == ["gpt-5"]
    assert sdk.models.retrieve("gpt-5").id == "gpt-5"
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("gpt-4o-mini")


def test_models_lists_every_served_model_for_an_unrestricted_key(client):
    assert sorted(m.id for m in client.models.list()) == ["gpt-4o-mini", "gpt-5",
                                                          "gpt-5-codex", "o3"]


def test_an_unknown_path_under_v1_is_an_openai_style_404(gateway, api_key):
    resp = httpx.post(gateway.url + "/v1/embeddingz", json={},
                      headers={"Authorization": f"Bearer {api_key.secret}"})
    assert_envelope(resp, 404, "unknown_url")


def test_a_wrong_method_is_405(gateway, api_key):
    resp = httpx.get(gateway.base_url + "/chat/completions",
                     headers={"Authorization": f"Bearer {api_key.secret}"})
    assert_envelope(resp, 405, "method_not_allowed")


@pytest.mark.parametrize(("content", "ctype", "code"), [
    (b"{not json", "application/json", "invalid_json"),
    (b"", "application/json", "invalid_json"),
    (b"[1, 2]", "application/json", "invalid_json"),
    (b'{"model": "gpt-4o-mini"}', "text/plain", "unsupported_content_type"),
    (b'{"model": "gpt-4o-mini"}', "application/x-www-form-urlencoded",
     "unsupported_content_type"),
    (b'{"messages": []}', "application/json", "missing_model"),
    (b'{"model": ""}', "application/json", "missing_model"),
    (b'{"model": 5}', "application/json", "missing_model"),
    (b'{"model": "gpt-4o-mini", "stream": "yes"}', "application/json", "invalid_request"),
])
def test_bad_bodies_get_a_clear_400(gateway, upstream, api_key, content, ctype, code):
    resp = httpx.post(gateway.base_url + "/chat/completions", content=content,
                      headers={"Authorization": f"Bearer {api_key.secret}",
                               "Content-Type": ctype})
    error = assert_envelope(resp, 400, code)
    assert error["type"] == "invalid_request_error"


def test_a_body_over_the_limit_is_413(gateway, upstream, api_key):
    big = b'{"model": "gpt-5", "input": "' + b"x" * (TEST_BODY_LIMIT + 10) + b'"}'
    resp = httpx.post(gateway.base_url + "/responses", content=big,
                      headers={"Authorization": f"Bearer {api_key.secret}",
                               "Content-Type": "application/json"})
    assert_envelope(resp, 413, "request_too_large")


def test_an_unknown_model_is_404_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model",
                                       messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "model_not_found"


def test_a_model_outside_the_allow_list_is_403(gateway, upstream, make_key):
    made = make_key(models="gpt-5")
    sdk = openai.OpenAI(base_url=gateway.base_url, api_key=made.secret, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as info:
        sdk.chat.completions.create(model="gpt-4o-mini",
                                    messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "model_not_allowed"


def test_an_upstream_5xx_becomes_the_error_envelope(client):
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "[[fake status=503]]"}])
    assert info.value.status_code == 503
    assert info.value.body["message"] == "fake upstream error 503"


def test_an_upstream_429_keeps_its_retry_after(gateway, upstream, api_key):
    resp = httpx.post(gateway.base_url + "/responses",
                      json={"model": "gpt-5", "input": "[[fake status=429 retry_after=7]]"},
                      headers={"Authorization": f"Bearer {api_key.secret}"})
    assert_envelope(resp, 429, "rate_limit_exceeded")
    assert resp.headers["retry-after"] == "7"


def test_an_upstream_429_without_retry_after_still_sends_one(gateway, upstream, api_key):
    resp = httpx.post(gateway.base_url + "/responses",
                      json={"model": "gpt-5", "input": "[[fake status=429]]"},
                      headers={"Authorization": f"Bearer {api_key.secret}"})
    assert resp.status_code == 429
    assert int(resp.headers["retry-after"]) > 0


def test_an_upstream_refusing_our_credential_is_a_502_not_the_clients_fault(
        gateway, fake_upstream, api_key):
    upstream_create(name="wrong-cred", kind="openai", base_url=fake_upstream.openai_url,
                    models=["gpt-4o-mini"], api_keys=["sk-wrong-upstream-credential"])
    resp = httpx.post(gateway.base_url + "/chat/completions", json=CHAT,
                      headers={"Authorization": f"Bearer {api_key.secret}"})
    error = assert_envelope(resp, 502, "upstream_auth_failed")
    assert "sk-wrong" not in resp.text and "credential" in error["message"]


def test_an_unreachable_upstream_is_502_upstream_unavailable(gateway, api_key):
    upstream_create(name="dead", kind="openai", base_url=f"http://127.0.0.1:{free_port()}/v1",
                    models=["gpt-4o-mini"], api_keys=["sk-dead-upstream"])
    resp = httpx.post(gateway.base_url + "/chat/completions", json=CHAT,
                      headers={"Authorization": f"Bearer {api_key.secret}"})
    assert_envelope(resp, 502, "upstream_unavailable")
    row = wait_for_usage(resp.headers["x-request-id"])
    assert row.error_code == "upstream_unavailable" and row.upstream is not None


def test_a_model_served_by_another_protocol_is_translated(gateway, fake_upstream, api_key):
    upstream_create(name="claude", kind="anthropic", base_url=fake_upstream.url,
                    models=["claude-x"], api_keys=[UPSTREAM_SECRET])
    resp = httpx.post(gateway.base_url + "/chat/completions",
                      json={**CHAT, "model": "claude-x"},
                      headers={"Authorization": f"Bearer {api_key.secret}"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "tok0 tok1 tok2 "


def test_every_request_gets_a_usage_row(gateway, upstream, api_key):
    headers = {"Authorization": f"Bearer {api_key.secret}"}
    ids = [
        httpx.post(gateway.base_url + "/chat/completions", json=CHAT, headers=headers),
        httpx.post(gateway.base_url + "/chat/completions", content=b"{", headers=headers),
        httpx.get(gateway.base_url + "/models", headers=headers),
        httpx.post(gateway.base_url + "/chat/completions", json=CHAT),
    ]
    rows = [wait_for_usage(r.headers["x-request-id"]) for r in ids]
    assert [r.status_code for r in rows] == [200, 400, 200, 401]
    assert [r.error_code for r in rows] == ["", "invalid_json", "", "missing_api_key"]
    request_ids = [r.headers["x-request-id"] for r in ids]
    assert UsageLog.objects.filter(request_id__in=request_ids).count() == 4
