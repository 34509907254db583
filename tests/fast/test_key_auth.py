"""API-key authentication (keys.authn), the one owner of the rule for /v1, the tenant API and
the deprecated /api: which header carries the key (raw ASGI headers and Django's
request.headers read alike), the order of the checks and the refusal each one gives, and
/v1's rendering of a refusal as OpenAI's error envelope."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.http.request import HttpHeaders

from gateway import pipeline
from gateway.context import RelayContext
from gateway.errors import GatewayError
from keys import authn
from keys.secrets import hash_secret
from keys.snapshots import KeySnapshot


def snapshot(**kw: Any) -> KeySnapshot:
    base: dict[str, Any] = dict(
        key_id=1, tenant_id=1, prefix="sk-tp-abcd", key_active=True, tenant_active=True,
        expires_at=None, allowed_models=(), denied_models=(), allowed_ips=(), rpm=0, rpd=0,
        tpm=0, concurrency=0, max_tokens=0, group_id=None, price_multiplier="1",
        has_quota=False)
    return KeySnapshot(**{**base, **kw})


# --- which header carries the key -----------------------------------------------------------

HEADER_CASES = [
    ({"Authorization": "Bearer sk-tp-1"}, "sk-tp-1"),
    ({"Authorization": "BEARER  sk-tp-1 "}, "sk-tp-1"),
    ({"Authorization": "bearer sk-tp-1"}, "sk-tp-1"),
    ({"Authorization": "sk-tp-2"}, "sk-tp-2"),  # bare: what some SDKs send
    ({"X-Api-Key": "sk-tp-3"}, "sk-tp-3"),
    ({"Api-Key": "sk-tp-4"}, "sk-tp-4"),  # Azure-style clients
    ({"X-Api-Key": " sk-tp-3 "}, "sk-tp-3"),
    # Authorization first, then x-api-key, then api-key
    ({"Authorization": "Bearer sk-tp-1", "X-Api-Key": "sk-tp-3", "Api-Key": "sk-tp-4"},
     "sk-tp-1"),
    ({"X-Api-Key": "sk-tp-3", "Api-Key": "sk-tp-4"}, "sk-tp-3"),
    # an empty Authorization does not hide the next header
    ({"Authorization": "Bearer", "X-Api-Key": "sk-tp-3"}, "sk-tp-3"),
    ({"Authorization": "Bearer   ", "Api-Key": "sk-tp-4"}, "sk-tp-4"),
    ({"Authorization": "Bearer"}, None),
    ({"Authorization": ""}, None),
    ({"X-Api-Key": ""}, None),
    ({"X-Api-Key": "   "}, None),
    ({}, None),
]


def asgi_headers(headers: dict[str, str]) -> dict[bytes, bytes]:
    """As /v1 holds them: ASGI's lower-case byte names."""
    return {k.lower().encode(): v.encode("latin-1") for k, v in headers.items()}


def django_headers(headers: dict[str, str]) -> HttpHeaders:
    """As a Django view sees them: request.headers, built from META."""
    meta = {"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()}
    return HttpHeaders(meta)


@pytest.mark.parametrize(("headers", "expected"), HEADER_CASES)
def test_the_key_is_read_from_the_same_headers_in_both_header_styles(headers, expected):
    assert authn.secret_from_asgi(asgi_headers(headers)) == expected
    assert authn.secret_from_django(django_headers(headers)) == expected


def test_django_header_names_are_case_insensitive():
    meta = {"HTTP_X_API_KEY": "sk-tp-3"}
    assert authn.secret_from_django(HttpHeaders(meta)) == "sk-tp-3"
    assert authn.secret_from_django({"Api-Key": "sk-tp-4"}) == "sk-tp-4"


# --- the decision table -----------------------------------------------------------------------

PAST = time.time() - 60
FUTURE = time.time() + 3600

DECISIONS = [
    # (key: None = no key has the secret, client ip, expected code or None)
    pytest.param(None, "10.0.0.1", "invalid_api_key", id="unknown"),
    pytest.param(snapshot(), "10.0.0.1", None, id="ok"),
    pytest.param(snapshot(expires_at=FUTURE), "10.0.0.1", None, id="ok-expires-later"),
    pytest.param(snapshot(key_active=False), "10.0.0.1", "api_key_disabled", id="key-disabled"),
    pytest.param(snapshot(tenant_active=False), "10.0.0.1", "tenant_disabled",
                 id="tenant-disabled"),
    pytest.param(snapshot(key_active=False, tenant_active=False), "10.0.0.1",
                 "api_key_disabled", id="both-disabled:key-first"),
    pytest.param(snapshot(allowed_ips=("192.168.0.0/16",)), "10.0.0.1", "ip_not_allowed",
                 id="ip-not-allowed"),
    pytest.param(snapshot(allowed_ips=("10.0.0.0/8",)), "10.0.0.1", None, id="ip-allowed"),
    pytest.param(snapshot(expires_at=PAST), "10.0.0.1", "api_key_expired", id="expired"),
    pytest.param(snapshot(key_active=False, expires_at=PAST), "10.0.0.1",
                 "api_key_disabled", id="disabled-before-expired"),
    pytest.param(snapshot(tenant_active=False, allowed_ips=("192.168.0.0/16",)), "10.0.0.1",
                 "tenant_disabled", id="tenant-disabled-before-ip"),
    pytest.param(snapshot(allowed_ips=("192.168.0.0/16",), expires_at=PAST), "10.0.0.1",
                 "ip_not_allowed", id="ip-before-expired"),
]

STATUS = {"invalid_api_key": 401, "missing_api_key": 401, "api_key_expired": 401,
          "api_key_disabled": 403, "tenant_disabled": 403, "ip_not_allowed": 403}


@pytest.mark.parametrize(("key", "ip", "code"), DECISIONS)
def test_the_decision_table(key, ip, code):
    refused = authn.refusal(key, ip)
    if code is None:
        assert refused is None
    else:
        assert refused is not None
        assert (refused.code, refused.status) == (code, STATUS[code])
        assert refused.message


def test_every_refusal_has_its_status_and_a_message():
    for refused in (authn.MISSING, authn.INVALID, authn.KEY_DISABLED, authn.TENANT_DISABLED,
                    authn.EXPIRED, authn.ip_not_allowed("10.0.0.1")):
        assert refused.status == STATUS[refused.code] and refused.message
    assert "10.0.0.1" in authn.ip_not_allowed("10.0.0.1").message


def test_expiry_is_decided_against_the_given_time():
    key = snapshot(expires_at=1000.0)
    assert authn.refusal(key, None, now=999.0) is None
    assert authn.refusal(key, None, now=1000.0) is authn.EXPIRED


# --- check 2: the IP allow-list -------------------------------------------------------------

@pytest.mark.parametrize(("allowed", "ip", "ok"), [
    ((), "203.0.113.9", True),  # no list: anywhere
    ((), None, True),
    (("10.0.0.0/8",), "10.2.3.4", True),
    (("10.0.0.0/8",), "11.2.3.4", False),
    (("10.0.0.0/8",), "::ffff:10.2.3.4", True),  # an IPv4 client on a dual-stack socket
    (("2001:db8::/32",), "2001:db8::1", True),
    (("192.168.1.7",), "192.168.1.7", True),  # a bare address is a /32
    (("not-an-ip", "192.168.1.7"), "192.168.1.7", True),  # a bad entry is skipped
    (("10.0.0.0/8",), None, False),  # no address to check: refused
    (("10.0.0.0/8",), "garbage", False),
])
def test_the_ip_allow_list(allowed, ip, ok):
    refused = authn.refusal(snapshot(allowed_ips=allowed), ip)
    if ok:
        assert refused is None
    else:
        assert refused is not None
        assert refused.code == "ip_not_allowed" and refused.status == 403


# --- /v1: the same decisions, as OpenAI errors, from the snapshot cache -----------------------

SECRET = "sk-tp-fast-auth-secret-0001"


def context(headers: dict[str, str], ip: str = "10.0.0.1") -> RelayContext:
    scope = {"headers": list(asgi_headers(headers).items()), "client": (ip, 50000)}
    return RelayContext.start(scope, "chat/completions")


@pytest.fixture
def cached(monkeypatch: pytest.MonkeyPatch):
    """/v1's snapshot lookup, answered from a dict: no Redis, no SQL."""
    known: dict[str, KeySnapshot] = {}

    async def lookup(secret_hash: str) -> KeySnapshot | None:
        return known.get(secret_hash)

    monkeypatch.setattr(pipeline, "aget_key_snapshot", lookup)
    return known


@pytest.mark.parametrize("header", ["Authorization", "X-Api-Key", "Api-Key"])
@pytest.mark.parametrize(("key", "ip", "code"), DECISIONS)
async def test_v1_answers_the_decision_table_as_openai_errors(cached, header, key, ip, code):
    if key is not None:
        cached[hash_secret(SECRET)] = key
    value = f"Bearer {SECRET}" if header == "Authorization" else SECRET
    ctx = context({header: value}, ip)
    if code is None:
        assert await pipeline.authenticate(ctx) is key
        assert ctx.key is key
        return
    with pytest.raises(GatewayError) as refused:
        await pipeline.authenticate(ctx)
    error = refused.value.body()["error"]
    assert (refused.value.status, error["code"]) == (STATUS[code], code)
    assert error["type"] == ("authentication_error" if STATUS[code] == 401
                             else "permission_error")
    assert ctx.key is key  # a known key is on the usage row even when refused


async def test_v1_without_a_key_is_missing_api_key(cached):
    with pytest.raises(GatewayError) as refused:
        await pipeline.authenticate(context({"Authorization": "Bearer"}))
    assert (refused.value.status, refused.value.code) == (401, "missing_api_key")
    assert refused.value.type == "authentication_error"
