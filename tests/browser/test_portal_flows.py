"""The portal's main flows in a real browser, against the portal server process, which also
serves /v1, with the demo fake upstream behind it:

- create a key in the form, see its secret once, copy it (the clipboard), call /v1 with it
  and see the request arrive on the dashboard live (WebSocket) and in the usage log;
- filter the usage log by key and by status, and download the filtered CSV;
- redeem a code and see the balance grow; the balance page in Chinese;
- invite a member by email, sign up through the emailed link, and see them listed.

Every page the flows stop on is checked (``check_page``: status, screenshots at desktop and
phone width, no sideways scrolling, axe-core, console).
"""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.browser.conftest import (
    PASSWORD,
    RUN,
    Owner,
    PortalServer,
    _stale,
    check_page,
    fill,
    login,
    logout,
    page_text,
    select_option,
    submit,
    wait_for,
    wait_for_path,
)

INVITEE = f"invitee-{RUN}@example.com"
MODEL = "gpt-4o-mini"


@pytest.fixture(scope="module")
def served(db_data: None, fake_upstream: Any) -> Any:
    """An upstream (the fake) serving the demo models to every tenant."""
    from gateway.services import upstream_create
    from tests.conftest import DEMO_MODELS, UPSTREAM_SECRET

    fake_upstream.clear()
    return upstream_create(name="fake", kind="openai", base_url=fake_upstream.openai_url,
                           models=DEMO_MODELS, api_keys=[UPSTREAM_SECRET])


@pytest.fixture(scope="module")
def downloads() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="turnpike-downloads-") as path:
        yield Path(path)


@pytest.fixture
def owner_in(driver: Any, portal_server: PortalServer, owner: Owner) -> Any:
    """The module's browser, logged in as the owner of "acme"."""
    login(driver, owner.email, owner.password, server_url=portal_server.url)
    wait_for_path(driver, "/portal/")
    return driver


def call_v1(server: PortalServer, secret: str, model: str = MODEL) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {secret}"},
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}]})


def call_v1_ok(driver: Any, server: PortalServer, secret: str) -> str:
    """A successful /v1 request (retried while the gateway's snapshot, refreshed within
    its TTL, does not yet know the key or the upstream); its request id."""
    answers: list[httpx.Response] = []

    def ok(_: Any) -> bool:
        answers.append(call_v1(server, secret))
        return answers[-1].status_code == 200

    wait_for(driver, ok, timeout=15, message="/v1 never answered 200")
    resp = answers[-1]
    return resp.headers.get("x-request-id") or ""


def test_create_a_key_copy_it_call_v1_and_see_it_live(
        owner_in: Any, portal_server: PortalServer, owner: Owner, served: Any) -> None:
    from tests.conftest import wait_for_usage

    driver, url = owner_in, portal_server.url
    driver.execute_cdp_cmd("Browser.grantPermissions", {
        "origin": url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})

    # The keys page, then the form.
    driver.get(url + "/portal/keys/")
    driver.find_element(By.CSS_SELECTOR, "main a[href$='/portal/keys/new/']").click()
    wait_for_path(driver, "/portal/keys/new/")
    fill(driver, name="flow key")
    submit(driver, "main form.key-form")
    secret = driver.find_element(By.ID, "new-secret").text.strip()
    assert secret.startswith("sk-"), page_text(driver)[:300]
    check_page(driver, "flows-01-key-secret")

    # Copy: the button says so, and the clipboard holds the secret.
    button = driver.find_element(By.CSS_SELECTOR, "button[data-copy='#new-secret']")
    button.click()
    wait_for(driver, lambda d: button.get_attribute("data-copied") == "true",
             message="the copy button never showed it copied")
    copied = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "navigator.clipboard.readText().then(done, e => done('error: ' + e));")
    assert copied == secret

    # Shown once: the key's page shows only the masked key.
    from keys.models import ApiKey

    key = ApiKey.objects.get(tenant=owner.tenant, name="flow key")
    driver.get(url + f"/portal/keys/{key.pk}/")
    assert secret not in driver.page_source

    # The dashboard, connected to its live socket, then a /v1 request with the secret.
    driver.get(url + "/portal/")
    wait_for(driver, lambda d: d.execute_script("return window.TurnpikeLive.state()") == "open",
             message="the dashboard's WebSocket never opened")
    feed = "ol[data-live-feed] li"
    before = len(driver.find_elements(By.CSS_SELECTOR, feed + ":not(.muted)"))
    request_id = call_v1_ok(driver, portal_server, secret)
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, feed + ":not(.muted)"))
             > before, timeout=15, message="the request never appeared on the dashboard")
    newest = driver.find_element(By.CSS_SELECTOR, feed).text
    assert key.prefix in newest and MODEL in newest and "200" in newest
    # Coloured by the row's status class as the server names it (billing.usagerow).
    badge = driver.find_element(By.CSS_SELECTOR, feed + " .badge")
    assert badge.get_attribute("class").split() == ["badge", "ok"]
    check_page(driver, "flows-02-dashboard-live")

    # And in the usage log, with its detail page.
    row = wait_for_usage(request_id) if request_id else None
    driver.get(url + "/portal/usage/")
    table = driver.find_element(By.ID, "usage-table").text
    assert key.name in table and MODEL in table
    if row is not None:
        driver.get(url + f"/portal/usage/{row.request_id}/")
        assert row.request_id in page_text(driver)
        check_page(driver, "flows-03-usage-detail")


def test_filter_the_usage_log_and_export_it(
        owner_in: Any, portal_server: PortalServer, owner: Owner, served: Any,
        downloads: Path) -> None:
    from billing.models import UsageLog
    from tests.conftest import wait_for_usage

    driver, url = owner_in, portal_server.url
    # Requests of the seeded key: one that succeeds, one for a model nobody serves.
    ok_id = call_v1_ok(driver, portal_server, owner.key.secret)
    bad = call_v1(portal_server, owner.key.secret, model="no-such-model")
    assert 400 <= bad.status_code < 500, bad.text
    for request_id in (ok_id, bad.headers.get("x-request-id")):
        if request_id:
            wait_for_usage(request_id)
    mine = UsageLog.objects.filter(key=owner.key.key)
    assert mine.filter(status_code__gte=400).exists()

    driver.get(url + "/portal/usage/")
    # Filter by key, then by status: htmx swaps the results and puts the filters in the URL.
    for field, value in (("id_key", str(owner.key.key.pk)), ("id_status", "client_error")):
        old = driver.find_element(By.ID, "usage-results")
        Select(driver.find_element(By.ID, field)).select_by_value(value)
        wait_for(driver, lambda d, o=old, f=field: _stale(o) and f[3:] in parse_qs(
            urlsplit(d.current_url).query), message=f"filtering by {field} changed nothing")
    rows = driver.find_elements(By.CSS_SELECTOR, "#usage-table tbody tr")
    assert len(rows) == mine.filter(status_code__gte=400, status_code__lt=500).count()
    assert all(owner.key.key.prefix in r.text and "no-such-model" in r.text for r in rows)
    check_page(driver, "flows-04-usage-filtered")

    # Export: Chromium downloads the CSV of the filtered rows into our directory.
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {
        "behavior": "allow", "downloadPath": str(downloads)})
    link = driver.find_element(By.CSS_SELECTOR,
                               "#usage-results a[href*='/portal/usage/export.csv']")
    query = parse_qs(urlsplit(link.get_attribute("href")).query)
    assert query["key"] == [str(owner.key.key.pk)] and query["status"] == ["client_error"]
    link.click()

    def downloaded(_: Any) -> Path | None:
        done = [p for p in downloads.glob("usage-*.csv")]
        partial = list(downloads.glob("*.crdownload"))
        return done[0] if done and not partial else None

    path = wait_for(driver, downloaded, timeout=15, message="no CSV was downloaded")
    table = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    expected = mine.filter(status_code__gte=400, status_code__lt=500)
    assert sorted(r["request_id"] for r in table) == sorted(
        expected.values_list("request_id", flat=True))
    assert all(r["model"] == "no-such-model" and r["status"].startswith("4") for r in table)


def test_redeem_a_code_and_see_the_balance_grow(
        owner_in: Any, portal_server: PortalServer, owner: Owner) -> None:
    from billing.redemption import redeem_create

    driver, url = owner_in, portal_server.url
    [code] = redeem_create(amount=Decimal("12.50"), count=1, batch=f"browser-{RUN}")
    driver.get(url + "/portal/balance/")
    before = _number(driver.find_element(By.CSS_SELECTOR, "[data-testid=balance]").text)
    fill(driver, code=code)
    submit(driver, "main form[action$='/portal/balance/redeem/']")
    wait_for_path(driver, "/portal/balance/")
    after = _number(driver.find_element(By.CSS_SELECTOR, "[data-testid=balance]").text)
    assert after - before == Decimal("12.50")
    assert "12.5" in page_text(driver)  # the message names the amount
    check_page(driver, "flows-05-balance-redeemed")

    # Used up: a second try is refused with a message, and the balance stays.
    fill(driver, code=code)
    submit(driver, "main form[action$='/portal/balance/redeem/']")
    assert _number(driver.find_element(By.CSS_SELECTOR, "[data-testid=balance]").text) == after
    assert driver.find_elements(By.CSS_SELECTOR, ".messages .error, [role=alert]"), \
        page_text(driver)[:400]

    # The same page in Chinese (the header's switcher): Django's and allauth's own catalogues
    # are Chinese whether or not the portal's is merged yet.
    select_option(driver, "lang-switch", "zh-hans")
    wait_for_path(driver, "/portal/balance/")
    assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang") == "zh-hans"
    check_page(driver, "flows-06-balance-chinese")
    driver.get(url + "/accounts/password/change/")
    assert "密码" in page_text(driver)  # allauth: "Password"
    select_option(driver, "lang-switch", "en")
    assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"


def test_invite_a_member_who_signs_up_through_the_email(
        owner_in: Any, portal_server: PortalServer, owner: Owner) -> None:
    from keys.models import Membership

    driver, url = owner_in, portal_server.url
    driver.get(url + "/portal/members/")
    form = "main form[action$='/portal/members/invite/']"
    driver.find_element(By.CSS_SELECTOR, form + " input[name=email]").send_keys(INVITEE)
    Select(driver.find_element(By.CSS_SELECTOR, form + " select[name=role]")).select_by_value(
        "admin")
    submit(driver, form)
    wait_for_path(driver, "/portal/members/")
    assert INVITEE in driver.find_element(By.CSS_SELECTOR,
                                          "section[aria-labelledby=pending-title]").text
    check_page(driver, "flows-07-members-invited")

    # The invitee, in the same browser after the owner logs out, opens the emailed link.
    link = portal_server.link_in_email(INVITEE, "/portal/invitation/")
    logout(driver)
    driver.get(link)
    wait_for_path(driver, "/accounts/signup/")
    assert driver.find_element(By.NAME, "email").get_attribute("value") == INVITEE
    fill(driver, password1=PASSWORD, password2=PASSWORD)
    submit(driver)
    wait_for_path(driver, "/portal/")
    assert owner.tenant.name in page_text(driver)
    assert Membership.objects.filter(user__email=INVITEE, tenant=owner.tenant,
                                     role="admin").exists()

    # The owner sees the new admin listed, and no pending invitation left.
    logout(driver)
    login(driver, owner.email, owner.password)
    driver.get(url + "/portal/members/")
    members = driver.find_element(By.CSS_SELECTOR, "main table tbody").text
    assert INVITEE in members
    assert INVITEE not in driver.find_element(
        By.CSS_SELECTOR, "section[aria-labelledby=pending-title]").text
    check_page(driver, "flows-08-members-joined")


def _number(text: str) -> Decimal:
    return Decimal("".join(ch for ch in text if ch.isdigit() or ch in ".-") or "0")
