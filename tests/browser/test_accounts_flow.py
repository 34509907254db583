"""Accounts in a real browser: sign up through an invitation, verify the email, turn on
two-factor (TOTP) and log in with it; reset a forgotten password; the language (from the
browser, switched, remembered) and the tenant switcher. Every page visited is checked
(``check_page``: status, screenshots at desktop and phone width, axe-core, console)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.browser.conftest import (
    PASSWORD,
    RUN,
    Owner,
    PortalServer,
    check_page,
    fill,
    fresh_totp_code,
    login,
    logout,
    make_user,
    page_text,
    select_option,
    submit,
    wait_for_path,
)

NEWCOMER = f"newcomer-{RUN}@example.com"
SECOND_ADDRESS = f"newcomer-{RUN}@example.org"
NEW_PASSWORD = "Correct-horse-battery-7"  # noqa: S105 (a test account's password)


def path_of(driver: Any) -> str:
    return urlsplit(driver.current_url).path


def html_lang(driver: Any) -> str:
    return str(driver.find_element(By.TAG_NAME, "html").get_attribute("lang"))


def test_sign_up_verify_two_factor_and_log_in_with_it(
        driver: Any, portal_server: PortalServer, owner: Owner) -> None:
    from allauth.account.models import EmailAddress
    from allauth.mfa.models import Authenticator

    from keys.models import Invitation, Membership
    from portal.invitations import link_for

    url = portal_server.url
    # An owner invites a newcomer (PORTAL_SIGNUP=invite: sign-up only through the link).
    invitation = Invitation.objects.create(tenant=owner.tenant, email=NEWCOMER,
                                           role=Membership.Role.MEMBER, invited_by=owner.user)
    driver.get(url + link_for(None, invitation))
    wait_for_path(driver, "/accounts/signup/")
    check_page(driver, "flow-01-signup")

    fill(driver, email=NEWCOMER, password1=NEW_PASSWORD, password2=NEW_PASSWORD)
    submit(driver)
    # Signed up, logged in, and a member of the inviting tenant at once.
    wait_for_path(driver, "/portal/")
    assert owner.tenant.name in page_text(driver)
    assert Membership.objects.filter(user__email=NEWCOMER, tenant=owner.tenant,
                                     role="member").exists()
    check_page(driver, "flow-02-dashboard-after-signup")

    # The invitation went to this address, so signing up through it verified the address.
    assert EmailAddress.objects.get(email=NEWCOMER).verified
    # A second address is verified with the link the server emails.
    driver.get(url + "/accounts/email/")
    add_form = "main form:has(button[name=action_add])"
    driver.find_element(By.CSS_SELECTOR, add_form + " input[name=email]").send_keys(
        SECOND_ADDRESS)
    submit(driver, add_form)
    link = portal_server.link_in_email(SECOND_ADDRESS, "/accounts/confirm-email/")
    driver.get(link)
    wait_for_path(driver, "/accounts/confirm-email/")
    check_page(driver, "flow-03-confirm-email")
    submit(driver)
    assert EmailAddress.objects.get(email=SECOND_ADDRESS).verified

    # Two-factor: the MFA page, confirm the password, then the authenticator app's page.
    driver.get(url + "/accounts/2fa/")
    check_page(driver, "flow-04-two-factor")
    driver.find_element(By.CSS_SELECTOR, "main a[href$='/accounts/2fa/totp/activate/']").click()
    wait_for_path(driver, "/accounts/reauthenticate/")
    check_page(driver, "flow-05-reauthenticate")
    fill(driver, password=NEW_PASSWORD)
    submit(driver)
    wait_for_path(driver, "/accounts/2fa/totp/activate/")
    check_page(driver, "flow-06-totp-activate")
    secret = driver.find_element(By.ID, "authenticator_secret").get_attribute("value")
    assert secret
    activation_code = fresh_totp_code(secret)
    fill(driver, code=activation_code)
    submit(driver)
    assert Authenticator.objects.filter(user__email=NEWCOMER, type="totp").exists(), \
        page_text(driver)[:500]
    # allauth shows the recovery codes next.
    wait_for_path(driver, "/accounts/2fa/recovery-codes/")
    check_page(driver, "flow-07-recovery-codes")

    # Log out, log in: the password is not enough any more.
    logout(driver)
    check_page(driver, "flow-08-logged-out")
    login(driver, NEWCOMER, NEW_PASSWORD)
    wait_for_path(driver, "/accounts/2fa/authenticate/")
    check_page(driver, "flow-09-two-factor-code")
    # A code is accepted once: this waits for the next one if it is still the activation code.
    fill(driver, code=fresh_totp_code(secret, used=activation_code))
    submit(driver)
    wait_for_path(driver, "/portal/")
    assert owner.tenant.name in page_text(driver)
    check_page(driver, "flow-10-dashboard-with-two-factor")


def test_password_reset(driver: Any, portal_server: PortalServer, owner: Owner) -> None:
    email = f"forgetful-{RUN}@example.com"
    make_user(email, tenants={owner.tenant.name: "member"})
    url = portal_server.url
    driver.get(url + "/accounts/login/")
    driver.find_element(By.CSS_SELECTOR, "main a[href$='/accounts/password/reset/']").click()
    wait_for_path(driver, "/accounts/password/reset/")
    fill(driver, email=email)
    submit(driver)
    wait_for_path(driver, "/accounts/password/reset/done/")

    driver.get(portal_server.link_in_email(email, "/accounts/password/reset/key/"))
    wait_for_path(driver, "/accounts/password/reset/key/")  # allauth redirects to a form
    check_page(driver, "flow-11-password-reset-key")
    fill(driver, password1=NEW_PASSWORD, password2=NEW_PASSWORD)
    submit(driver)
    check_page(driver, "flow-12-password-reset-done")
    login(driver, email, NEW_PASSWORD)
    wait_for_path(driver, "/portal/")


def test_language_from_browser_switched_and_remembered(
        driver: Any, portal_server: PortalServer, owner: Owner) -> None:
    url = portal_server.url
    # No choice made yet: the browser's Accept-Language decides.
    user_agent = driver.execute_script("return navigator.userAgent")
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setUserAgentOverride", {
        "userAgent": user_agent, "acceptLanguage": "zh-CN,zh"})
    try:
        driver.get(url + "/accounts/login/")
        assert html_lang(driver) == "zh-hans"
        check_page(driver, "flow-13-login-chinese-browser")
    finally:
        driver.execute_cdp_cmd("Network.setUserAgentOverride", {
            "userAgent": user_agent, "acceptLanguage": "en-US,en"})
        driver.execute_cdp_cmd("Network.disable", {})
    driver.get(url + "/accounts/login/")
    assert html_lang(driver) == "en"

    # Switched in the header, remembered on every page after, and switched back.
    login(driver, owner.email, owner.password)
    wait_for_path(driver, "/portal/")
    select_option(driver, "lang-switch", "zh-hans")
    # The switch is a form POST that comes back to this page: wait for its cookie and the
    # page it answers with, not just for the path (which never changed).
    WebDriverWait(driver, 20).until(
        lambda d: (d.get_cookie("django_language") or {}).get("value") == "zh-hans"
        and html_lang(d) == "zh-hans")
    check_page(driver, "flow-14-dashboard-chinese")
    for path in ("/accounts/email/", "/accounts/2fa/", "/portal/"):
        driver.get(url + path)
        assert html_lang(driver) == "zh-hans", path
    # allauth's own catalogue is Chinese already: its pages show Chinese words.
    driver.get(url + "/accounts/email/")
    assert any("\u4e00" <= ch <= "\u9fff" for ch in page_text(driver)), \
        (driver.current_url, page_text(driver)[:500])
    check_page(driver, "flow-15-account-chinese")
    # Still Chinese after logging out (the choice is a cookie, not the session).
    logout(driver)
    assert html_lang(driver) == "zh-hans"
    login(driver, owner.email, owner.password)
    select_option(driver, "lang-switch", "en")
    assert html_lang(driver) == "en"


def test_tenant_switcher(driver: Any, portal_server: PortalServer, owner: Owner) -> None:
    url = portal_server.url
    login(driver, owner.email, owner.password)
    wait_for_path(driver, "/portal/")
    switcher = Select(driver.find_element(By.ID, "tenant-switch"))
    assert switcher.first_selected_option.get_attribute("value") == str(owner.tenant.pk)
    assert [o.text for o in switcher.options] == ["acme (Owner)", "globex (Member)"]
    check_page(driver, "flow-16-dashboard-acme")

    select_option(driver, "tenant-switch", str(owner.other_tenant.pk))
    wait_for_path(driver, "/portal/")
    assert driver.find_element(By.CSS_SELECTOR, "main").text.count(owner.other_tenant.name)
    check_page(driver, "flow-17-dashboard-globex")
    # Remembered on the next pages (the session), and back to the page it was chosen on.
    driver.get(url + "/accounts/email/")
    switcher = Select(driver.find_element(By.ID, "tenant-switch"))
    assert switcher.first_selected_option.get_attribute("value") == str(owner.other_tenant.pk)
    select_option(driver, "tenant-switch", str(owner.tenant.pk))
    assert path_of(driver) == "/accounts/email/"
    driver.get(url + "/portal/")
    assert owner.tenant.name in driver.find_element(By.CSS_SELECTOR, "main").text


def test_wrong_password_is_refused(driver: Any, portal_server: PortalServer,
                                   owner: Owner) -> None:
    driver.get(portal_server.url + "/accounts/login/")
    fill(driver, login=owner.email, password="not-" + PASSWORD)
    submit(driver)
    assert path_of(driver) == "/accounts/login/"
    check_page(driver, "flow-18-login-failed")
