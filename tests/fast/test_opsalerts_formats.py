"""Operator alerts, the pure parts: webhook entries and their payload styles, the chat text,
and the Redis health listeners that report an outage's start and end once each."""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core.exceptions import ImproperlyConfigured

from gateway.opsalerts import Webhook, describe, parse_webhook, text, webhook_body
from portal.infra.redishealth import RedisHealth

ALERT = {"kind": "upstream_down", "subject": "7", "state": "firing",
         "summary": "Upstream main auto-disabled", "admin_url": "https://tp.example/admin/x/",
         "at": "2026-01-01T00:00:00+00:00"}


@pytest.mark.parametrize(("entry", "expected"), [
    ("https://hooks.example/a", Webhook("json", "https://hooks.example/a")),
    ("json+https://hooks.example/a", Webhook("json", "https://hooks.example/a")),
    ("slack+https://hooks.slack.example/services/T/B/X",
     Webhook("slack", "https://hooks.slack.example/services/T/B/X")),
    ("feishu+https://open.feishu.example/hook/abc?secret=s3",
     Webhook("feishu", "https://open.feishu.example/hook/abc", "s3")),
    ("dingtalk+https://oapi.dingtalk.example/robot/send?access_token=t&secret=s4",
     Webhook("dingtalk", "https://oapi.dingtalk.example/robot/send?access_token=t", "s4")),
    # A URL whose own query holds a '+' is still a plain URL.
    ("https://hooks.example/a?x=1+2", Webhook("json", "https://hooks.example/a?x=1+2")),
])
def test_webhook_entries(entry, expected):
    assert parse_webhook(entry) == expected


def test_a_webhook_is_named_by_style_and_host_only():
    assert describe("slack+https://hooks.slack.example/services/T/B/SECRET") == (
        "slack webhook hooks.slack.example")
    assert describe("email") == "email"


def test_the_chat_text_says_state_summary_and_link():
    assert text(ALERT) == ("[Turnpike] FIRING: Upstream main auto-disabled\n"
                           "https://tp.example/admin/x/")
    assert text({**ALERT, "state": "resolved", "admin_url": ""}) == (
        "[Turnpike] RESOLVED: Upstream main auto-disabled")


def test_payload_styles():
    message = text(ALERT)
    assert webhook_body(Webhook("json", "https://h/"), ALERT) == ("https://h/", ALERT)
    assert webhook_body(Webhook("slack", "https://h/"), ALERT) == ("https://h/",
                                                                   {"text": message})
    assert webhook_body(Webhook("feishu", "https://h/"), ALERT) == (
        "https://h/", {"msg_type": "text", "content": {"text": message}})
    assert webhook_body(Webhook("dingtalk", "https://h/?access_token=t"), ALERT) == (
        "https://h/?access_token=t", {"msgtype": "text", "text": {"content": message}})


def test_signed_feishu_and_dingtalk_calls():
    url, body = webhook_body(Webhook("feishu", "https://h/", "fs"), ALERT,
                             now=lambda: 1700000000.5)
    assert body["timestamp"] == "1700000000"
    assert body["sign"] == base64.b64encode(
        hmac.new(b"1700000000\nfs", b"", hashlib.sha256).digest()).decode()

    url, body = webhook_body(Webhook("dingtalk", "https://h/send?access_token=t", "dt"), ALERT,
                             now=lambda: 1700000000.5)
    query = parse_qs(urlsplit(url).query)
    assert query["access_token"] == ["t"] and query["timestamp"] == ["1700000000500"]
    expected = base64.b64encode(hmac.new(b"dt", b"1700000000500\ndt",
                                         hashlib.sha256).digest()).decode()
    assert query["sign"] == [expected]


def test_a_bad_webhook_entry_stops_start_up(monkeypatch):
    import importlib

    import portal.settings.base as base

    monkeypatch.setenv("OPERATOR_ALERT_WEBHOOKS", "teams+https://x.example/,ftp://y")
    with pytest.raises(ImproperlyConfigured, match="OPERATOR_ALERT_WEBHOOKS"):
        importlib.reload(base)
    monkeypatch.delenv("OPERATOR_ALERT_WEBHOOKS")
    importlib.reload(base)


def test_redis_health_tells_listeners_of_each_outage_once():
    health = RedisHealth()
    heard: list[tuple[bool, str]] = []
    health.on_change(lambda down, detail: heard.append((down, detail)))
    health.on_change(lambda down, detail: 1 / 0)  # a failing listener changes nothing
    health.succeeded()
    health.failed(ConnectionError("refused"))
    health.failed(ConnectionError("refused again"))
    health.succeeded()
    health.succeeded()
    health.failed(TimeoutError("slow"))
    assert [down for down, _ in heard] == [True, False, True]
    assert heard[0][1] == "ConnectionError: refused" and heard[2][1] == "TimeoutError: slow"
    assert heard[1][1].startswith("after ")
