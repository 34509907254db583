"""Rows and credentials shared by the operations-API tests."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.utils import timezone
from rest_framework.authtoken.models import Token

from billing.models import ModelPrice, RedemptionCode, UsageLog, UsageRollup
from billing.redemption import redeem_create
from billing.services import tenant_topup
from gateway.models import ModelRule
from gateway.services import credential_add, upstream_create
from keys.models import Group, Membership
from keys.services import key_create, tenant_create
from keys.tokens import token_create

UPSTREAM_PLAINTEXT = "sk-live-ops-upstream-plaintext-4Kq9"


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@dataclass
class Callers:
    """Every kind of caller the API must tell apart, as request headers."""

    staff_write: dict[str, str]  # a staff user's read-write staff token
    staff_read: dict[str, str]  # a staff user's read-only staff token
    staff_plain: dict[str, str]  # a staff user's token without staff rights
    staff_drf: dict[str, str]  # a staff user's DRF token
    member_pat: dict[str, str]  # a non-staff user's read-write token
    member_drf: dict[str, str]  # a non-staff user's DRF token
    staff_user: Any
    member_user: Any


def make_callers() -> Callers:
    users = get_user_model().objects
    staff = users.create_user("opsstaff", "ops@example.com", "pw", is_staff=True)
    member = users.create_user("member", "member@example.com", "pw")
    return Callers(
        staff_write=bearer(token_create(user=staff, name="w", scope="write",
                                        staff=True).secret),
        staff_read=bearer(token_create(user=staff, name="r", scope="read",
                                       staff=True).secret),
        staff_plain=bearer(token_create(user=staff, name="p", scope="write").secret),
        staff_drf={"Authorization": f"Token {Token.objects.create(user=staff).key}"},
        member_pat=bearer(token_create(user=member, name="m", scope="write").secret),
        member_drf={"Authorization": f"Token {Token.objects.create(user=member).key}"},
        staff_user=staff, member_user=member,
    )


def make_rows(owner: Any) -> dict[str, Any]:
    """One row of everything the API serves, made through the services. Keys of the
    answer are the first path segment after /api/ops/."""
    group = Group.objects.create(name="pro", allowed_models=["gpt-5*"], rpm=60)
    tenant = tenant_create(name="acme", group=group)
    membership = Membership.objects.create(tenant=tenant, user=owner,
                                           role=Membership.Role.OWNER)
    made = key_create(tenant=tenant, name="ci key", models=["gpt-5"], quota=Decimal("3"))
    upstream = upstream_create(name="main", kind="openai", base_url="http://127.0.0.1:9/v1",
                               models=["gpt-5"])
    credential = credential_add(upstream=upstream, secret=UPSTREAM_PLAINTEXT, name="primary")
    price = ModelPrice.objects.create(model="gpt-5*", input_per_million=Decimal("1.25"),
                                      output_per_million=Decimal("10"))
    rule = ModelRule.objects.create(model_pattern="gpt-5.4", force={"reasoning": {
        "effort": "xhigh"}}, drop=["top_p"])
    entry = tenant_topup(tenant=tenant, amount=Decimal("25"), note="welcome")
    redeem_create(amount=Decimal("5"), count=2, batch="launch")
    usage = UsageLog.objects.create(
        created_at=timezone.now(), request_id="req-ops-1", key=made.key,
        key_prefix=made.key.prefix, tenant=tenant, endpoint="chat", model="gpt-5",
        upstream=upstream, credential=credential, status_code=200, input_tokens=12,
        output_tokens=34, cost=Decimal("0.0012"), latency_ms=120, ttfb_ms=40)
    rollup = UsageRollup.objects.create(date=timezone.localdate(), tenant=tenant,
                                        key=made.key, model="gpt-5", requests=1)
    token = token_create(user=owner, name="someone's", scope="read").token
    return {
        "tenants": tenant, "groups": group, "members": membership, "keys": made.key,
        "tokens": token, "upstreams": upstream, "upstream-health": upstream,
        "credentials": credential, "prices": price, "model-rules": rule,
        "redemption-codes": RedemptionCode.objects.first(), "usage": usage,
        "usage-rollups": rollup, "ledger": entry, "secret": made.secret,
    }
