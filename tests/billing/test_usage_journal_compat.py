"""A usage row journalled in Redis by the previous release (before the row was defined once,
in billing.usagerow) is written and charged by this one: a rolling upgrade loses no row
waiting in the journal."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from billing.models import LedgerEntry, UsageLog
from billing.services import tenant_topup
from billing.usage import drain_spool
from gateway.services import upstream_create
from keys.models import Tenant
from keys.services import key_create, tenant_get_or_create
from portal.infra import rediskeys
from portal.infra.redis import sync_redis
from tests.fast.test_usage_row import OLD_JOURNAL_ROWS

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="the journal is in Redis"),
]


@pytest.fixture
def own_prefix(settings: Any) -> Iterator[str]:
    """A Redis prefix of this test's own: a gateway process left running by another test
    drains the run's usual journal, and must not take these rows."""
    settings.GATEWAY_REDIS_PREFIX = f"tp-test-{uuid.uuid4().hex[:8]}:"
    yield settings.GATEWAY_REDIS_PREFIX
    client = sync_redis()
    assert client is not None
    for name in client.scan_iter(match=settings.GATEWAY_REDIS_PREFIX + "*"):
        client.delete(name)


def test_rows_journalled_by_the_previous_release_are_written_and_charged(own_prefix):
    tenant = tenant_get_or_create(name="acme")[0]
    tenant_topup(tenant=tenant, amount=Decimal("1"))
    key = key_create(tenant=tenant, name="old").key
    up = upstream_create(name="old-up", kind="openai", base_url="http://127.0.0.1:9/v1",
                         models=["gpt-5-mini"], api_keys=["sk-upstream-old"])
    credential = up.credentials.get()
    # The captured bytes name ids 11 (key), 7 (tenant), 3 (upstream), 4 (credential): point
    # them at this database's rows, leaving every other byte as the old release wrote it.
    first = (OLD_JOURNAL_ROWS[0]
             .replace(b'"key_id":11', f'"key_id":{key.pk}'.encode())
             .replace(b'"tenant_id":7', f'"tenant_id":{tenant.pk}'.encode())
             .replace(b'"upstream_id":3,"credential_id":4,"error_code"',
                      f'"upstream_id":{up.pk},"credential_id":{credential.pk},'
                      '"error_code"'.encode()))
    client = sync_redis()
    assert client is not None
    # Where the release before the hash tags kept its journal.
    client.rpush(rediskeys.legacy_journal(), first, OLD_JOURNAL_ROWS[1])

    assert drain_spool() == 2

    row = UsageLog.objects.get(request_id="req_old_journal_1")
    assert (row.key_id, row.tenant_id, row.upstream_id, row.credential_id) == (
        key.pk, tenant.pk, up.pk, credential.pk)
    assert (row.endpoint, row.status_code, row.model, row.stream) == (
        "chat/completions", 200, "gpt-5-mini", True)
    assert (row.input_tokens, row.cached_tokens, row.output_tokens, row.reasoning_tokens) == (
        120, 20, 30, 5)
    assert (row.cost, row.latency_ms, row.ttfb_ms) == (Decimal("0.000420"), 812, 95)
    assert (row.client_ip, row.user_agent) == ("203.0.113.9", "codex_cli_rs/0.1 (Linux) ünï")
    assert row.attempts == [{"upstream_id": 3, "credential_id": 4, "status": 200,
                             "error": "", "ms": 800}]
    assert row.created_at.isoformat() == "2025-06-02T10:00:00.123456+00:00"
    assert row.client_request_id == ""  # added since: the old row's default
    refused = UsageLog.objects.get(request_id="req_old_journal_2")
    assert (refused.status_code, refused.key_id, refused.ttfb_ms, refused.cost) == (
        401, None, None, Decimal(0))
    # Charged once, like any journalled row.
    assert Tenant.objects.get(pk=tenant.pk).balance == Decimal("0.999580")
    assert LedgerEntry.objects.filter(tenant=tenant, kind="charge").count() == 1
    assert client.llen(rediskeys.legacy_journal()) == 0


def test_the_journal_kept_under_the_names_before_the_hash_tags_is_drained(own_prefix):
    """An upgrade to the tagged names (Redis Cluster) strands nothing: rows waiting in
    ``usage:spool`` and in a batch a writer of the old release claimed (``usage:claims``)
    are written, charged once, and their unposted costs under the old names dropped."""
    from django.utils import timezone

    from billing.usage import encode_row
    from billing.usagerow import UsageEvent

    tenant = tenant_get_or_create(name="upgrading")[0]
    tenant_topup(tenant=tenant, amount=Decimal("10"))
    key = key_create(tenant=tenant, name="k").key

    def row(n: int) -> bytes:
        return encode_row(UsageEvent(
            created_at=timezone.now(), request_id=f"req-upgrade-{n}", endpoint="chat",
            status_code=200, key_id=key.pk, key_prefix=key.prefix, tenant_id=tenant.pk,
            model="gpt-5", cost=Decimal("1")))

    client = sync_redis()
    assert client is not None
    client.rpush(rediskeys.legacy_journal(), row(1), row(2))
    # A batch an old writer claimed and never released (it stopped), long ago.
    client.rpush(rediskeys.legacy_claim_prefix() + "old-claim", row(3))
    client.zadd(rediskeys.legacy_claims(), {"old-claim": 1})
    for n in (1, 2, 3):
        client.hset(rediskeys.legacy_unposted("tenant", tenant.pk), f"req-upgrade-{n}", 10**6)
        client.hset(rediskeys.legacy_unposted("key", key.pk), f"req-upgrade-{n}", 10**6)

    assert drain_spool() == 3

    assert set(UsageLog.objects.values_list("request_id", flat=True)) == {
        "req-upgrade-1", "req-upgrade-2", "req-upgrade-3"}
    assert Tenant.objects.get(pk=tenant.pk).balance == Decimal("7")
    assert client.llen(rediskeys.legacy_journal()) == 0
    assert client.zcard(rediskeys.legacy_claims()) == 0
    assert not client.exists(rediskeys.legacy_unposted("tenant", tenant.pk))
    assert not client.exists(rediskeys.legacy_unposted("key", key.pk))
    assert drain_spool() == 0


async def test_an_account_reloading_after_the_upgrade_subtracts_the_old_unposted_costs(
        own_prefix):
    """A settled request whose row waits under the old names: the database does not know
    its cost yet, so the reloaded account must not offer that money again."""
    from asgiref.sync import sync_to_async

    from keys.limits import RedisLimiter

    client = sync_redis()
    assert client is not None
    await sync_to_async(client.hset)(rediskeys.legacy_unposted("tenant", 7), "req-old", 300)
    limiter = RedisLimiter()
    await limiter.init_account("tenant", 7, 1000)
    assert await sync_to_async(limiter.available)("tenant", 7) == 700
