"""Operator alerts (gateway.opsalerts): every trigger delivers once to a local webhook
receiver and to email, not again while it is still firing, "resolved" once when it ends,
and again after a new failure. Deliveries happen off the caller's path (a thread, or a
Celery worker), so each is waited for with a deadline."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import tempfile
import time
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from django.conf import settings
from django.core import mail
from django.core.management import CommandError, call_command
from django.test import override_settings

from billing.usage import drain_spool, journal_length
from gateway import opsalerts
from gateway.models import AlertKind, Credential, OperatorAlert, Upstream
from gateway.services import upstream_create
from gateway.tasks import probe_upstreams
from keys.models import Status
from portal.infra.redis import sync_redis
from tests.conftest import UPSTREAM_SECRET, gateway_env, wait_for_usage
from tests.gateway.webhooks import Receiver, wait_for
from tests.servers import (
    RedisServer,
    free_port,
    start_celery_worker,
    start_fake_upstream,
    start_gateway,
    stop,
)

pytestmark = [pytest.mark.django_db(transaction=True)]
needs_redis = pytest.mark.skipif(not os.environ.get("REDIS_URL"),
                                 reason="the journal, the broker and the outage need Redis")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _outbox() -> None:
    mail.outbox = []


def states(bodies: list[dict[str, Any]]) -> list[str]:
    return [b["state"] for b in bodies]


def alerts_to(receiver: Receiver, *hooks: str) -> Any:
    return override_settings(OPERATOR_ALERT_EMAILS=["ops@example.com", "oncall@example.com"],
                             OPERATOR_ALERT_WEBHOOKS=list(hooks),
                             PORTAL_BASE_URL="https://turnpike.example")


def wait_emails(count: int) -> list[Any]:
    wait_for(lambda: len(mail.outbox) >= count, 20, f"{count} emails")
    assert len(mail.outbox) == count, [m.subject for m in mail.outbox]
    return list(mail.outbox)


# --- formats -------------------------------------------------------------------------------

def test_the_test_command_reaches_every_format_and_email(receiver):
    receiver.answers["/feishu"] = {"code": 0, "msg": "success"}
    receiver.answers["/dingtalk"] = {"errcode": 0, "errmsg": "ok"}
    hooks = [receiver.url("/generic"), "slack+" + receiver.url("/slack"),
             "feishu+" + receiver.url("/feishu?secret=fs-secret"),
             "dingtalk+" + receiver.url("/dingtalk?access_token=tok&secret=dt-secret")]
    out = StringIO()
    with alerts_to(receiver, *hooks):
        call_command("opsalert", "test", stdout=out)
    assert out.getvalue().count("delivered") == 5, out.getvalue()

    [generic] = receiver.bodies("/generic")
    assert set(generic) == {"kind", "subject", "state", "summary", "admin_url", "at"}
    assert generic["state"] == "firing" and generic["kind"] == "test"
    assert generic["admin_url"] == "https://turnpike.example/admin/gateway/operatoralert/"
    [slack] = receiver.bodies("/slack")
    assert list(slack) == ["text"] and slack["text"].startswith("[Turnpike] FIRING: A test")
    assert generic["admin_url"] in slack["text"]

    [feishu_call] = [c for c in receiver.calls if c["path"] == "/feishu"]
    assert feishu_call["query"] == {}  # the secret never leaves Turnpike
    feishu = feishu_call["body"]
    assert feishu["msg_type"] == "text" and feishu["content"]["text"] == slack["text"]
    key = f"{feishu['timestamp']}\nfs-secret".encode()
    assert feishu["sign"] == base64.b64encode(
        hmac.new(key, b"", hashlib.sha256).digest()).decode()

    [ding_call] = [c for c in receiver.calls if c["path"] == "/dingtalk"]
    assert ding_call["body"] == {"msgtype": "text", "text": {"content": slack["text"]}}
    query = {k: v[0] for k, v in ding_call["query"].items()}
    assert set(query) == {"access_token", "timestamp", "sign"}
    digest = hmac.new(b"dt-secret", f"{query['timestamp']}\ndt-secret".encode(),
                      hashlib.sha256).digest()
    assert unquote(query["sign"]) == base64.b64encode(digest).decode()

    [email] = mail.outbox
    assert email.to == ["ops@example.com", "oncall@example.com"]
    assert "FIRING: A test alert" in email.subject
    assert generic["admin_url"] in email.body


def test_the_test_command_names_a_target_that_refused(receiver):
    receiver.answers["/feishu"] = {"code": 19021, "msg": "sign match fail"}
    receiver.failures["/down"] = 1
    with alerts_to(receiver, "feishu+" + receiver.url("/feishu"), receiver.url("/down")), \
            pytest.raises(CommandError) as raised:
        call_command("opsalert", "test", stdout=StringIO())
    assert "feishu webhook 127.0.0.1" in str(raised.value)
    assert "json webhook 127.0.0.1" in str(raised.value)


# --- upstream auto-disabled / re-enabled ----------------------------------------------------

@override_settings(GATEWAY_HEALTH_FAILURES=2)
def test_an_upstream_down_and_back_alerts_once_per_change(receiver, fake_upstream):
    closed = f"http://127.0.0.1:{free_port()}/v1"
    upstream = upstream_create(name="flaky", kind="openai", base_url=closed, models=["m"],
                               api_keys=[UPSTREAM_SECRET])
    with alerts_to(receiver, receiver.url("/hook"), "slack+" + receiver.url("/slack")):
        assert probe_upstreams() == {"flaky": False}
        assert OperatorAlert.objects.count() == 0  # one failure: not disabled yet
        probe_upstreams()
        assert Upstream.objects.get(pk=upstream.pk).auto_disabled
        [down] = receiver.wait("/hook", 1)
        assert down["kind"] == "upstream_down" and down["subject"] == str(upstream.pk)
        assert down["state"] == "firing" and "flaky" in down["summary"]
        assert down["admin_url"] == (
            f"https://turnpike.example/admin/gateway/upstream/{upstream.pk}/change/")
        assert "auto-disabled" in receiver.wait("/slack", 1)[0]["text"]
        assert "FIRING" in wait_emails(1)[0].subject

        probe_upstreams()  # still down: no new alert
        probe_upstreams()
        alert = OperatorAlert.objects.get(kind=AlertKind.UPSTREAM_DOWN)
        assert alert.firing and alert.last_sent_at is not None

        Upstream.objects.filter(pk=upstream.pk).update(base_url=fake_upstream.openai_url)
        probe_upstreams()
        assert states(receiver.wait("/hook", 2)) == ["firing", "resolved"]
        assert "RESOLVED" in wait_emails(2)[1].subject
        probe_upstreams()  # still healthy: nothing

        Upstream.objects.filter(pk=upstream.pk).update(base_url=closed)
        probe_upstreams()
        probe_upstreams()
        assert states(receiver.wait("/hook", 3)) == ["firing", "resolved", "firing"]
        assert len(receiver.wait("/slack", 3)) == 3
        wait_emails(3)


def test_a_state_change_is_delivered_by_one_caller_only(receiver):
    """What makes "once across all processes" true: the conditional write. Many callers
    reporting the same change: one wins."""
    with alerts_to(receiver, receiver.url("/hook")):
        won = [opsalerts.transition("error_rate", "", True, "too many errors", "/admin/")
               for _ in range(5)]
        assert won == [True, False, False, False, False]
        assert not opsalerts.transition("usage_spool", "", False, "never fired", "/admin/")
        receiver.wait("/hook", 1)
        wait_emails(1)


def test_a_webhook_that_fails_is_retried(receiver):
    receiver.failures["/hook"] = 1
    with alerts_to(receiver, receiver.url("/hook")):
        opsalerts.transition("error_rate", "", True, "too many errors", "/admin/")
        [alert] = receiver.wait("/hook", 1)
    assert alert["summary"] == "too many errors"
    row = wait_for(lambda: OperatorAlert.objects.filter(last_sent_at__isnull=False).first(),
                   10, "the delivery noted")
    assert row.last_error == ""


# --- credential disabled by a 401 -----------------------------------------------------------

@needs_redis
@pytest.mark.e2e
def test_a_credential_refused_with_401_alerts_once_through_a_celery_worker(
        receiver, api_key, tmp_path):
    """A real gateway sees the 401 and disables the credential; a real Celery worker
    delivers (webhook, and email on the console backend: its log)."""
    fake = start_fake_upstream()
    hooks = receiver.url("/hook") + ",dingtalk+" + receiver.url("/ding")
    env = gateway_env(OPERATOR_ALERT_WEBHOOKS=hooks, OPERATOR_ALERT_EMAILS="ops@example.com",
                      GATEWAY_SNAPSHOT_TTL="0", CELERY_TASK_ALWAYS_EAGER="0",
                      EMAIL_BACKEND="django.core.mail.backends.console.EmailBackend")
    client = sync_redis()
    assert client is not None
    client.delete("celery")  # tasks an interrupted run left in the queue
    worker = start_celery_worker(env, tmp_path / "worker.log")
    gw = start_gateway(env)
    try:
        refusing = upstream_create(name="refusing", kind="openai", base_url=fake.openai_url,
                                   models=["am"], api_keys=["sk-revoked"], priority=1)
        upstream_create(name="fallback", kind="openai", base_url=fake.openai_url,
                        models=["am"], api_keys=["sk-fine"])
        fake.script_key("sk-revoked", status=401)
        credential = Credential.objects.get(upstream=refusing)

        def chat() -> httpx.Response:
            return httpx.post(gw.base_url + "/chat/completions", timeout=30,
                              headers={"Authorization": f"Bearer {api_key.secret}"},
                              json={"model": "am", "messages": [{"role": "user",
                                                                 "content": "hi"}]})

        assert chat().status_code == 200
        [fired] = receiver.wait("/hook", 1)
        assert fired["kind"] == "credential_disabled" and fired["state"] == "firing"
        assert fired["subject"] == str(credential.pk) and "401" in fired["summary"]
        assert "FIRING" in receiver.wait("/ding", 1)[0]["text"]["content"]
        wait_for(lambda: worker.log.read_text().count("State: firing") == 1,
                 20, "the email on the worker's console")
        for _ in range(3):  # the credential is out of rotation: the fallback serves
            assert chat().status_code == 200

        # An operator fixes the key upstream and re-enables it (this process: the admin's).
        fake.clear()
        with alerts_to(receiver, receiver.url("/hook")):
            credential.refresh_from_db()
            credential.status = Status.ACTIVE
            credential.disabled_reason = ""
            credential.save()
            assert states(receiver.wait("/hook", 2)) == ["firing", "resolved"]
            assert "RESOLVED" in wait_emails(1)[0].subject

        fake.script_key("sk-revoked", status=403)  # refused again
        assert chat().status_code == 200
        assert states(receiver.wait("/hook", 3)) == ["firing", "resolved", "firing"]
        wait_for(lambda: worker.log.read_text().count("State: firing") == 2,
                 20, "the second email on the worker's console")
        assert len(receiver.wait("/ding", 2)) == 2
        assert "Traceback" not in worker.log.read_text()
    finally:
        stop(gw.proc)
        worker.stop()
        stop(fake.proc)


# --- Redis failure mode -----------------------------------------------------------------------

@needs_redis
@pytest.mark.e2e
def test_redis_unreachable_alerts_once_and_again_after_it_came_back(receiver, tmp_path):
    """A gateway on a private Redis that is stopped, started and stopped again; /readyz
    probes are what notice (no traffic needed). Delivery from the gateway process itself
    (the broker is that Redis): webhook and console email (the gateway's log)."""
    redis = RedisServer(Path(tempfile.mkdtemp(prefix="tp-redis-")))
    redis.start()
    log = tmp_path / "gateway.log"
    gw = start_gateway(gateway_env(
        REDIS_URL=redis.url, GATEWAY_REDIS_PREFIX="gwalert:", LOG_LEVEL="WARNING",
        OPERATOR_ALERT_WEBHOOKS="slack+" + receiver.url("/slack"),
        OPERATOR_ALERT_EMAILS="ops@example.com",
        EMAIL_BACKEND="django.core.mail.backends.console.EmailBackend"), log=log)

    def ready() -> int:
        return httpx.get(gw.url + "/readyz", timeout=10).status_code

    try:
        assert ready() == 200
        redis.stop()
        wait_for(lambda: ready() == 503, 20, "/readyz failing")
        [down] = receiver.wait("/slack", 1)
        assert down["text"].startswith("[Turnpike] FIRING: Redis is unreachable")
        assert "GATEWAY_REDIS_FAILURE=closed" in down["text"]
        for _ in range(3):  # still down
            assert ready() == 503
            time.sleep(0.3)
        redis.start()
        wait_for(lambda: ready() == 200, 20, "/readyz passing again")
        assert receiver.wait("/slack", 2)[1]["text"].startswith(
            "[Turnpike] RESOLVED: Redis is reachable again")
        redis.stop()
        wait_for(lambda: ready() == 503, 20, "/readyz failing again")
        assert "FIRING" in receiver.wait("/slack", 3)[2]["text"]
        wait_for(lambda: log.read_text().count("Kind: redis_failure") == 3, 20,
                 "three emails on the gateway's console")
        text = log.read_text()
        assert text.count("State: firing") == 2, text[-3000:]
        assert text.count("State: resolved") == 1, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
        assert [a.firing for a in OperatorAlert.objects.filter(kind="redis_failure")] == [True]
    finally:
        stop(gw.proc)
        redis.stop()


# --- the usage spool ---------------------------------------------------------------------------

@needs_redis
@pytest.mark.e2e
@override_settings(OPERATOR_ALERT_SPOOL_SECONDS=60, OPERATOR_ALERT_ERROR_RATE=0)
def test_a_usage_spool_that_does_not_move_alerts(receiver, api_key, upstream):
    """GATEWAY_USAGE_SINK=redis and no usagewriter: the rows stay in the journal. The
    check's clock is passed in (``now``), so a minute passes without waiting for it. Its
    own key prefix: every other gateway process of the run drains the journal it shares."""
    prefix = settings.GATEWAY_REDIS_PREFIX + "spool:"
    gw = start_gateway(gateway_env(GATEWAY_USAGE_SINK="redis", GATEWAY_SNAPSHOT_TTL="0",
                                   GATEWAY_REDIS_PREFIX=prefix))

    def request() -> None:
        resp = httpx.post(gw.base_url + "/chat/completions", timeout=30,
                          headers={"Authorization": f"Bearer {api_key.secret}"},
                          json={"model": "gpt-4o-mini",
                                "messages": [{"role": "user", "content": "hi"}]})
        assert resp.status_code == 200

    try:
        with alerts_to(receiver, receiver.url("/hook")), \
                override_settings(GATEWAY_REDIS_PREFIX=prefix):
            request()
            wait_for(lambda: journal_length() >= 1, 10, "the row in the journal")
            now = time.time()
            assert opsalerts.check(now) == {"usage_spool": False, "error_rate": None}
            assert opsalerts.check(now + 30)["usage_spool"] is False
            request()  # a second row behind the first: the front has still not moved
            assert opsalerts.check(now + 61)["usage_spool"] is True
            [fired] = receiver.wait("/hook", 1)
            assert fired["kind"] == "usage_spool" and "2 usage rows" in fired["summary"]
            assert opsalerts.check(now + 90)["usage_spool"] is True  # no second delivery
            wait_emails(1)

            assert drain_spool() == 2  # the writer catches up
            assert opsalerts.check(now + 100)["usage_spool"] is False
            assert states(receiver.wait("/hook", 2)) == ["firing", "resolved"]

            request()
            wait_for(lambda: journal_length() >= 1, 10, "the next row in the journal")
            later = time.time()
            opsalerts.check(later)
            assert opsalerts.check(later + 61)["usage_spool"] is True
            assert states(receiver.wait("/hook", 3)) == ["firing", "resolved", "firing"]
            wait_emails(3)
    finally:
        stop(gw.proc)
        with override_settings(GATEWAY_REDIS_PREFIX=prefix):
            drain_spool()


# --- the error rate -----------------------------------------------------------------------------

@pytest.mark.e2e
@override_settings(OPERATOR_ALERT_ERROR_RATE=0.5, OPERATOR_ALERT_ERROR_WINDOW=600,
                   OPERATOR_ALERT_ERROR_MIN_REQUESTS=4)
def test_an_error_rate_over_the_threshold_alerts(receiver, gateway, api_key, upstream):
    """Real requests through the gateway: to a model whose upstream is not listening (a
    5xx each) and to one that answers."""
    upstream_create(name="dead", kind="openai", base_url=f"http://127.0.0.1:{free_port()}/v1",
                    models=["dead-model"], api_keys=["sk-dead-credential"])

    def requests(model: str, count: int) -> None:
        for _ in range(count):
            resp = httpx.post(gateway.base_url + "/chat/completions", timeout=30,
                              headers={"Authorization": f"Bearer {api_key.secret}"},
                              json={"model": model,
                                    "messages": [{"role": "user", "content": "hi"}]})
            assert (resp.status_code >= 500) == (model == "dead-model"), resp.text
            wait_for_usage(resp.headers["x-request-id"])

    with alerts_to(receiver, "slack+" + receiver.url("/slack")):
        requests("dead-model", 3)
        assert opsalerts.check_error_rate(time.time()) is None  # under the minimum count
        requests("dead-model", 1)
        assert opsalerts.check_error_rate(time.time()) is True
        [fired] = receiver.wait("/slack", 1)
        assert "FIRING: Error rate 100%: 4 of the 4 requests" in fired["text"]
        assert fired["text"].endswith("https://turnpike.example/admin/billing/usagelog/")
        assert opsalerts.check_error_rate(time.time()) is True  # still firing: not again

        requests("gpt-4o-mini", 5)
        assert opsalerts.check_error_rate(time.time()) is False  # 4 of 9
        assert "RESOLVED: Error rate back under" in receiver.wait("/slack", 2)[1]["text"]
        assert opsalerts.check_error_rate(time.time()) is False

        requests("dead-model", 6)  # 10 of 15
        assert opsalerts.check_error_rate(time.time()) is True
        assert "FIRING" in receiver.wait("/slack", 3)[2]["text"]
        subjects = [m.subject for m in wait_emails(3)]
        assert ["FIRING" in s for s in subjects] == [True, False, True]


def test_nothing_is_recorded_without_a_target():
    assert settings.OPERATOR_ALERT_EMAILS == [] and settings.OPERATOR_ALERT_WEBHOOKS == []
    assert not opsalerts.transition("error_rate", "", True, "x", "/admin/")
    assert opsalerts.check() == {}
    assert not OperatorAlert.objects.exists()


@pytest.mark.django_db
def test_the_error_rate_counts_failures_as_the_dashboards_do():
    """Failed: a 5xx, or an upstream failure whatever its status (a stream cut after its 200,
    an upstream's 429 that made it unavailable); a client's own 4xx is not. Only the
    window's rows count, its end included and its start not."""
    from datetime import UTC, datetime, timedelta

    from billing.models import UsageLog

    end = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
    rows = [(end, 200, "upstream_stream_cut"), (end - timedelta(seconds=10), 502,
                                                 "upstream_auth_failed"),
            (end - timedelta(seconds=20), 500, "internal_error"),
            (end - timedelta(seconds=30), 429, "upstream_unavailable"),
            (end - timedelta(seconds=40), 429, "rate_limit_exceeded"),
            (end - timedelta(seconds=50), 200, ""),
            (end - timedelta(seconds=300), 503, "upstream_error"),  # the window's start: out
            (end + timedelta(seconds=1), 500, "internal_error")]  # after its end: out
    for n, (when, status, code) in enumerate(rows):
        UsageLog.objects.create(created_at=when, request_id=f"rate-{n}", endpoint="responses",
                                model="gpt-5", status_code=status, error_code=code)
    assert opsalerts.error_counts(end.timestamp(), 300) == (6, 4)
