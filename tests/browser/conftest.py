"""Real-browser tests: Debian's Chromium driven by Selenium against a real portal server.

What is here, for every browser test module:

- ``portal_server`` (session): ``python -m portal.server`` (daphne, the process that also
  serves /v1) on a free port against the test database, email written to files
  (``server.emails()``, ``server.link_in_email(to, "/accounts/confirm-email/")``).
- ``db_data`` (module): database access for the module's tests and fixtures; what they
  commit is visible to the server, and the database is flushed when the module ends.
- ``browser`` (module): one headless Chromium per module (start-up is the slow part),
  cookies cleared and desktop width restored before each test.
- ``owner`` (module): a user who owns tenant "acme" (with one key) and is a member of
  "globex", and whose email is verified; ``OWNER_EMAIL``/``PASSWORD`` log in; and a plain
  member of "acme" (``MEMBER_EMAIL``).
- Helpers: ``login``, ``logout``, ``at_width``, ``screenshot`` (PNGs at desktop and phone
  width under test-artifacts/screenshots/), ``js_errors`` (console errors since the last
  call), ``accessibility`` (axe-core, serious and critical violations), and ``check_page``
  (all of these for the page the browser is on: the one call a new page's test needs).

The browser is never downloaded: Selenium Manager is bypassed by giving Selenium the system
``/usr/bin/chromedriver`` and ``/usr/bin/chromium``. Without them the tests skip, except
under CI (``CI=true``), where a missing browser is a failure.
"""

from __future__ import annotations

import base64
import email
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from tests.servers import Gateway, start_gateway, stop

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("TURNPIKE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TURNPIKE_CHROMEDRIVER", "/usr/bin/chromedriver")
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
AXE_JS = Path(__file__).parent / "vendor" / "axe-core" / "axe-4.14.1.min.js"

# Browser window sizes (CSS pixels): a laptop and a phone (iPhone 12-15 class).
WIDTHS: dict[str, tuple[int, int]] = {"desktop": (1366, 900), "phone": (390, 844)}

# Addresses are new on every run: allauth keeps rate limits and cool-downs (failed logins,
# confirmation emails) per address in the cache, which is Redis and outlives a test run.
RUN = secrets.token_hex(3)
OWNER_EMAIL = f"owner-{RUN}@example.com"
MEMBER_EMAIL = f"member-{RUN}@example.com"
PASSWORD = "Turnpike-browser-test-9"  # noqa: S105 (a test account's password)

# axe-core rules not applied, with the reason. Keep this empty unless a rule is wrong for
# the portal (not merely failing): a failing rule is a bug in the page to fix.
AXE_DISABLED_RULES: dict[str, str] = {}
AXE_FAILING_IMPACTS = ("serious", "critical")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.browser)


# --- The portal server --------------------------------------------------------------------

@dataclass
class PortalServer:
    gateway: Gateway
    log: Path
    mail_dir: Path

    @property
    def url(self) -> str:
        return self.gateway.url

    def emails(self) -> list[email.message.Message]:
        """Every email the server sent so far, oldest first."""
        found = []
        for path in sorted(self.mail_dir.glob("*.log"), key=lambda p: p.stat().st_mtime):
            for chunk in path.read_bytes().split(b"\n" + b"-" * 79 + b"\n"):
                if chunk.strip():
                    found.append(email.message_from_bytes(chunk))
        return found

    def email_text(self, message: email.message.Message) -> str:
        parts = message.walk() if message.is_multipart() else [message]
        texts = []
        for part in parts:
            if part.get_content_type() == "text/plain":
                payload = part.get_payload(decode=True)
                if isinstance(payload, bytes):
                    texts.append(payload.decode(part.get_content_charset() or "utf-8"))
        return "\n".join(texts)

    def link_in_email(self, to: str, path_prefix: str, timeout: float = 10.0) -> str:
        """The newest link starting with this server's URL + ``path_prefix`` in an email
        to ``to`` (waits for it: the server writes the file after answering)."""
        pattern = re.compile(re.escape(self.url + path_prefix) + r"[^\s\"'<>]*")
        deadline = time.monotonic() + timeout
        while True:
            for message in reversed(self.emails()):
                if to.lower() in str(message.get("To", "")).lower():
                    match = pattern.search(self.email_text(message))
                    if match:
                        return match.group(0)
            if time.monotonic() > deadline:
                raise AssertionError(f"no email to {to} with a {path_prefix} link; "
                                     f"server log: {self.log}")
            time.sleep(0.1)


def start_portal_server(tmp: Path, **env: str) -> PortalServer:
    """A portal server process; ``env`` overrides settings (``PORTAL_SIGNUP="open"`` ...).
    Call with database access unblocked (gateway_env reads the connection settings)."""
    from tests.conftest import gateway_env

    mail_dir = tmp / "mail"
    mail_dir.mkdir(parents=True, exist_ok=True)
    log = tmp / "server.log"
    # DATABASE_CONN_MAX_AGE=0: a connection per request, not one kept by each of daphne's
    # threads (dozens), on a PostgreSQL shared with other test runs.
    env = {"DATABASE_CONN_MAX_AGE": "0", **env}
    gateway = start_gateway(gateway_env(
        EMAIL_BACKEND="django.core.mail.backends.filebased.EmailBackend",
        EMAIL_FILE_PATH=str(mail_dir), LOG_LEVEL="WARNING", **env), log=log)
    server = PortalServer(gateway=gateway, log=log, mail_dir=mail_dir)
    _SERVERS.append(server)
    return server


_SERVERS: list[PortalServer] = []


def _wait_quiet(timeout: float = 30.0) -> None:
    """Every running portal server has finished its requests and written its usage rows:
    the flush after a module must not race its writer (a TRUNCATE against the writer's
    INSERT can deadlock)."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    for server in _SERVERS:
        if server.gateway.proc.poll() is not None:
            continue
        while time.monotonic() < deadline:
            try:
                state = httpx.get(server.gateway.url + "/_gateway/status", timeout=5).json()
            except httpx.HTTPError:
                break
            if not (state["in_flight"] or state["usage_pending"] or state.get("usage_journal")):
                break
            time.sleep(0.05)


@pytest.fixture(scope="session")
def portal_server(django_db_setup: Any, django_db_blocker: Any,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortalServer]:
    """The portal as deployed by default (PORTAL_SIGNUP=invite, email verification
    optional), its email in files."""
    with django_db_blocker.unblock():
        server = start_portal_server(tmp_path_factory.mktemp("portal"))
    yield server
    stop(server.gateway.proc)
    # Kept beside the screenshots: what the server said, for a failure seen only in CI.
    SCREENSHOTS.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(server.log, SCREENSHOTS.parent / "portal-server.log")


@pytest.fixture(scope="module")
def db_data(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """Database access for a whole module (its rows are committed, so the server sees
    them); the database is flushed afterwards, as after a transactional test."""
    with django_db_blocker.unblock():
        yield
        _wait_quiet()
        call_command("flush", interactive=False, verbosity=0)


@pytest.fixture
def db(db_data: None) -> None:
    """Replaces pytest-django's ``db`` for the browser tests: no transaction around the test
    (the server, another process, must see the rows), the module's committed data instead
    (``db_data``). Requesting a fixture named ``db`` is also what makes pytest-django set the
    test database up when only browser tests run."""


@pytest.fixture(autouse=True)
def _browser_db(db: None) -> None:
    """Every browser test has database access (``db`` above)."""


def make_user(email_address: str, password: str = PASSWORD, *, verified: bool = True,
              tenants: dict[str, str] | None = None, **fields: Any) -> Any:
    """A portal user with a password the server can check, a (verified) email address and
    memberships ``{tenant name: role}``."""
    from allauth.account.models import EmailAddress
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import PBKDF2PasswordHasher

    from keys.models import Membership
    from keys.services import tenant_get_or_create

    user = get_user_model().objects.create(
        username=email_address, email=email_address,
        # The test settings hash with MD5 for speed; the server runs the production
        # hashers, so hash with one of those.
        password=PBKDF2PasswordHasher().encode(password, PBKDF2PasswordHasher().salt()),
        **fields)
    EmailAddress.objects.create(user=user, email=email_address, primary=True,
                                verified=verified)
    for name, role in (tenants or {}).items():
        Membership.objects.create(user=user, tenant=tenant_get_or_create(name=name)[0],
                                  role=role)
    return user


@dataclass
class Owner:
    user: Any
    email: str
    password: str
    tenant: Any  # "acme", where the user is the owner
    other_tenant: Any  # "globex", where the user is a member
    key: Any  # a key of "acme" (keys.services.CreatedKey)
    member_email: str  # a plain member of "acme" (same password)

    def url_args(self) -> dict[str, Any]:
        """What a page URL in a browser test may name: "/portal/keys/{key_id}/"."""
        return {"tenant_id": self.tenant.pk, "key_id": self.key.key.pk,
                "user_id": self.user.pk}


@pytest.fixture(scope="module")
def owner(db_data: None) -> Owner:
    from keys.models import Tenant
    from keys.services import key_create

    user = make_user(OWNER_EMAIL, tenants={"acme": "owner", "globex": "member"})
    acme, globex = Tenant.objects.get(name="acme"), Tenant.objects.get(name="globex")
    key = key_create(tenant=acme, name="browser test key", created_by=user)
    make_user(MEMBER_EMAIL, tenants={"acme": "member"})
    return Owner(user=user, email=OWNER_EMAIL, password=PASSWORD, tenant=acme,
                 other_tenant=globex, key=key, member_email=MEMBER_EMAIL)


# --- The browser --------------------------------------------------------------------------

def chrome_options(user_data_dir: str) -> Any:
    from selenium.webdriver.chrome.options import Options

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-features=Translate,MediaRouter",
                "--password-store=basic", "--lang=en-US", "--hide-scrollbars",
                f"--user-data-dir={user_data_dir}",
                "--window-size={},{}".format(*WIDTHS["desktop"])):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"intl.accept_languages": "en-US,en"})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return options


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module (Selenium, the system chromedriver)."""
    missing = browser_missing()
    if missing:
        if _in_ci():
            pytest.fail(f"browser tests cannot run under CI: {missing}")
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="turnpike-chromium-")
    # An explicit driver path: Selenium Manager (which would download a browser) never runs.
    service = Service(executable_path=CHROMEDRIVER, log_output=subprocess.DEVNULL)
    driver = webdriver.Chrome(service=service, options=chrome_options(profile))
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(60)
    driver.turnpike_width = "desktop"  # type: ignore[attr-defined]
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def driver(browser: Any, portal_server: PortalServer) -> Iterator[Any]:
    """The module's browser, logged out, at desktop width, on a blank page."""
    browser.get(portal_server.url + "/accounts/login/")
    browser.delete_all_cookies()
    at_width(browser, "desktop")
    color_scheme(browser, "light")
    js_errors(browser)  # forget what earlier tests logged
    yield browser


# --- Helpers ------------------------------------------------------------------------------

def wait_for(driver: Any, condition: Callable[[Any], Any], timeout: float = 10.0,
             message: str = "") -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition, message)


def wait_for_path(driver: Any, path: str, timeout: float = 10.0) -> None:
    """Wait until the browser is on ``path`` (a prefix of the URL path) and loaded."""
    from urllib.parse import urlsplit

    from selenium.common.exceptions import TimeoutException

    try:
        wait_for(driver, lambda d: urlsplit(d.current_url).path.startswith(path)
                 and d.execute_script("return document.readyState") == "complete", timeout)
    except TimeoutException:
        raise AssertionError(f"never reached {path}: on {driver.current_url}, which says "
                             f"{page_text(driver)[:300]!r}") from None


def submit(driver: Any, form_selector: str = "main form") -> None:
    """Click the submit button of a form and wait for the next page."""
    from selenium.webdriver.common.by import By

    old = driver.find_element(By.TAG_NAME, "html")
    form = driver.find_element(By.CSS_SELECTOR, form_selector)
    form.find_element(By.CSS_SELECTOR, "button[type=submit], button:not([type])").click()
    wait_for(driver, lambda d: _stale(old) and
             d.execute_script("return document.readyState") == "complete",
             message=f"submitting {form_selector} loaded no page")


def _stale(element: Any) -> bool:
    """Whether ``element``'s document is gone (the next page replaced it). Chromium says so
    with a stale-element error, or, when the check races the navigation, with an inspector
    error that the node "does not belong to the document": the same fact."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        if "does not belong to the document" in str(exc):
            return True
        raise
    return False


def fill(driver: Any, **fields: str) -> None:
    """Type into inputs by name: ``fill(driver, login="a@b.c", password="...")``."""
    from selenium.webdriver.common.by import By

    for name, value in fields.items():
        element = driver.find_element(By.NAME, name)
        element.clear()
        element.send_keys(value)


def login(driver: Any, email_address: str, password: str = PASSWORD, *,
          server_url: str | None = None) -> None:
    """Log in through allauth's login page (the page the browser is on decides the server,
    unless ``server_url`` is given). Stops on the two-factor page if the account has one."""
    from urllib.parse import urlsplit

    if server_url is None:
        parts = urlsplit(driver.current_url)
        server_url = f"{parts.scheme}://{parts.netloc}"
    from selenium.common.exceptions import WebDriverException

    for attempt in range(3):
        # A navigation the previous test left in flight (a form post, a redirect) can
        # replace the page under the form: start again on a fresh login page.
        try:
            driver.get(server_url + "/accounts/login/")
            fill(driver, login=email_address, password=password)
            submit(driver)
            break
        except WebDriverException:
            if attempt == 2:
                raise
    path = urlsplit(driver.current_url).path
    assert not path.startswith("/accounts/login/"), \
        f"login failed for {email_address}: {page_text(driver)[:500]}"


def logout(driver: Any) -> None:
    """The header's "Log out" button (a POST form)."""
    from selenium.webdriver.common.by import By

    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.CSS_SELECTOR, "header form[action$='/logout/'] button").click()
    wait_for(driver, lambda d: _stale(old))
    wait_for_path(driver, "/accounts/")


def page_text(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.TAG_NAME, "body").text)


def at_width(driver: Any, width: str) -> None:
    """Resize the window to ``"desktop"`` or ``"phone"`` (see ``WIDTHS``)."""
    w, h = WIDTHS[width]
    driver.set_window_size(w, h)
    driver.turnpike_width = width
    # On a busy machine the page may see the new size a moment after the window has it.
    try:
        wait_for(driver, lambda d: abs(d.execute_script("return window.innerWidth") - w) <= 20,
                 timeout=5)
    except Exception:  # noqa: BLE001 (TimeoutException: say what the page saw)
        inner = driver.execute_script("return window.innerWidth")
        raise AssertionError(f"asked for a {w}px wide window, got {inner}px") from None


def screenshot(driver: Any, name: str, widths: tuple[str, ...] = tuple(WIDTHS)) -> list[Path]:
    """Full-page PNGs of the current page at each width, as
    test-artifacts/screenshots/<name>-<width>.png; the window is left at the width it had."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    before = getattr(driver, "turnpike_width", "desktop")
    saved = []
    safe = re.sub(r"[^\w.-]+", "_", name).strip("_")
    for width in widths:
        at_width(driver, width)
        path = SCREENSHOTS / f"{safe}-{width}.png"
        path.write_bytes(_full_page_png(driver))
        saved.append(path)
    at_width(driver, before)
    return saved


def _full_page_png(driver: Any) -> bytes:
    """The whole page, not only the viewport (Chrome DevTools' captureBeyondViewport)."""
    size = driver.execute_script(
        "const e = document.documentElement;"
        "return [Math.max(e.scrollWidth, e.clientWidth), Math.max(e.scrollHeight,"
        " e.clientHeight, document.body ? document.body.scrollHeight : 0)]")
    width, height = min(int(size[0]), 4000), min(int(size[1]), 12000)
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
    return base64.b64decode(shot["data"])


def js_errors(driver: Any) -> list[str]:
    """Console messages of level SEVERE since the last call (uncaught exceptions, failed
    loads, Content-Security-Policy violations), and forgets them."""
    return [f"{entry.get('source', '')}: {entry['message']}"
            for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]


def settled_overflow(driver: Any, timeout: float = 3.0) -> list[str]:
    """``overflowing`` once the page has laid itself out for the window's new size: charts
    (chart.js) resize their canvases from a ResizeObserver a frame or more after the window
    changed, later still on a busy machine. Returns [] as soon as nothing sticks out; an
    overflow still there after ``timeout`` is real."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        wide = overflowing(driver)
        if not wide or time.monotonic() >= deadline:
            return wide
        time.sleep(0.1)


def overflowing(driver: Any) -> list[str]:
    """The page scrolls sideways (a layout too wide for the window): the widest elements
    that stick out on the right, else []. Regions that scroll on their own (a wide table in
    its ``.table-wrap``, code in ``pre``) are fine."""
    return list(driver.execute_script(r"""
        const root = document.documentElement;
        const limit = root.clientWidth + 1, out = [];
        for (const el of document.body.querySelectorAll("*")) {
          const r = el.getBoundingClientRect();
          if (r.right > limit && r.width > 0) {
            // Inside a box that scrolls or clips, unless positioned out of it.
            let inner = false;
            const free = getComputedStyle(el).position === "absolute";
            for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) {
              const s = getComputedStyle(p);
              if (s.overflowX !== "visible" && !(free && s.position === "static")) {
                inner = true; break;
              }
            }
            const cls = typeof el.className === "string" && el.className.trim() ?
              "." + el.className.trim().split(/\s+/).join(".") : "";
            if (!inner) out.push(el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") + cls +
              " (" + Math.round(r.right) + "px)");
          }
          if (out.length >= 5) break;
        }
        if (!out.length && root.scrollWidth > limit) {
          out.push("the page (" + root.scrollWidth + "px)");
        }
        return out;
    """))


def accessibility(driver: Any) -> list[dict[str, Any]]:
    """axe-core's violations of impact serious or critical on the current page (every
    rule axe runs by default, less ``AXE_DISABLED_RULES``)."""
    if not driver.execute_script("return typeof window.axe === 'object'"):
        driver.execute_script(AXE_JS.read_text(encoding="utf-8"))
    options = {"rules": {rule: {"enabled": False} for rule in AXE_DISABLED_RULES},
               "resultTypes": ["violations"]}
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, arguments[0]).then(r => done(r.violations),"
        " e => done({error: String(e)}));", options)
    if isinstance(result, dict) and "error" in result:
        raise AssertionError(f"axe failed: {result['error']}")
    return [v for v in result if v.get("impact") in AXE_FAILING_IMPACTS]


def describe_violations(violations: list[dict[str, Any]]) -> str:
    lines = []
    for v in violations:
        targets = [", ".join(map(str, n.get("target", []))) for n in v.get("nodes", [])[:5]]
        lines.append(f"{v['id']} ({v['impact']}): {v['help']} -> {targets}")
    return "\n".join(lines)


def navigation_status(driver: Any) -> int | None:
    """The HTTP status of the page's own response (Navigation Timing), None if unknown."""
    status = driver.execute_script(
        "const n = performance.getEntriesByType('navigation')[0];"
        "return n && n.responseStatus ? n.responseStatus : null;")
    return int(status) if status else None


def color_scheme(driver: Any, scheme: str) -> None:
    """Emulate the system's ``"light"`` or ``"dark"`` colour scheme (prefers-color-scheme)."""
    if getattr(driver, "turnpike_scheme", "light") != scheme:
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {
            "features": [{"name": "prefers-color-scheme", "value": scheme}]})
        driver.turnpike_scheme = scheme


def check_page(driver: Any, name: str, *, widths: tuple[str, ...] = tuple(WIDTHS),
               axe: bool = True, status: int | None = None) -> None:
    """Everything every page must pass, for the page the browser is on: its HTTP status
    (``status``, else any below 400), screenshots at each width, no sideways scrolling and
    axe-core clean at each width, no console errors."""
    url = driver.current_url
    got = navigation_status(driver)
    if status is not None:
        assert got == status, f"{url} answered {got}, not {status}"
    else:
        assert got is None or got < 400, f"{url} answered {got}"
    before = getattr(driver, "turnpike_width", "desktop")
    # One resize per width (each waits for the page to take the new size): its screenshot,
    # then its checks. Every width's screenshot is saved before a failure is reported.
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^\w.-]+", "_", name).strip("_")
    problems = []
    for width in widths:
        at_width(driver, width)
        (SCREENSHOTS / f"{safe}-{width}.png").write_bytes(_full_page_png(driver))
        wide = settled_overflow(driver)
        if wide:
            problems.append(f"{url} is wider than the window at {width} width: {wide}")
        if axe:
            bad = accessibility(driver)
            if bad:
                problems.append(f"axe on {url} at {width} width:\n{describe_violations(bad)}")
    at_width(driver, before)
    assert not problems, "\n".join(problems)
    errors = js_errors(driver)
    if status is not None and status >= 400:  # the page's own, expected, error status
        errors = [e for e in errors if not e.startswith(f"network: {url} - ")]
    assert not errors, f"console errors on {url}:\n" + "\n".join(errors)


def select_option(driver: Any, select_id: str, value: str) -> None:
    """Choose an option of a ``<select data-autosubmit>`` and wait for the page it posts."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    old = driver.find_element(By.TAG_NAME, "html")
    Select(driver.find_element(By.ID, select_id)).select_by_value(value)
    wait_for(driver, lambda d: _stale(old) and
             d.execute_script("return document.readyState") == "complete",
             message=f"choosing {value} in #{select_id} loaded no page")


def totp_code(secret: str, at: float | None = None) -> str:
    """RFC 6238 (SHA-1, 30 s, 6 digits), the code an authenticator app shows."""
    from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value

    return format_hotp_value(hotp_value(secret, int((at or time.time()) // 30)))


def fresh_totp_code(secret: str, used: str | None = None, margin: float = 3.0) -> str:
    """A code that is still valid for ``margin`` seconds and is not ``used`` (the server
    takes the current 30 s step only, and each code once)."""
    while True:
        now = time.time()
        code = totp_code(secret, now)
        if 30 - now % 30 >= margin and code != used:
            return code
        time.sleep(30 - now % 30 + 0.05)
