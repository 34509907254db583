"""GATEWAY_USAGE_SINK=redis: gateway processes only push usage batches to Redis, and
``manage.py usagewriter`` writes (and charges) them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from decimal import Decimal

import httpx
import pytest
from django.conf import settings

from billing.models import ModelPrice, UsageLog
from billing.services import tenant_topup
from keys.models import Tenant
from portal.infra import rediskeys
from portal.infra.redis import sync_redis
from tests.conftest import gateway_env
from tests.servers import ROOT, new_log, start_gateway, stop

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.e2e,
    pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="the sink is Redis"),
]
CHAT = {"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


def test_usage_pushed_to_redis_is_written_and_charged_by_the_usagewriter(upstream, make_key):
    ModelPrice.objects.create(model="gpt-4o-mini", per_request=Decimal("2"))
    made = make_key()
    tenant_topup(tenant=made.key.tenant, amount=Decimal("50"))
    prefix = settings.GATEWAY_REDIS_PREFIX + "sink:"
    env = gateway_env(GATEWAY_USAGE_SINK="redis", GATEWAY_REDIS_PREFIX=prefix,
                      GATEWAY_SNAPSHOT_TTL="0")
    gw = start_gateway(env)
    writer = None
    try:
        ids = [httpx.post(gw.base_url + "/chat/completions", json=CHAT, headers={
            "Authorization": f"Bearer {made.secret}"}).headers["x-request-id"] for _ in range(3)]
        spool = rediskeys.journal(rediskeys.group_of(made.key.tenant_id), prefix=prefix)
        deadline = time.monotonic() + 10
        while sync_redis().llen(spool) == 0:
            assert time.monotonic() < deadline, "nothing was pushed to Redis"
            time.sleep(0.05)
        time.sleep(0.5)
        assert not UsageLog.objects.filter(request_id__in=ids).exists()  # nobody wrote them
        with new_log("usagewriter").open("ab") as out:
            writer = subprocess.Popen(
                [sys.executable, "manage.py", "usagewriter"], cwd=ROOT,
                env={**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings", **env},
                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while UsageLog.objects.filter(request_id__in=ids).count() < 3:
            assert time.monotonic() < deadline, "the usagewriter wrote nothing"
            time.sleep(0.1)
        assert Tenant.objects.get(pk=made.key.tenant_id).balance == Decimal("44")
        writer.send_signal(signal.SIGTERM)
        assert writer.wait(timeout=10) == 0
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
        stop(gw.proc)
