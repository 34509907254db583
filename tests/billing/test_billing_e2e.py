"""Money through real gateways: reservations under parallel load, charges and the ledger,
streams cut short, the operator CLI, and usage kept while the database is away."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from decimal import Decimal
from io import StringIO

import httpx
import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from billing.models import LedgerEntry, ModelPrice, UsageLog
from billing.services import tenant_topup
from billing.tokens import count_tokens
from keys.models import Tenant
from portal.infra import rediskeys
from portal.infra.redis import sync_redis
from tests.conftest import gateway_env, wait_for_usage
from tests.servers import TcpProxy, database_url, start_gateway, stop, terminate_backends

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]
needs_redis = pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="uses Redis")
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def burst(urls: list[str], secret: str, count: int) -> Counter[str]:
    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=count + 10)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            return await asyncio.gather(*(
                client.post(urls[i % len(urls)] + "/chat/completions", json=CHAT,
                            headers={"Authorization": f"Bearer {secret}"})
                for i in range(count)))

    return Counter("ok" if r.status_code == 200 else r.json()["error"]["code"]
                   for r in asyncio.run(run()))


def wait_until(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@needs_redis
def test_64_parallel_requests_against_a_balance_for_20_let_exactly_20_through(
        gateway, gateway_default_ttl, upstream, make_key):
    ModelPrice.objects.create(model="gpt-4o-mini", per_request=Decimal("0.25"))
    made = make_key()
    tenant_topup(tenant=made.key.tenant, amount=Decimal("5"))
    result = burst([gateway.base_url, gateway_default_ttl.base_url], made.secret, 64)
    assert result == Counter({"ok": 20, "quota_exceeded": 44})
    wait_until(lambda: UsageLog.objects.filter(cost__gt=0).count() == 20)
    tenant = Tenant.objects.get(pk=made.key.tenant_id)
    assert tenant.balance == Decimal("0")
    call_command("billing", "check", stdout=StringIO())  # balance == ledger


def test_every_charge_is_in_the_ledger_once(gateway, upstream, make_key):
    ModelPrice.objects.create(model="gpt-4o-mini", input_per_million=Decimal("1000000"),
                              output_per_million=Decimal("1000000"))
    made = make_key()
    tenant_topup(tenant=made.key.tenant, amount=Decimal("100"))
    ids = [httpx.post(gateway.base_url + "/chat/completions", json={**CHAT, "max_tokens": 5},
                      headers={"Authorization": f"Bearer {made.secret}"}).headers["x-request-id"]
           for _ in range(5)]
    rows = [wait_for_usage(i) for i in ids]
    assert all(r.cost == Decimal("4") for r in rows)  # 1 input + 3 output tokens at 1 each
    wait_until(lambda: LedgerEntry.objects.filter(kind="charge").count() >= 1)
    charged = sum(e.amount for e in LedgerEntry.objects.filter(kind="charge"))
    assert charged == Decimal("-20")
    tenant = Tenant.objects.get(pk=made.key.tenant_id)
    assert tenant.balance == Decimal("80")
    call_command("billing", "check", stdout=StringIO())


def test_billing_check_names_a_tenant_whose_balance_left_its_ledger(tenant):
    tenant_topup(tenant=tenant, amount=Decimal("10"))
    call_command("billing", "check", stdout=StringIO())
    Tenant.objects.filter(pk=tenant.pk).update(balance=Decimal("11"))
    err = StringIO()
    with pytest.raises(CommandError, match="acme"):
        call_command("billing", "check", stdout=StringIO(), stderr=err)
    assert "balance 11" in err.getvalue()


def test_a_client_that_leaves_is_charged_for_what_was_generated(gateway, upstream, make_key,
                                                                 fake_upstream):
    ModelPrice.objects.create(model="gpt-4o-mini", output_per_million=Decimal("1000000"))
    made = make_key()
    tenant_topup(tenant=made.key.tenant, amount=Decimal("1000"))
    body = {**CHAT, "stream": True, "max_tokens": 100, "messages": [
        {"role": "user", "content": "[[fake chunks=40 delay=0.1 usage=0]]"}]}
    with httpx.stream("POST", gateway.base_url + "/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {made.secret}"}) as resp:
        request_id = resp.headers["x-request-id"]
        seen = 0
        for line in resp.iter_lines():
            seen += line.count("tok")
            if seen >= 5:
                break
    row = wait_for_usage(request_id)
    assert row.estimated and row.error_code == "client_disconnected"
    assert 5 <= row.output_tokens < 40  # what was relayed before the client left
    assert row.input_tokens > 0
    assert row.cost == Decimal(row.output_tokens)


def test_a_stream_cut_without_usage_is_counted_and_marked_estimated(gateway, upstream,
                                                                     api_key):
    body = {"model": "gpt-5", "stream": True,
            "input": "[[fake chunks=6 cut=3 usage=0]] please count"}
    resp = httpx.post(gateway.base_url + "/responses", json=body,
                      headers={"Authorization": f"Bearer {api_key.secret}"})
    row = wait_for_usage(resp.headers["x-request-id"])
    assert row.estimated and row.error_code == "upstream_stream_cut"
    assert row.output_tokens == count_tokens("tok0 tok1 tok2 ") == 7
    assert row.input_tokens > 0


def test_usage_reported_by_the_upstream_is_not_estimated(gateway, upstream, api_key):
    resp = httpx.post(gateway.base_url + "/chat/completions", json=CHAT,
                      headers={"Authorization": f"Bearer {api_key.secret}"})
    assert not wait_for_usage(resp.headers["x-request-id"]).estimated


def test_tenant_cli_shows_money_and_tops_up(tenant):
    out = StringIO()
    call_command("tenant", "topup", "acme", "12.5", "--note", "invoice 7", stdout=out)
    assert "balance 12.500000" in out.getvalue()
    out = StringIO()
    call_command("tenant", "show", "acme", "--json", stdout=out)
    info = json.loads(out.getvalue())
    assert info["balance"] == "12.500000" and info["ledger_total"] == "12.500000"
    assert info["reserved"] == "0"
    with pytest.raises(CommandError):
        call_command("tenant", "topup", "acme", "lots")
    with pytest.raises(CommandError, match="No tenant"):
        call_command("tenant", "show", "nobody")


def test_price_cli_sets_and_lists_prices():
    out = StringIO()
    call_command("price", "set", "gpt-5*", "--input", "1.25", "--cached", "0.125",
                 "--output", "10", stdout=out)
    call_command("price", "set", "gpt-5*", "--per-request", "0.001", stdout=out)
    price = ModelPrice.objects.get(model="gpt-5*")
    assert (price.input_per_million, price.cached_input_per_million, price.output_per_million,
            price.reasoning_per_million, price.per_request) == (
        Decimal("1.25"), Decimal("0.125"), Decimal("10"), None, Decimal("0.001"))
    out = StringIO()
    call_command("price", "list", "--json", stdout=out)
    assert json.loads(out.getvalue())[0]["input"] == "1.250000"
    with pytest.raises(CommandError):
        call_command("price", "set", "x", "--input", "-1")


@needs_redis
def test_usage_is_kept_in_redis_while_the_database_is_unreachable(upstream, make_key):
    ModelPrice.objects.create(model="gpt-4o-mini", per_request=Decimal("1"))
    made = make_key()
    tenant_topup(tenant=made.key.tenant, amount=Decimal("100"))
    settings_dict = dict(connection.settings_dict)
    proxy = TcpProxy(int(settings_dict.get("PORT") or 5432))
    settings_dict.update(HOST="127.0.0.1", PORT=proxy.port)
    # Its own Redis prefix, so only this gateway can drain its spool (the session's other
    # gateways would, correctly, write the rows at once: their database is reachable).
    prefix = settings.GATEWAY_REDIS_PREFIX + "spooltest:"
    gw = start_gateway(gateway_env(DATABASE_URL=database_url(settings_dict),
                                   GATEWAY_REDIS_PREFIX=prefix,
                                   GATEWAY_USAGE_FLUSH_INTERVAL="0.1"))
    try:
        headers = {"Authorization": f"Bearer {made.secret}"}
        url = gw.base_url + "/chat/completions"
        wait_for_usage(httpx.post(url, json=CHAT, headers=headers).headers["x-request-id"])
        proxy.pause()  # the database is gone; the key is cached, so requests still work
        ids = [httpx.post(url, json=CHAT, headers=headers).headers["x-request-id"]
               for _ in range(4)]
        spool = rediskeys.journal(rediskeys.group_of(made.key.tenant_id), prefix=prefix)
        wait_until(lambda: sync_redis().llen(spool) > 0)
        assert not UsageLog.objects.filter(request_id__in=ids).exists()
        proxy.resume()
        wait_until(lambda: UsageLog.objects.filter(request_id__in=ids).count() == 4, 20)
        assert sync_redis().llen(spool) == 0
        tenant = Tenant.objects.get(pk=made.key.tenant_id)
        assert tenant.balance == Decimal("95")  # five requests, each charged once
        call_command("billing", "check", stdout=StringIO())
    finally:
        stop(gw.proc)
        proxy.pause()
        terminate_backends(proxy)
