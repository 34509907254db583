"""Who may call each operations-API endpoint. The endpoints are read from the OpenAPI
document the code generates (plus the schema and docs pages), so an endpoint added later is
checked too: nobody but staff gets in, and a refused write changes nothing."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client
from drf_spectacular.generators import SchemaGenerator

from billing.models import LedgerEntry, ModelPrice, RedemptionCode
from gateway.models import Credential, ModelRule, Upstream
from keys.models import AccessToken, ApiKey, Group, Membership, Tenant
from tests.portal.ops_helpers import Callers, make_callers, make_rows

pytestmark = pytest.mark.django_db

UNSAFE = {"post", "put", "patch", "delete"}
# Served outside the generated document: the API root, the schema and its docs pages.
EXTRA = [("get", "/api/ops/"), ("get", "/api/ops/schema/"), ("get", "/api/ops/docs/"),
         ("get", "/api/ops/redoc/")]


def _operations() -> list[tuple[str, str]]:
    paths = SchemaGenerator().get_schema(request=None, public=True)["paths"]
    found = [(method, path) for path, ops in paths.items() for method in ops
             if method in {"get", *UNSAFE}]
    return sorted(found) + EXTRA


OPERATIONS = _operations()


def test_the_document_lists_every_resource_of_the_issue() -> None:
    resources = {path.split("/")[3] for _, path in OPERATIONS if path.count("/") > 3}
    assert resources >= {"tenants", "members", "groups", "keys", "upstreams", "credentials",
                         "prices", "model-rules", "redemption-batches", "redemption-codes",
                         "usage", "ledger", "upstream-health", "tokens"}
    assert ("post", "/api/ops/ledger/topup/") in OPERATIONS
    assert ("post", "/api/ops/upstreams/{id}/test/") in OPERATIONS


@pytest.fixture
def callers() -> Callers:
    return make_callers()


def _url(path: str, rows: dict[str, Any]) -> str:
    resource = path.split("/")[3]
    return re.sub(r"\{id\}", lambda _: str(rows[resource].pk), path)


def _state() -> list[Any]:
    """What a refused write must leave as it was."""
    return [
        sorted(Tenant.objects.values_list("id", "name", "status", "balance")),
        sorted(ApiKey.objects.values_list("id", "status", "name", "expires_at")),
        sorted(Group.objects.values_list("id", "name", "rpm")),
        sorted(Membership.objects.values_list("id", "role")),
        sorted(Upstream.objects.values_list("id", "status", "health_checked_at")),
        sorted(Credential.objects.values_list("id", "secret_encrypted")),
        sorted(ModelPrice.objects.values_list("id", "input_per_million")),
        sorted(ModelRule.objects.values_list("id", "enabled")),
        RedemptionCode.objects.count(), LedgerEntry.objects.count(),
        sorted(AccessToken.objects.values_list("id", "revoked_at")),
    ]


def _call(client: Client, method: str, url: str, headers: dict[str, str]) -> Any:
    return getattr(client, method)(url, data={}, content_type="application/json",
                                   headers=headers)


@pytest.mark.parametrize(("method", "path"), OPERATIONS,
                         ids=[f"{m.upper()} {p}" for m, p in OPERATIONS])
def test_only_staff_reach_the_endpoint(method: str, path: str, callers: Callers) -> None:
    rows = make_rows(callers.member_user)
    url = _url(path, rows)
    client = Client()
    before = _state()

    anonymous = _call(client, method, url, {})
    assert anonymous.status_code == 401, anonymous.content
    assert "WWW-Authenticate" in anonymous.headers
    bad = _call(client, method, url, {"Authorization": "Bearer tp_pat_" + "x" * 43})
    assert bad.status_code == 401

    for name in ("member_pat", "member_drf", "staff_plain"):
        refused = _call(client, method, url, getattr(callers, name))
        assert refused.status_code == 403, (name, refused.content)

    session = Client()
    session.force_login(callers.member_user)
    assert _call(session, method, url, {}).status_code == 403

    read_only = _call(client, method, url, callers.staff_read)
    if method in UNSAFE:
        assert read_only.status_code == 403, read_only.content
        assert "read-only" in read_only.json()["detail"]
        # A staff session must send the CSRF token with a write.
        staff_session = Client(enforce_csrf_checks=True)
        staff_session.force_login(callers.staff_user)
        assert _call(staff_session, method, url, {}).status_code == 403
        assert _state() == before, "a refused write changed something"
    else:
        assert read_only.status_code == 200, read_only.content

    allowed = _call(client, method, url, callers.staff_write)
    assert allowed.status_code not in (401, 403), allowed.content
    assert allowed.status_code < 500
    if method == "get":
        assert allowed.status_code == 200
        assert _call(client, method, url, callers.staff_drf).status_code == 200
        staff_session = Client()
        staff_session.force_login(callers.staff_user)
        assert _call(staff_session, method, url, {}).status_code == 200


def test_a_staff_token_of_a_user_no_longer_staff_is_refused(callers: Callers) -> None:
    callers.staff_user.is_staff = False
    callers.staff_user.save()
    response = Client().get("/api/ops/tenants/", headers=callers.staff_write)
    assert response.status_code == 403
    assert "staff" in response.json()["detail"]


def test_the_browsable_api_renders_for_a_staff_session(callers: Callers) -> None:
    make_rows(callers.member_user)
    client = Client()
    client.force_login(callers.staff_user)
    response = client.get("/api/ops/keys/", headers={"Accept": "text/html"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert "ci key" in response.content.decode()
