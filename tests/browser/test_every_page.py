"""Every portal page, in a real browser, in English and Chinese, at desktop and phone
width, light and dark: it answers (no error page), does not scroll sideways, shows no console
errors, passes axe-core (no serious or critical violations), and leaves a screenshot per
width in test-artifacts/screenshots/.

A new page joins by appending one line to ``PAGES``: ``Page("/portal/keys/")`` (as the
owner), ``Page("/portal/keys/", MEMBER)`` (as a plain member), ``Page(path, ANONYMOUS)``.
A path may name the seeded objects (``Owner.url_args``: ``{key_id}``, ``{tenant_id}``,
``{user_id}``; and this module's ``{request_id}``, a usage row of the key), e.g.
``Page("/portal/keys/{key_id}/")``. ``Page("/portal/welcome/", LONER)`` is a logged-in user
with no tenant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.browser.conftest import (
    RUN,
    Owner,
    PortalServer,
    accessibility,
    at_width,
    check_page,
    color_scheme,
    js_errors,
    login,
    make_user,
    overflowing,
    settled_overflow,
    wait_for_path,
)

OWNER = "owner"  # logged in as the owner of tenant "acme" (and a member of "globex")
MEMBER = "member"  # logged in as a plain member of "acme"
ANONYMOUS = "anonymous"  # logged out
LONER = "loner"  # logged in, a member of no tenant
LONER_EMAIL = f"loner-{RUN}@example.com"
# The usage row seeded for the usage detail page: an id like the gateway's (one long word).
REQUEST_ID = f"req_{RUN}{1:026x}"


@dataclass(frozen=True)
class Page:
    path: str
    who: str = OWNER
    status: int = 200  # the status the page itself answers with (after redirects)
    lands: str | None = None  # the path it ends on, when it redirects elsewhere


PAGES = [
    # Accounts (allauth inside the portal layout), logged out.
    Page("/accounts/login/", ANONYMOUS),
    Page("/accounts/signup/", ANONYMOUS),  # sign-up closed: PORTAL_SIGNUP=invite
    Page("/accounts/password/reset/", ANONYMOUS),
    Page("/accounts/password/reset/done/", ANONYMOUS),
    Page("/accounts/confirm-email/", ANONYMOUS),
    Page("/portal/invitation/not-a-valid-token/", ANONYMOUS, status=404),
    # Accounts, logged in.
    Page("/accounts/email/"),
    Page("/accounts/password/change/"),
    Page("/accounts/2fa/"),
    Page("/accounts/2fa/webauthn/"),
    Page("/accounts/reauthenticate/"),
    # The portal.
    Page("/portal/"),
    Page("/portal/", MEMBER),
    Page("/portal/keys/"),
    Page("/portal/keys/", MEMBER),
    Page("/portal/keys/new/"),
    Page("/portal/keys/{key_id}/"),
    Page("/portal/keys/{key_id}/", MEMBER),
    Page("/portal/keys/{key_id}/edit/"),
    Page("/portal/keys/{key_id}/rotate/"),
    Page("/portal/keys/{key_id}/delete/"),
    Page("/portal/dashboard/keys/{key_id}/"),
    Page("/portal/usage/"),
    Page("/portal/usage/", MEMBER),
    Page("/portal/usage/{request_id}/"),
    Page("/portal/balance/"),
    Page("/portal/balance/", MEMBER),
    Page("/portal/models/"),
    Page("/portal/quickstart/"),
    Page("/portal/playground/"),
    Page("/portal/members/"),
    Page("/portal/members/", MEMBER),
    Page("/portal/settings/"),
    Page("/portal/tokens/"),
    Page("/portal/welcome/", LONER),
]

# Each page in English and in Chinese with the system's light colours, and in English with
# dark ones (the portal follows prefers-color-scheme; contrast is checked in both).
VARIANTS = [("en", "light"), ("zh-hans", "light"), ("en", "dark")]

# Grouped by visitor in each variant, so the browser logs in once per visitor and variant.
VISITS = [(lang, scheme, page) for lang, scheme in VARIANTS
          for page in sorted(PAGES, key=lambda p: [ANONYMOUS, OWNER, MEMBER, LONER].index(p.who))]


class Visitor:
    """Keeps the module's browser logged in (or out) and in a language across tests."""

    def __init__(self, browser: Any, server: PortalServer, owner: Owner) -> None:
        self.browser, self.server, self.owner = browser, server, owner
        self.who: str | None = None
        self.lang: str | None = None

    def url_args(self) -> dict[str, Any]:
        return {**self.owner.url_args(), "request_id": REQUEST_ID}

    def become(self, who: str, lang: str) -> None:
        if who != self.who:
            self.browser.get(self.server.url + "/accounts/login/")
            self.browser.delete_all_cookies()
            if who != ANONYMOUS:
                email = {OWNER: self.owner.email, MEMBER: self.owner.member_email,
                         LONER: LONER_EMAIL}[who]
                login(self.browser, email, self.owner.password, server_url=self.server.url)
            self.who, self.lang = who, None
        if lang != self.lang:
            # The cookie the header's language switcher sets (Django's set_language).
            self.browser.add_cookie({"name": "django_language", "value": lang, "path": "/"})
            self.lang = lang


@pytest.fixture(scope="module")
def visitor(browser: Any, portal_server: PortalServer, owner: Owner) -> Visitor:
    seed_usage(owner)
    make_user(LONER_EMAIL)
    return Visitor(browser, portal_server, owner)


def seed_usage(owner: Owner) -> None:
    """Requests of the owner's key today (one an error), so the dashboard's charts, the key's
    usage, the usage log and a usage detail page (``REQUEST_ID``) have something to show."""
    from datetime import timedelta
    from decimal import Decimal

    from django.utils import timezone

    from billing.models import UsageLog
    from gateway.services import upstream_create

    # An upstream serving models to the tenant (the models page, playground and key form
    # list them); never called.
    upstream_create(name="browser", kind="openai", base_url="http://127.0.0.1:9/v1",
                    models=["gpt-4o-mini", "gpt-5"], api_keys=["sk-browser-never-called"])
    now = timezone.now()
    key = owner.key.key
    for i, (status, model) in enumerate([(200, "gpt-4o-mini"), (200, "gpt-5"),
                                         (429, "gpt-5"), (200, "gpt-4o-mini")]):
        UsageLog.objects.create(
            created_at=now - timedelta(minutes=5 * i), request_id=f"req_{RUN}{i + 1:026x}",
            key=key, key_prefix=key.prefix, tenant=owner.tenant, endpoint="chat/completions",
            model=model, status_code=status,
            error_code="rate_limit_exceeded" if status == 429 else "",
            input_tokens=120 * (i + 1), output_tokens=40 * (i + 1),
            cost=Decimal("0.000123") * (i + 1), latency_ms=300 + 50 * i, ttfb_ms=90 + 10 * i,
            client_ip="127.0.0.1", user_agent="browser-test")


@pytest.mark.parametrize(("lang", "scheme", "page"), VISITS, ids=[
    f"{lang}-{scheme}-{page.who}-{page.path}" for lang, scheme, page in VISITS])
def test_page(visitor: Visitor, lang: str, scheme: str, page: Page) -> None:
    driver = visitor.browser
    visitor.become(page.who, lang)
    color_scheme(driver, scheme)
    path = page.path.format(**visitor.url_args())
    driver.get(visitor.server.url + path)
    wait_for_path(driver, page.lands or page.path.split("{")[0])
    assert urlsplit(driver.current_url).path == (page.lands or path), \
        f"redirected to {driver.current_url}"
    assert driver.find_element("css selector", "html").get_attribute("lang") == lang
    assert driver.find_elements("css selector", "header.top"), "not in the portal layout"
    name = "page-" + (page.path.strip("/").replace("/", "_") or "root")
    suffix = "" if scheme == "light" else f"-{scheme}"
    check_page(driver, f"{name}-{page.who}-{lang}{suffix}", status=page.status)


def test_the_checks_catch_problems(visitor: Visitor) -> None:
    """The checks are not vacuous: an image without a text alternative fails axe-core, and
    a script error and an inline script (refused by the Content-Security-Policy) are
    console errors."""
    driver = visitor.browser
    visitor.become(ANONYMOUS, "en")
    color_scheme(driver, "light")
    driver.get(visitor.server.url + "/accounts/login/")
    assert accessibility(driver) == []
    assert js_errors(driver) == []
    driver.execute_script(
        "const img = document.createElement('img');"
        "img.src = '/static/portal/favicon.svg'; document.querySelector('main').append(img);"
        "const s = document.createElement('script'); s.textContent = 'window.inline = 1';"
        "document.body.append(s);"
        "setTimeout(() => { throw new Error('boom from the page'); }, 0);")
    violations = accessibility(driver)
    assert [v["id"] for v in violations] == ["image-alt"]
    errors = "\n".join(js_errors(driver))
    assert "Content Security Policy" in errors
    assert "boom from the page" in errors
    assert driver.execute_script("return window.inline") is None
    # A box wider than a phone makes the page scroll sideways; in a .table-wrap it does not.
    at_width(driver, "phone")
    assert settled_overflow(driver) == []
    driver.execute_script(
        "const wrap = document.createElement('div'); wrap.className = 'table-wrap';"
        "wrap.innerHTML = '<div id=wide-ok>x</div>'; document.querySelector('main').append(wrap);"
        "document.getElementById('wide-ok').style.width = '900px';")
    assert overflowing(driver) == []
    driver.execute_script(
        "const div = document.createElement('div'); div.id = 'too-wide';"
        "document.querySelector('main').append(div); div.style.width = '900px';")
    wide = overflowing(driver)
    assert any(found.startswith("div#too-wide") for found in wide), wide
    # Waiting for the layout to settle never hides a real overflow.
    assert settled_overflow(driver, timeout=0.3) == wide
    at_width(driver, "desktop")
