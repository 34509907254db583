"""Balance (ledger, export, redeem, alert threshold), alerts by email, models and prices, the
cost endpoint, quickstart, playground, and the admin's operations overview."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client, override_settings
from django.utils import timezone

from billing import redemption, rollups
from billing.models import LedgerEntry, ModelPrice, UsageLog
from gateway.models import Credential, Upstream
from gateway.services import upstream_create
from keys.models import ApiKey, Group, Membership, Tenant
from keys.services import key_create
from portal import alerts
from portal.infra import rediskeys
from portal.infra.redis import sync_redis
from portal.tasks import alert_keys, alert_low_balance

pytestmark = pytest.mark.django_db

PAGES = ("/portal/balance/", "/portal/models/", "/portal/quickstart/", "/portal/playground/")


def user_in(tenant: Tenant, email: str, role: str = "member", staff: bool = False):
    user = get_user_model().objects.create_user(username=email, email=email,
                                                password="pw-12345!", is_staff=staff)
    Membership.objects.create(tenant=tenant, user=user, role=role)
    return user


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def entry(tenant: Tenant, kind: str = "topup", amount: str = "1", reference: str = "",
          note: str = "") -> LedgerEntry:
    """A ledger row without moving the balance (the page reads rows, not sums)."""
    return LedgerEntry.objects.create(tenant=tenant, kind=kind, amount=Decimal(amount),
                                      reference=reference, note=note)


def main(response) -> str:
    return response.content.decode().split("<main", 1)[1]


@pytest.fixture
def acme() -> Tenant:
    return Tenant.objects.create(name="acme", balance=Decimal("50"))


@pytest.fixture
def beta() -> Tenant:
    return Tenant.objects.create(name="beta", balance=Decimal("7"))


@pytest.fixture
def routes() -> Group:
    """A plan with a 2x multiplier over two upstreams (one dedicated to another plan), and
    prices for its models."""
    plan = Group.objects.create(name="pro", price_multiplier=Decimal("2"),
                                allowed_models=["gpt-5*", "claude-*"])
    Group.objects.create(name="vip", dedicated_upstreams=True)
    upstream_create(name="oa", kind="openai", base_url="http://127.0.0.1:9/v1",
                    models=["gpt-5", "gpt-5-mini", "o3"], api_keys=["sk-upstream-1234"])
    upstream_create(name="claude", kind="anthropic", base_url="http://127.0.0.1:9",
                    models=["claude-sonnet"], api_keys=["sk-upstream-5678"])
    upstream_create(name="vip-only", kind="openai", base_url="http://127.0.0.1:9/v1",
                    models=["gpt-5-secret"], groups="vip")
    ModelPrice.objects.create(model="gpt-5", input_per_million=Decimal("1.25"),
                              cached_input_per_million=Decimal("0.125"),
                              output_per_million=Decimal("10"))
    ModelPrice.objects.create(model="claude-*", input_per_million=Decimal("3"),
                              output_per_million=Decimal("15"), per_request=Decimal("0.001"))
    return plan


# --- every page, for a member --------------------------------------------------------------

def test_every_page_renders_for_a_member_with_no_inline_script(acme):
    client = client_for(user_in(acme, "m@acme.test"))
    for path in PAGES:
        page = client.get(path)
        assert page.status_code == 200, path
        html = page.content.decode()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), path  # CSP: no inline
        assert " style=" not in html and " onclick=" not in html, path
        assert client.get(path, HTTP_ACCEPT_LANGUAGE="zh-CN").status_code == 200, path
    assert Client().get("/portal/balance/").status_code == 302  # login first


def test_the_nav_links_the_four_pages(acme):
    page = client_for(user_in(acme, "m@acme.test")).get("/portal/")
    for path in PAGES:
        assert f'href="{path}"' in page.content.decode()


# --- balance and ledger --------------------------------------------------------------------

def test_balance_shows_the_balance_and_what_is_available(acme):
    client = client_for(user_in(acme, "m@acme.test"))
    assert "50" in main(client.get("/portal/balance/"))
    # 42.5 reserved-less
    sync_redis().hset(rediskeys.account("tenant", acme.pk), "avail", 42_500_000)
    page = main(client.get("/portal/balance/"))
    assert re.search(r'data-testid="available">42\.50<', page), page[:800]


def test_the_ledger_filters_by_kind_and_date(acme):
    client = client_for(user_in(acme, "m@acme.test"))
    entry(acme, "topup", "10", reference="first-topup")
    entry(acme, "charge", "-2", reference="batch-charge")
    old = entry(acme, "adjustment", "3", reference="old-adjust")
    LedgerEntry.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=40))
    page = main(client.get("/portal/balance/"))
    assert all(ref in page for ref in ("first-topup", "batch-charge", "old-adjust"))
    page = main(client.get("/portal/balance/?kind=charge"))
    assert "batch-charge" in page and "first-topup" not in page
    since = (timezone.localdate() - timedelta(days=7)).isoformat()
    page = main(client.get(f"/portal/balance/?from={since}"))
    assert "old-adjust" not in page and "first-topup" in page
    until = (timezone.localdate() - timedelta(days=30)).isoformat()
    page = main(client.get(f"/portal/balance/?to={until}"))
    assert "old-adjust" in page and "first-topup" not in page
    # htmx asks for the table alone.
    part = client.get("/portal/balance/?kind=charge", HTTP_HX_REQUEST="true")
    assert b"batch-charge" in part.content and b"<html" not in part.content
    assert "No ledger entries match" in main(client.get("/portal/balance/?kind=refund"))


def test_the_ledger_pages_by_keyset_without_gaps_or_repeats(acme):
    client = client_for(user_in(acme, "m@acme.test"))
    moment = timezone.now()
    rows = [LedgerEntry(tenant=acme, kind="charge", amount=Decimal("-1"), reference=f"r{i:03}")
            for i in range(120)]
    LedgerEntry.objects.bulk_create(rows)
    # Half of them share one timestamp: the id breaks the tie.
    LedgerEntry.objects.filter(reference__lt="r060").update(created_at=moment)
    seen: list[str] = []
    url = "/portal/balance/?kind=charge"
    pages = 0
    while url:
        page = main(client.get(url))
        seen += re.findall(r">(r\d{3})<", page)
        found = re.search(r'href="\?([^"]+)" rel="next"', page)
        url = "/portal/balance/?" + found.group(1).replace("&amp;", "&") if found else ""
        pages += 1
        if found:
            assert "kind=charge" in found.group(1)  # the filters travel with the cursor
    assert pages == 3
    assert sorted(seen) == [f"r{i:03}" for i in range(120)]
    assert client.get("/portal/balance/?after=garbage").status_code == 200


def test_another_tenants_ledger_never_shows(acme, beta):
    entry(acme, reference="acme-secret-topup")
    entry(beta, reference="beta-own-topup")
    client = client_for(user_in(beta, "b@beta.test", role="owner"))
    page = main(client.get("/portal/balance/"))
    assert "beta-own-topup" in page and "acme-secret-topup" not in page
    export = b"".join(client.get("/portal/balance/export.csv").streaming_content).decode()
    assert "beta-own-topup" in export and "acme-secret-topup" not in export
    # A cursor made from A's row does not reveal anything either.
    from portal.selectors.balance import encode_cursor

    cursor = encode_cursor(LedgerEntry.objects.get(reference="acme-secret-topup"))
    assert "acme-secret-topup" not in main(client.get(f"/portal/balance/?after={cursor}"))


def test_the_export_streams_the_whole_filtered_ledger_as_csv(acme):
    client = client_for(user_in(acme, "m@acme.test"))
    LedgerEntry.objects.bulk_create([LedgerEntry(tenant=acme, kind="charge",
                                                 amount=Decimal("-0.5"), reference=f"c{i}")
                                     for i in range(130)])
    entry(acme, "topup", "5", reference="top", note="=HYPERLINK(\"http://evil\")")
    response = client.get("/portal/balance/export.csv?kind=charge")
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0] == ["created_at", "kind", "amount", "reference", "note"]
    assert len(rows) == 131  # every matching row, not one page
    assert {r[1] for r in rows[1:]} == {"charge"} and rows[1][2] == "-0.500000"
    everything = b"".join(client.get("/portal/balance/export.csv").streaming_content).decode()
    assert "'=HYPERLINK" in everything  # a formula is neutralised for spreadsheets


# --- redeem ----------------------------------------------------------------------------------

def test_a_member_cannot_redeem_an_owner_or_admin_can(acme):
    code = redemption.redeem_create(amount=Decimal("25"), count=1)[0]
    member = client_for(user_in(acme, "m@acme.test"))
    assert b'name="code"' not in member.get("/portal/balance/").content
    assert member.post("/portal/balance/redeem/", {"code": code}).status_code == 403
    acme.refresh_from_db()
    assert acme.balance == Decimal("50")
    admin = client_for(user_in(acme, "a@acme.test", role="admin"))
    assert b'name="code"' in admin.get("/portal/balance/").content
    page = admin.post("/portal/balance/redeem/", {"code": code.lower()}, follow=True)
    assert "Code redeemed: 25" in page.content.decode()
    acme.refresh_from_db()
    assert acme.balance == Decimal("75")
    assert LedgerEntry.objects.filter(tenant=acme, kind="redemption",
                                      amount=Decimal("25")).exists()


def test_redeem_errors_are_shown_clearly(acme, beta):
    client = client_for(user_in(acme, "o@acme.test", role="owner"))

    def message(code: str) -> str:
        return main(client.post("/portal/balance/redeem/", {"code": code}, follow=True))

    assert "not a valid redemption code" in message("hello")
    assert "not a valid redemption code" in message("tp-rc-" + "A" * 24)  # no such code
    used = redemption.redeem_create(amount=Decimal("1"), count=1)[0]
    redemption.redeem(code=used, tenant=beta)
    assert "already been used" in message(used)
    expired = redemption.redeem_create(amount=Decimal("1"), count=1,
                                       expires_at=timezone.now() + timedelta(seconds=1))[0]
    from billing.models import RedemptionCode

    RedemptionCode.objects.filter(redeemed_at__isnull=True).update(
        expires_at=timezone.now() - timedelta(days=1))
    assert "has expired" in message(expired)
    assert "Enter a redemption code" in message("  ")
    acme.refresh_from_db()
    assert acme.balance == Decimal("50")
    assert client.get("/portal/balance/redeem/").status_code == 405


def test_only_owners_set_the_low_balance_threshold(acme):
    admin = client_for(user_in(acme, "a@acme.test", role="admin"))
    assert admin.post("/portal/balance/alert/", {"threshold": "5"}).status_code == 403
    owner = client_for(user_in(acme, "o@acme.test", role="owner"))
    assert owner.post("/portal/balance/alert/", {"threshold": "12.5"}).status_code == 302
    acme.refresh_from_db()
    assert acme.low_balance_threshold == Decimal("12.5")
    assert "must be a positive amount" in main(owner.post("/portal/balance/alert/",
                                                          {"threshold": "-1"}, follow=True))
    owner.post("/portal/balance/alert/", {"threshold": ""})
    acme.refresh_from_db()
    assert acme.low_balance_threshold is None


# --- alerts ---------------------------------------------------------------------------------

def test_the_low_balance_alert_is_sent_once_per_crossing(acme):
    user_in(acme, "owner@acme.test", role="owner")
    user_in(acme, "admin@acme.test", role="admin")
    user_in(acme, "member@acme.test", role="member")
    Tenant.objects.filter(pk=acme.pk).update(low_balance_threshold=Decimal("10"))
    assert alert_low_balance() == 0 and not mail.outbox  # 50 is above 10

    Tenant.objects.filter(pk=acme.pk).update(balance=Decimal("4"))
    assert alert_low_balance.delay().get() == 2
    assert sorted(m.to[0] for m in mail.outbox) == ["admin@acme.test", "owner@acme.test"]
    assert "Low balance for acme" in mail.outbox[0].subject
    assert "/portal/balance/" in mail.outbox[0].body and "4" in mail.outbox[0].body
    assert alert_low_balance() == 0 and len(mail.outbox) == 2  # once per crossing

    Tenant.objects.filter(pk=acme.pk).update(balance=Decimal("30"))  # back above: re-armed
    assert alert_low_balance() == 0
    assert not Tenant.objects.get(pk=acme.pk).low_balance_alerted
    Tenant.objects.filter(pk=acme.pk).update(balance=Decimal("3"))  # crosses again
    assert alert_low_balance() == 2 and len(mail.outbox) == 4


def test_the_low_balance_alert_uses_the_available_balance(acme):
    user_in(acme, "owner@acme.test", role="owner")
    Tenant.objects.filter(pk=acme.pk).update(low_balance_threshold=Decimal("10"))
    # The balance is 50, but requests in flight hold 45 of it.
    sync_redis().hset(rediskeys.account("tenant", acme.pk), "avail", 5_000_000)
    assert alert_low_balance() == 1


def test_key_expiry_and_quota_emails_are_sent_once_and_rearmed(acme):
    user_in(acme, "owner@acme.test", role="owner")
    maker = user_in(acme, "maker@acme.test", role="member")
    soon = key_create(tenant=acme, name="soon", created_by=maker,
                      expires_at=timezone.now() + timedelta(days=2)).key
    key_create(tenant=acme, name="later", expires_at=timezone.now() + timedelta(days=30))
    spender = key_create(tenant=acme, name="spender", quota=Decimal("10")).key
    ApiKey.objects.filter(pk=spender.pk).update(quota_used=Decimal("9.5"))
    key_create(tenant=acme, name="thrifty", quota=Decimal("10"))

    assert alert_keys() == {"expiry": 2, "quota": 1}
    expiry = [m for m in mail.outbox if "expires soon" in m.subject]
    assert sorted(m.to[0] for m in expiry) == ["maker@acme.test", "owner@acme.test"]
    assert '"soon"' in expiry[0].subject and soon.masked in expiry[0].body
    quota = [m for m in mail.outbox if "near its quota" in m.subject]
    assert [m.to[0] for m in quota] == ["owner@acme.test"] and "95%" in quota[0].body
    assert alert_keys() == {"expiry": 0, "quota": 0}  # once

    # Raising the quota re-arms it; using 90% of the new one alerts again.
    ApiKey.objects.filter(pk=spender.pk).update(quota=Decimal("100"))
    assert alert_keys() == {"expiry": 0, "quota": 0}
    ApiKey.objects.filter(pk=spender.pk).update(quota_used=Decimal("91"))
    assert alert_keys()["quota"] == 1
    # Extending the expiry re-arms it too.
    ApiKey.objects.filter(pk=soon.pk).update(expires_at=timezone.now() + timedelta(days=60))
    alerts.check_keys()
    assert not ApiKey.objects.get(pk=soon.pk).expiry_notified


def test_the_alert_tasks_are_scheduled():
    from django.conf import settings

    tasks = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {"portal.alert_low_balance", "portal.alert_keys"} <= tasks


# --- models, prices, cost ------------------------------------------------------------------

def test_the_models_page_shows_the_plans_models_at_multiplied_prices(acme, routes):
    Tenant.objects.filter(pk=acme.pk).update(group=routes)
    page = main(client_for(user_in(acme, "m@acme.test")).get("/portal/models/"))
    names = re.findall(r'data-model="([^"]+)"', page)
    assert names == ["claude-sonnet", "gpt-5", "gpt-5-mini"]  # o3: not in the plan; vip: dedicated
    gpt5 = page.split('data-model="gpt-5"', 1)[1].split("</tr>", 1)[0]
    assert ">2.5<" in gpt5 and ">0.25<" in gpt5 and ">20<" in gpt5  # 1.25, 0.125, 10 times 2
    claude = page.split('data-model="claude-sonnet"', 1)[1].split("</tr>", 1)[0]
    assert ">6<" in claude and ">30<" in claude and ">0.002<" in claude
    # Anthropic speaks neither protocol itself: translated, and compaction by Turnpike.
    assert claude.count("*</span>") == 3 and gpt5.count("*</span>") == 0


def test_the_models_page_has_an_empty_state(acme):
    page = main(client_for(user_in(acme, "m@acme.test")).get("/portal/models/"))
    assert "No models are available" in page


def test_the_cost_endpoint_applies_price_and_multiplier(acme, beta, routes):
    Tenant.objects.filter(pk=acme.pk).update(group=routes)
    client = client_for(user_in(acme, "m@acme.test"))
    data = client.get("/portal/models/gpt-5/cost?input=1000000&cached=400000&output=100000"
                      "&reasoning=0").json()
    # (600k * 1.25 + 400k * 0.125 + 100k * 10) / 1M * 2
    assert data["cost"] == "3.600000" and data["multiplier"] == "2.0000"
    assert client.get("/portal/models/o3/cost?input=1").status_code == 404  # not in the plan
    assert client.get("/portal/models/gpt-5/cost?input=-1").status_code == 400
    assert client.get("/portal/models/gpt-5/cost?output=many").status_code == 400
    # A key of another plan prices at that plan's multiplier; another tenant's key is a 404.
    cheap = Group.objects.create(name="cheap", price_multiplier=Decimal("0.5"))
    mine = key_create(tenant=acme, name="cheap", group=cheap).key
    assert client.get(f"/portal/models/gpt-5/cost?output=1000000&key={mine.pk}"
                      ).json()["cost"] == "5.000000"
    theirs = key_create(tenant=beta, name="x").key
    assert client.get(f"/portal/models/gpt-5/cost?input=1&key={theirs.pk}").status_code == 404


# --- quickstart and playground -------------------------------------------------------------

@override_settings(ALLOWED_HOSTS=["gw.example"])
def test_quickstart_fills_in_this_installation_and_the_chosen_key(acme, routes):
    Tenant.objects.filter(pk=acme.pk).update(group=routes)
    key = key_create(tenant=acme, name="ci").key
    client = client_for(user_in(acme, "m@acme.test"))
    page = main(client.get(f"/portal/quickstart/?key={key.pk}", HTTP_HOST="gw.example:8000"))
    assert "http://gw.example:8000/v1/responses" in page
    assert "http://gw.example:8000/v1/chat/completions" in page
    assert 'wire_api = "responses"' in page and 'env_key = "TURNPIKE_KEY"' in page
    assert "http://gw.example:8000/codex/v1" in page
    assert "export OPENAI_BASE_URL=http://gw.example:8000/v1" in page
    assert key.masked in page and f'data-key-id="{key.pk}"' in page
    assert page.count('class="key-slot"') >= 6 and page.count("data-copy=") >= 7
    assert '<option selected>claude-sonnet</option>' in page  # a model the tenant may call
    assert '"model":"claude-sonnet"' in page.replace("&quot;", '"')


def test_quickstart_and_playground_404_on_another_tenants_key(acme, beta):
    theirs = key_create(tenant=acme, name="acme-key").key
    key_create(tenant=beta, name="beta-key")
    client = client_for(user_in(beta, "b@beta.test", role="owner"))
    for path in ("/portal/quickstart/", "/portal/playground/"):
        assert client.get(f"{path}?key={theirs.pk}").status_code == 404
        assert client.get(f"{path}?key=abc").status_code == 404
        page = main(client.get(path))
        assert "beta-key" in page and "acme-key" not in page and theirs.masked not in page


def test_the_playground_offers_the_tenants_models_and_its_cost_endpoint(acme, routes):
    Tenant.objects.filter(pk=acme.pk).update(group=routes)
    page = main(client_for(user_in(acme, "m@acme.test")).get("/portal/playground/"))
    assert "<option selected>claude-sonnet</option>" in page and "<option>gpt-5</option>" in page
    assert ">o3<" not in page
    assert 'data-cost-url="/portal/models/MODEL/cost"' in page
    assert 'value="responses"' in page and 'value="chat"' in page


# --- staff ---------------------------------------------------------------------------------

def test_the_admin_overview_is_for_staff_only(acme, routes):
    staff = get_user_model().objects.create_user(username="ops", email="ops@x.test",
                                                 password="pw", is_staff=True,
                                                 is_superuser=True)
    now = timezone.now()
    for i, (status, code, cost) in enumerate([(200, "", "0.5"), (429, "rate_limit_exceeded", "0"),
                                              (502, "upstream_error", "0"),
                                              (500, "internal_error", "0")]):
        UsageLog.objects.create(created_at=now, request_id=f"req-{i}", tenant=acme,
                                endpoint="chat", model="gpt-5", status_code=status,
                                error_code=code, cost=Decimal(cost))
    credential = Credential.objects.filter(upstream__name="oa").first()
    for name in rediskeys.all_cooldowns():
        sync_redis().hset(name, str(credential.pk), int((now.timestamp() + 120) * 1000))
    Upstream.objects.filter(name="claude").update(auto_disabled=True, health="down")
    rollups.rollup_day(rollups.local_today())  # today's row reads the daily rollups
    since = rollups.hour_start(timezone.now()) - timedelta(hours=1)
    page = client_for(staff).get("/admin/").content.decode()
    assert "Operations overview" in page
    labels = {f"Since {hour:%H:%M} UTC (this hour and the last)" for hour in (
        since, rollups.hour_start(timezone.now()) - timedelta(hours=1))}  # an hour may begin
    assert any(label in page for label in labels)
    for row in ("ops-recent", "ops-today"):  # errors by class in both windows
        cells = page.split(f'id="{row}"', 1)[1].split("</tr>", 1)[0]
        assert re.findall(r"<td>([^<]*)</td>", cells)[:5] == ["4", "3 (75.0%)", "1", "1", "1"]
    assert "acme" in page and "auto-disabled" in page
    upstream_row = page.split(">oa</a>", 1)[1].split("</tr>", 1)[0]
    assert " s)" in upstream_row  # a credential cooling down
    # The two "Groups" no longer look alike.
    assert "Permission groups" in page and "Key groups (plans)" in page
    groups = client_for(staff).get("/admin/keys/group/").content.decode()
    assert "Select key group to change" in groups

    member = user_in(acme, "m@acme.test", role="owner")
    assert client_for(member).get("/admin/").status_code == 302  # not staff: the login page
    assert Client().get("/admin/").status_code == 302


def test_the_snippets_fill_in_a_secret_when_given_one():
    """The keys page shows a new key's secret once, with these snippets filled in."""
    from django.template.loader import render_to_string

    html = render_to_string("portal/_snippets.html", {
        "secret": "sk-tp-NEWSECRET", "base_url": "https://gw.example/v1", "model": "gpt-5",
        "codex_model": "gpt-5-codex", "codex_base_url": "", "codex_prefix": ""})
    assert html.count("sk-tp-NEWSECRET") >= 6 and "sk-tp-…</span>" not in html
    assert 'base_url = "https://gw.example/v1"' in html and "/codex/v1" not in html
