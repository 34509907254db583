"""schemathesis against the tenant API's own OpenAPI schema, in process through the WSGI app
(same database transaction as the test, real Django request handling): for inputs
generated from the schema, valid and invalid, with a read-write token of a tenant that has
keys, usage, members and invitations, no answer is a 5xx and every answer (status, content
type, body) is one the schema documents. Bounded: a few dozen examples per operation."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import schemathesis
from django.contrib.auth import get_user_model
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.utils import timezone
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from billing.models import UsageLog
from billing.services import tenant_topup
from gateway.services import upstream_create
from keys.models import Invitation, Membership, Tenant
from keys.services import key_create
from keys.tokens import token_create
from portal.tenant_api import api

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
EXAMPLES = 15


# The schema as the API serves it (GET /api/v1/openapi.json returns exactly this dict);
# requests go to Django's WSGI application in this process.
schema = schemathesis.openapi.from_dict(api.get_openapi_schema())
schema.app = get_wsgi_application()
schema.config.generation.update(max_examples=EXAMPLES, deterministic=True)


@pytest.fixture(autouse=True)
def _keep_the_test_transaction() -> Iterator[None]:
    """Django's WSGI handler closes the database connection after each request, which
    would end the test's transaction (Django's test client unhooks it the same way)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def write_token(db: Any) -> str:
    upstream_create(name="shared", kind="openai", base_url="http://127.0.0.1:9/v1",
                    models=["gpt-5", "gpt-4o-mini"], api_keys=["sk-x1"])
    tenant = Tenant.objects.create(name="acme")
    owner = get_user_model().objects.create_user("o", "owner@acme.example", "pw-12345!")
    Membership.objects.create(tenant=tenant, user=owner, role="owner")
    other = get_user_model().objects.create_user("m", "member@acme.example", "pw-12345!")
    Membership.objects.create(tenant=tenant, user=other, role="member")
    for n in range(3):
        made = key_create(tenant=tenant, name=f"key {n}", created_by=owner)
        UsageLog.objects.create(tenant=tenant, key=made.key, key_prefix=made.key.prefix,
                                request_id=f"req-{n}", endpoint="responses", model="gpt-5",
                                created_at=timezone.now() - timedelta(minutes=n),
                                status_code=200, cost=Decimal("0.1"))
    Invitation.objects.create(tenant=tenant, email="new@acme.example", invited_by=owner)
    tenant_topup(tenant=tenant, amount=Decimal("10"))
    return token_create(user=owner, name="fuzz", scope="write", tenant=tenant).secret


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_5xx_and_every_answer_matches_the_schema(case: Any, write_token: str) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {write_token}"},
                           checks=CHECKS)
