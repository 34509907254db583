"""The portal in Simplified Chinese: every page rendered for a zh-CN browser shows no English
string of the catalogue (and no English sentence outside it), the catalogue is complete
(no empty or fuzzy entry, compiled), the language switcher is remembered, dates and numbers
follow the language, and the emails are written in Chinese when the language is zh-hans."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone, translation

from billing.models import LedgerEntry, ModelPrice, UsageLog
from gateway.services import upstream_create
from keys.models import Invitation, Membership, Tenant
from keys.services import key_create
from portal import invitations
from portal.tasks import alert_keys, alert_low_balance

pytestmark = pytest.mark.django_db

PO = Path(settings.BASE_DIR) / "locale" / "zh_Hans" / "LC_MESSAGES" / "django.po"
MO = PO.with_suffix(".mo")
ZH = {"HTTP_ACCEPT_LANGUAGE": "zh-CN,zh;q=0.9,en;q=0.5"}


# --- The catalogue ---------------------------------------------------------------------------

def _unquote(raw: str) -> str:
    return re.sub(r'\\(.)', lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), raw)


def catalogue() -> list[dict]:
    """The .po's entries: msgid, msgid_plural, msgstr (or msgstr[n]) and flags."""
    entries = []
    for block in PO.read_text(encoding="utf-8").strip().split("\n\n"):
        entry: dict = {"flags": set(), "msgstr": []}
        key = None
        for line in block.splitlines():
            if line.startswith("#,"):
                entry["flags"] |= {f.strip() for f in line[2:].split(",")}
            elif line.startswith("#~"):
                entry["obsolete"] = True
            elif line.startswith("#"):
                continue
            elif line.startswith('"'):
                entry[key] = entry[key] + _unquote(line[1:-1]) if key != "msgstr" else \
                    entry["msgstr"][:-1] + [entry["msgstr"][-1] + _unquote(line[1:-1])]
            else:
                word, _, rest = line.partition(" ")
                text = _unquote(rest[1:-1])
                if word.startswith("msgstr"):
                    key = "msgstr"
                    entry["msgstr"].append(text)
                else:
                    key = word
                    entry[word] = text
        entries.append(entry)
    return entries


def translated() -> dict[str, str]:
    """msgid → Chinese, for the entries without placeholders (whole UI strings)."""
    return {e["msgid"]: e["msgstr"][0] for e in catalogue()
            if e.get("msgid") and "%(" not in e["msgid"] and "{" not in e["msgid"]}


def test_the_catalogue_is_complete_and_compiled():
    entries = catalogue()
    header, rest = entries[0], entries[1:]
    assert header["msgid"] == "" and "fuzzy" not in header["flags"]
    assert "Plural-Forms: nplurals=1; plural=0;" in header["msgstr"][0]
    assert len(rest) > 400
    for e in rest:
        assert not e.get("obsolete"), e["msgid"]
        assert "fuzzy" not in e["flags"], e["msgid"]
        assert e["msgstr"] and all(s.strip() for s in e["msgstr"]), e["msgid"]
        for placeholder in re.findall(r"%\(\w+\)[sdr]|\{\w+\}", e["msgid"]):
            assert all(placeholder in s for s in e["msgstr"]), (e["msgid"], placeholder)
    # The compiled catalogue is committed and not older than its source's content.
    assert MO.exists() and MO.stat().st_size > 10_000
    with translation.override("zh-hans"):
        for e in rest[:: max(1, len(rest) // 40)]:
            if "msgid_plural" not in e and "msgctxt" not in e:
                assert translation.gettext(e["msgid"]) == e["msgstr"][0], e["msgid"]


def test_the_vocabulary_is_consistent():
    """One word per concept, as Chinese gateway consoles say it."""
    zh = translated()
    assert zh["Keys"] == "API 密钥" and zh["Create a key"] == "创建 API 密钥"
    assert zh["Balance"] == "余额" and zh["Quota"] == "额度" and zh["Usage"] == "用量"
    assert zh["Group"] == "分组" and zh["Redemption code"] == "兑换码"
    assert zh["Top-up"] == "充值" and zh["Upstream"] == "渠道" and zh["Models"] == "模型"
    for e in catalogue()[1:]:
        for s in e["msgstr"]:
            assert "令牌" not in s, e["msgid"]  # keys are API 密钥 throughout


# --- The pages -------------------------------------------------------------------------------

class _Text(HTMLParser):
    """Visible text nodes and human-read attributes, outside code, scripts and data."""

    SKIP = {"script", "style", "code", "pre", "option", "datalist", "textarea"}
    ATTRS = {"aria-label", "title", "placeholder", "alt", "data-copied-label"}

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []
        self.stack: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("br", "input", "meta", "link", "img", "hr", "wbr", "source"):
            self._attrs(attrs)
            return
        classes = (dict(attrs).get("class") or "").split()
        skip = tag in self.SKIP or "mono" in classes
        self.stack.append(tag if not skip else "!" + tag)
        if skip:
            self.skipping += 1
        if not self.skipping:
            self._attrs(attrs)

    def _attrs(self, attrs):
        for name, value in attrs:
            if (name in self.ATTRS or (name.startswith("data-") and name not in (
                    "data-testid", "data-key-id", "data-prefix", "data-last4", "data-model",
                    "data-cost-url", "data-detail-url", "data-live", "data-copy",
                    "data-request-id"))) and value:
                self.texts.append(value.strip())

    def handle_endtag(self, tag):
        while self.stack:
            top = self.stack.pop()
            if top.startswith("!"):
                self.skipping -= 1
            if top.lstrip("!") == tag:
                break

    def handle_data(self, data):
        if not self.skipping and data.strip():
            self.texts.append(" ".join(data.split()))


def texts_of(html: str) -> list[str]:
    parser = _Text()
    parser.feed(html)
    return parser.texts


# An English phrase: two or more words of letters (what a forgotten {% translate %} leaves).
ENGLISH = re.compile(r"^[A-Za-z][A-Za-z'’-]*(?:[,.:;!?()/-]*\s+[(]?[A-Za-z][A-Za-z'’-]*)+[.:!?)]?$")
# Names that stay English in Chinese too (products, APIs, the demo data below).
KEEP = {"Chat Completions", "Codex CLI", "curl: Responses API", "openai Python SDK",
        "openai Node SDK", "Log in", "Turnpike"}


def untranslated(html: str, zh: dict[str, str]) -> list[str]:
    chinese = set(zh.values())
    found = []
    for text in texts_of(html):
        if text in zh and zh[text] != text:
            found.append(text)  # a catalogue string left in English
        elif ENGLISH.match(text) and text not in chinese and text not in KEEP:
            found.append(text)  # an English phrase that is not in the catalogue at all
    return found


@pytest.fixture
def world():
    upstream_create(name="oa", kind="openai", base_url="http://127.0.0.1:9/v1",
                    models=["gpt-5"], api_keys=["sk-upstream-1234"])
    ModelPrice.objects.create(model="gpt-5", input_per_million=Decimal("1.25"),
                              cached_input_per_million=Decimal("0.125"),
                              output_per_million=Decimal("10"))
    tenant = Tenant.objects.create(name="acme", balance=Decimal("1234567.5"),
                                   low_balance_threshold=Decimal("10"))
    user = get_user_model().objects.create_user(username="o@example.com", email="o@example.com",
                                                password="pw-12345!")
    Membership.objects.create(tenant=tenant, user=user, role="owner")
    other = get_user_model().objects.create_user(username="m@example.com",
                                                 email="m@example.com", password="pw-12345!")
    Membership.objects.create(tenant=tenant, user=other, role="member")
    Invitation.objects.create(tenant=tenant, email="new@example.com", role="admin",
                              invited_by=user)
    made = key_create(tenant=tenant, name="ci", created_by=user, quota=Decimal("100"),
                      expires_at=timezone.now() + dt.timedelta(days=40))
    LedgerEntry.objects.create(tenant=tenant, kind="topup", amount=Decimal("1000"),
                               reference="r1", note="")
    log = UsageLog.objects.create(
        created_at=timezone.now(), request_id="req_i18n_1", tenant=tenant, key=made.key,
        key_prefix=made.key.prefix, endpoint="responses", model="gpt-5", status_code=200,
        input_tokens=12345, cached_tokens=20, output_tokens=50, reasoning_tokens=10,
        cost=Decimal("0.001250"), latency_ms=900, ttfb_ms=300, client_ip="203.0.113.9",
        user_agent="openai-python/2.1")
    client = Client()
    client.force_login(user)
    return {"tenant": tenant, "user": user, "key": made.key, "log": log, "client": client}


def portal_pages(world) -> dict[str, str]:
    key = world["key"]
    return {
        "dashboard": reverse("portal:dashboard"),
        "keys list": reverse("portal:key_list"),
        "new key": reverse("portal:key_create"),
        "key detail": reverse("portal:key_detail", args=[key.pk]),
        "edit key": reverse("portal:key_edit", args=[key.pk]),
        "rotate key": reverse("portal:key_rotate", args=[key.pk]),
        "delete key": reverse("portal:key_delete", args=[key.pk]),
        "usage": reverse("portal:usage"),
        "usage totals": reverse("portal:usage_totals"),
        "usage detail": reverse("portal:usage_detail", args=[world["log"].request_id]),
        "balance": reverse("portal:balance"),
        "models": reverse("portal:models"),
        "quickstart": reverse("portal:quickstart") + f"?key={key.pk}",
        "playground": reverse("portal:playground") + f"?key={key.pk}",
        "members": reverse("portal:members"),
        "settings": reverse("portal:settings"),
        "access tokens": reverse("portal:tokens"),
        "activity": reverse("portal:activity"),
        "account": reverse("account_email"),
        "two-factor": reverse("mfa_index"),
    }


# What each page must show in Chinese (its heading or main labels).
EXPECTED = {
    "dashboard": ["仪表盘"],
    "keys list": ["API 密钥", "最近使用", "额度使用", "创建 API 密钥"],
    "new key": ["创建 API 密钥", "名称和分组", "每分钟请求数", "永不", "7 天后"],
    "key detail": ["允许的模型", "IP 白名单", "本月"],
    "edit key": ["编辑 API 密钥 ci", "保存"],
    "rotate key": ["轮换 API 密钥 ci", "吊销旧 API 密钥", "立即"],
    "delete key": ["删除 API 密钥 ci?"],
    "usage": ["用量", "筛选请求", "导出 CSV(全部筛选结果)", "首字节"],
    "usage totals": ["次请求"],
    "usage detail": ["请求 ID", "Token 与费用", "客户端 IP"],
    "balance": ["余额", "账单流水", "兑换码", "充值", "余额预警"],
    "models": ["模型与价格"],
    "quickstart": ["快速开始", "测试该 API 密钥", "环境变量"],
    "playground": ["操练场", "新对话", "输入 {input} Token"],
    "members": ["成员", "邀请成员", "待接受的邀请", "所有者", "管理员"],
    "settings": ["租户设置", "余额预警阈值"],
    "access tokens": ["访问凭证", "创建凭证", "只读", "读写", "API 文档"],
    "activity": ["操作日志", "变更(之前 → 之后)", "筛选变更", "创建"],
    "account": ["邮箱地址"],
    "two-factor": ["双因素身份认证"],
}


def test_every_portal_page_is_in_chinese_for_a_chinese_browser(world):
    zh = translated()
    client = world["client"]
    problems = {}
    for name, url in portal_pages(world).items():
        page = client.get(url, **ZH)
        assert page.status_code == 200, (name, page.status_code)
        html = page.content.decode()
        assert name == "usage totals" or 'lang="zh-hans"' in html, name
        for text in EXPECTED[name] + (["API 密钥", "用量", "退出登录"]
                                      if name != "usage totals" else []):
            assert text in html, (name, text)
        left = untranslated(html, zh)
        if left:
            problems[name] = left
    assert not problems, problems


def test_the_english_pages_stay_english(world):
    """The same check backwards: in English no Chinese from the catalogue leaks in."""
    client = world["client"]
    for name, url in portal_pages(world).items():
        html = client.get(url, HTTP_ACCEPT_LANGUAGE="en").content.decode()
        assert not re.search(r"[\u4e00-\u9fff]", html.replace("简体中文", "")), name


@override_settings(PORTAL_SIGNUP="open")
def test_login_and_signup_are_in_chinese(world):
    zh = translated()
    anon = Client()
    for name in ("account_login", "account_signup", "account_reset_password"):
        html = anon.get(reverse(name), **ZH).content.decode()
        assert 'lang="zh-hans"' in html and "登录" in html, name
        assert not untranslated(html, zh), (name, untranslated(html, zh))


@override_settings(PORTAL_SIGNUP="closed")
def test_the_closed_signup_page_is_in_chinese():
    html = Client().get(reverse("account_signup"), **ZH).content.decode()
    assert "注册已关闭" in html and "Sign Up Closed" not in html


def test_messages_and_form_errors_are_in_chinese(world):
    client = world["client"]
    client.cookies["django_language"] = "zh-hans"
    page = client.post(reverse("portal:key_create"), {
        "name": "x", "expiry": "never", "allowed_ips": "not-an-ip"}, follow=True)
    assert "不是有效的 IP 地址或 CIDR 网段:not-an-ip。" in page.content.decode()
    page = client.post(reverse("portal:balance_redeem"), {"code": "nope"}, follow=True)
    assert "兑换码无效" in page.content.decode()
    page = client.post(reverse("portal:key_disable", args=[world["key"].pk]), follow=True)
    assert "API 密钥 ci 已禁用。" in page.content.decode()


def test_the_new_key_page_welcome_and_invitation_pages_are_in_chinese(world):
    zh = translated()
    client = world["client"]
    page = client.post(reverse("portal:key_create"), {"name": "新的", "expiry": "never"}, **ZH)
    html = page.content.decode()
    assert page.status_code == 200 and "请立即复制你的 API 密钥" in html
    assert not untranslated(html, zh), untranslated(html, zh)
    page = client.post(reverse("portal:key_rotate", args=[world["key"].pk]), {"grace": "3600"},
                       **ZH)
    html = page.content.decode()
    assert "API 密钥 ci 已轮换" in html and not untranslated(html, zh)
    loner = get_user_model().objects.create_user(username="l@example.com",
                                                 email="l@example.com", password="pw-12345!")
    alone = Client()
    alone.force_login(loner)
    html = alone.get(reverse("portal:welcome"), **ZH).content.decode()
    assert "欢迎使用 Turnpike" in html and not untranslated(html, zh)
    html = alone.get(reverse("portal:invitation", args=["bad-token"]), **ZH).content.decode()
    assert "该邀请无法使用" in html and not untranslated(html, zh)


def test_the_error_pages_are_in_chinese(world):
    member = Client()
    member.force_login(get_user_model().objects.get(email="m@example.com"))
    page = member.get(reverse("portal:settings"), **ZH)
    html = page.content.decode()
    assert page.status_code == 403 and "无权访问" in html
    assert "你在该租户中的角色无权执行此操作。" in html and 'lang="zh-hans"' in html
    other = Tenant.objects.create(name="beta")
    theirs = key_create(tenant=other, name="theirs").key
    page = world["client"].get(reverse("portal:key_detail", args=[theirs.pk]), **ZH)
    assert page.status_code == 404 and "页面不存在" in page.content.decode()
    assert "theirs" not in page.content.decode()
    page = Client().get("/no-such-page/", **ZH)
    assert page.status_code == 404 and "页面不存在" in page.content.decode()
    assert not untranslated(page.content.decode(), translated())


# --- Language choice -------------------------------------------------------------------------

def test_the_language_comes_from_the_browser_and_the_switch_is_remembered(world):
    client = world["client"]
    assert 'lang="zh-hans"' in client.get("/portal/", **ZH).content.decode()
    assert 'lang="en"' in client.get("/portal/", HTTP_ACCEPT_LANGUAGE="en-US").content.decode()
    # The switcher in the header posts to set_language, which sets the cookie...
    html = client.get("/portal/keys/", HTTP_ACCEPT_LANGUAGE="en-US").content.decode()
    assert 'action="/i18n/setlang/"' in html and 'value="zh-hans"' in html
    resp = client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/portal/keys/"})
    assert resp.status_code == 302 and resp["Location"] == "/portal/keys/"
    assert client.cookies[settings.LANGUAGE_COOKIE_NAME].value == "zh-hans"
    # ... which wins over the browser from then on, and a logged-out visitor keeps it too.
    page = client.get("/portal/keys/", HTTP_ACCEPT_LANGUAGE="en-US").content.decode()
    assert 'lang="zh-hans"' in page and "创建 API 密钥" in page
    client.post(reverse("account_logout"))
    page = client.get(reverse("account_login"), HTTP_ACCEPT_LANGUAGE="en-US").content.decode()
    assert 'lang="zh-hans"' in page
    # And back.
    client.post("/i18n/setlang/", {"language": "en", "next": "/"})
    page = client.get(reverse("account_login"), **ZH).content.decode()
    assert 'lang="en"' in page


def test_the_switcher_lists_both_languages_by_their_own_names(world):
    html = world["client"].get("/portal/", **ZH).content.decode()
    assert ">English</option>" in html and ">简体中文</option>" in html
    assert 'value="zh-hans" selected' in html


# --- Dates and numbers -----------------------------------------------------------------------

def test_dates_and_numbers_follow_the_language(world):
    client = world["client"]
    key = world["key"]
    zh = client.get(reverse("portal:key_detail", args=[key.pk]), **ZH).content.decode()
    en = client.get(reverse("portal:key_detail", args=[key.pk]),
                    HTTP_ACCEPT_LANGUAGE="en").content.decode()
    year = timezone.localtime(key.created_at).year
    assert f"{year}年" in zh and f"{year}年" not in en
    balance = client.get(reverse("portal:balance"), **ZH).content.decode()
    assert "1,234,567.50" in balance  # grouped, two decimals
    totals = client.get(reverse("portal:usage_totals"), **ZH).content.decode()
    assert "12,345" in totals
    # Machine fields stay unlocalised: the CSV export and the form's values.
    export = b"".join(client.get(reverse("portal:usage_export"), **ZH).streaming_content)
    assert b"12345" in export and "年".encode() not in export
    assert 'value="10"' in balance or 'value="10.000000"' in balance


# --- Emails ----------------------------------------------------------------------------------

def test_the_invitation_email_is_in_the_language_of_the_page_that_sent_it(world):
    client = world["client"]
    client.cookies["django_language"] = "zh-hans"
    client.post(reverse("portal:member_invite"), {"email": "zh@example.com", "role": "member"})
    message = mail.outbox[-1]
    assert message.subject.endswith("邀请你加入 acme")
    assert "邀请你以成员身份加入" in message.body and "天后过期" in message.body
    with translation.override("en"):
        invitations.send(None, Invitation.objects.get(email="zh@example.com"))
    assert "You are invited to join acme" in mail.outbox[-1].subject


@override_settings(LANGUAGE_CODE="zh-hans")
def test_alert_emails_are_in_chinese_when_the_language_is_zh_hans(world):
    Tenant.objects.filter(pk=world["tenant"].pk).update(balance=Decimal("5"))
    assert alert_low_balance() == 1
    message = mail.outbox[-1]
    assert "acme 余额不足" in message.subject
    assert "可用余额已低于预警阈值" in message.body and "预警阈值:" in message.body
    mail.outbox.clear()
    key = world["key"]
    key.expires_at = timezone.now() + dt.timedelta(days=2)
    key.quota_used = Decimal("95")
    key.save(update_fields=["expires_at", "quota_used"])
    alert_keys()
    subjects = sorted(m.subject for m in mail.outbox)
    assert any("API 密钥“ci”即将过期" in s for s in subjects), subjects
    assert any("API 密钥“ci”额度即将用尽" in s for s in subjects), subjects
    assert all(not re.search(r"\b(the|key|quota|expires)\b", m.body) for m in mail.outbox)


def test_the_page_check_catches_english_left_behind():
    zh = translated()
    html = ('<main><h1>Create a key</h1><p>A sentence someone forgot to mark.</p>'
            '<button aria-label="Remove it now">x</button><code>export A=b c</code>'
            '<p>创建 API 密钥</p><p>Chat Completions</p></main>')
    assert untranslated(html, zh) == ["Create a key", "A sentence someone forgot to mark.",
                                      "Remove it now"]
