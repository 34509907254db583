"""Every portal page, in a real browser, in English and Chinese, at desktop and phone
width: it answers (no error page), shows no console errors, passes axe-core (no serious or
critical violations), and leaves a screenshot per width in test-artifacts/screenshots/.

A new page joins by appending one line to ``PAGES``: ``Page("/portal/keys/")`` (as the
owner), ``Page("/portal/keys/", MEMBER)`` (as a plain member), ``Page(path, ANONYMOUS)``.
A path may name the seeded objects (``Owner.url_args``: ``{key_id}``, ``{tenant_id}``,
``{user_id}``), e.g. ``Page("/portal/keys/{key_id}/")``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.browser.conftest import (
    Owner,
    PortalServer,
    accessibility,
    check_page,
    color_scheme,
    js_errors,
    login,
    wait_for_path,
)

OWNER = "owner"  # logged in as the owner of tenant "acme" (and a member of "globex")
MEMBER = "member"  # logged in as a plain member of "acme"
ANONYMOUS = "anonymous"  # logged out


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
]

# Each page in English and in Chinese with the system's light colours, and in English with
# dark ones (the portal follows prefers-color-scheme; contrast is checked in both).
VARIANTS = [("en", "light"), ("zh-hans", "light"), ("en", "dark")]

# Grouped by visitor in each variant, so the browser logs in once per visitor and variant.
VISITS = [(lang, scheme, page) for lang, scheme in VARIANTS
          for page in sorted(PAGES, key=lambda p: [ANONYMOUS, OWNER, MEMBER].index(p.who))]


class Visitor:
    """Keeps the module's browser logged in (or out) and in a language across tests."""

    def __init__(self, browser: Any, server: PortalServer, owner: Owner) -> None:
        self.browser, self.server, self.owner = browser, server, owner
        self.who: str | None = None
        self.lang: str | None = None

    def become(self, who: str, lang: str) -> None:
        if who != self.who:
            self.browser.get(self.server.url + "/accounts/login/")
            self.browser.delete_all_cookies()
            if who != ANONYMOUS:
                email = {OWNER: self.owner.email, MEMBER: self.owner.member_email}[who]
                login(self.browser, email, self.owner.password, server_url=self.server.url)
            self.who, self.lang = who, None
        if lang != self.lang:
            # The cookie the header's language switcher sets (Django's set_language).
            self.browser.add_cookie({"name": "django_language", "value": lang, "path": "/"})
            self.lang = lang


@pytest.fixture(scope="module")
def visitor(browser: Any, portal_server: PortalServer, owner: Owner) -> Visitor:
    return Visitor(browser, portal_server, owner)


@pytest.mark.parametrize(("lang", "scheme", "page"), VISITS, ids=[
    f"{lang}-{scheme}-{page.who}-{page.path}" for lang, scheme, page in VISITS])
def test_page(visitor: Visitor, lang: str, scheme: str, page: Page) -> None:
    driver = visitor.browser
    visitor.become(page.who, lang)
    color_scheme(driver, scheme)
    driver.get(visitor.server.url + page.path.format(**visitor.owner.url_args()))
    wait_for_path(driver, page.lands or page.path.split("{")[0])
    assert urlsplit(driver.current_url).path == (page.lands or page.path.format(
        **visitor.owner.url_args())), f"redirected to {driver.current_url}"
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
