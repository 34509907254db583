"""Operator alerts without a monitoring stack: email and chat webhooks when something an
operator must act on starts, and again when it ends.

The triggers call :func:`transition` with the state they see (``firing`` or not):

- an upstream auto-disabled or re-enabled by the health probe (``gateway.health.record``);
- a credential disabled because the upstream answered 401/403
  (``gateway.exchange.attempts``), resolved when it is active again (``gateway.signals``);
- Redis unreachable, so ``GATEWAY_REDIS_FAILURE`` is engaged, and reachable again
  (``portal.infra.redishealth``'s change listeners, installed by :func:`watch_redis`);
- the usage spool (the Redis journal of usage rows) not moving for
  OPERATOR_ALERT_SPOOL_SECONDS, and the error rate over OPERATOR_ALERT_ERROR_RATE: the
  beat task ``gateway.check_operator_alerts`` (:func:`check`).

Each (kind, subject) has one :class:`~gateway.models.OperatorAlert` row whose ``firing``
flag flips by a conditional UPDATE (or the INSERT of a first firing): only the caller whose
write changed it delivers, so each state change is sent once however many processes saw it.
Delivery is off the caller's path, in a daemon thread: it hands each target (the email
list, each webhook) to the Celery task ``gateway.send_operator_alert`` (retries with
back-off), or, in the embedded default (tasks run eagerly), for Redis alerts (the broker is
usually that Redis) and when the broker refuses the task, sends from the thread itself
with a few retries.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, quote_plus, urlencode, urlsplit, urlunsplit

import httpx
from django.conf import settings
from django.db import connections
from django.utils import timezone

from gateway.models import AlertKind, OperatorAlert

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT = 10.0
# Sending from a thread (no Celery): pauses before the 2nd, 3rd and 4th try.
THREAD_RETRY_PAUSES = (1.0, 5.0, 15.0)
STYLES = ("json", "slack", "feishu", "dingtalk")
ALERTS_ADMIN = "/admin/gateway/operatoralert/"


class DeliveryError(Exception):
    """A target did not take the alert (worth retrying)."""


def enabled() -> bool:
    return bool(settings.OPERATOR_ALERT_EMAILS or settings.OPERATOR_ALERT_WEBHOOKS)


def admin_url(path: str) -> str:
    base = settings.PORTAL_BASE_URL.rstrip("/")
    return base + path if base else path


# --- state changes ---------------------------------------------------------------------------

def transition(kind: str, subject: str, firing: bool, summary: str, admin_path: str) -> bool:
    """Record that (kind, subject) is now firing or not; deliver when that changed its
    state, which happens for exactly one caller across all processes. A first "not firing"
    (nothing ever fired) is no change. Returns whether this call changed the state."""
    if not enabled():
        return False
    now = timezone.now()
    fields = {"firing": firing, "changed_at": now, "summary": summary[:500],
              "admin_path": admin_path[:300]}
    flipped = bool(OperatorAlert.objects.filter(kind=kind, subject=subject, firing=not firing)
                   .update(**fields))
    if not flipped and firing:
        _, flipped = OperatorAlert.objects.get_or_create(kind=kind, subject=subject,
                                                         defaults=fields)
    if flipped:
        log.warning("operator alert %s %s: %s: %s", kind, subject or "-",
                    "firing" if firing else "resolved", summary)
        dispatch(payload(kind, subject, firing, summary, admin_path, now))
    return flipped


def payload(kind: str, subject: str, firing: bool, summary: str, admin_path: str,
            at: datetime) -> dict[str, str]:
    """The generic JSON payload; every other format is made from it."""
    return {"kind": kind, "subject": subject, "state": "firing" if firing else "resolved",
            "summary": summary, "admin_url": admin_url(admin_path), "at": at.isoformat()}


# --- delivery --------------------------------------------------------------------------------

def targets() -> list[str]:
    """``email`` (the whole OPERATOR_ALERT_EMAILS list, one message) and each webhook."""
    return (["email"] if settings.OPERATOR_ALERT_EMAILS else []) + list(
        settings.OPERATOR_ALERT_WEBHOOKS)


def dispatch(alert: dict[str, str]) -> None:
    """Hand the alert to every target, in a daemon thread (never on the caller's path)."""
    threading.Thread(target=_dispatch, args=(alert, targets()), daemon=True,
                     name="opsalert-dispatch").start()


def _dispatch(alert: dict[str, str], to: list[str]) -> None:
    try:
        for target in to:
            if _queued(target, alert):
                continue
            send_retrying(target, alert)
    finally:
        connections.close_all()  # this thread's own connections


def _queued(target: str, alert: dict[str, str]) -> bool:
    """Give the target to a Celery worker; False to send from here (eager tasks, a Redis
    alert, or a broker that refused the task)."""
    if settings.CELERY_TASK_ALWAYS_EAGER or alert["kind"] == AlertKind.REDIS_FAILURE:
        return False
    from gateway.tasks import send_operator_alert

    try:
        send_operator_alert.delay(target, alert)
    except Exception as exc:
        log.warning("operator alert: Celery refused the task (%s: %s); sending from this "
                    "process", type(exc).__name__, exc)
        return False
    return True


def send_retrying(target: str, alert: dict[str, str],
                  pauses: tuple[float, ...] = THREAD_RETRY_PAUSES) -> bool:
    for pause in (*pauses, None):
        try:
            send(target, alert)
            return True
        except Exception as exc:
            if pause is None:
                log.error("operator alert %s to %s not delivered: %s", alert["kind"],
                          describe(target), exc)
                return False
            time.sleep(pause)
    return False  # not reached


def send(target: str, alert: dict[str, str]) -> None:
    """Deliver to one target now (sync); raise DeliveryError when it did not take it. The
    alert's row notes the last delivery or its error."""
    try:
        if target == "email":
            send_email(alert)
        else:
            send_webhook(target, alert)
    except Exception as exc:
        _note(alert, error=f"{describe(target)}: {exc}")
        if isinstance(exc, DeliveryError):
            raise
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc
    _note(alert)


def _note(alert: dict[str, str], error: str = "") -> None:
    try:
        rows = OperatorAlert.objects.filter(kind=alert["kind"], subject=alert["subject"])
        if error:
            rows.update(last_error=error[:300])
        else:
            rows.update(last_sent_at=timezone.now(), last_error="")
    except Exception:
        log.exception("operator alert: could not note the delivery")


def text(alert: dict[str, str]) -> str:
    """The one message chat tools and email show."""
    state = "FIRING" if alert["state"] == "firing" else "RESOLVED"
    lines = [f"[Turnpike] {state}: {alert['summary']}"]
    if alert["admin_url"]:
        lines.append(alert["admin_url"])
    return "\n".join(lines)


def send_email(alert: dict[str, str]) -> None:
    from django.core.mail import EmailMessage

    state = "FIRING" if alert["state"] == "firing" else "RESOLVED"
    subject = " ".join(f"{settings.ACCOUNT_EMAIL_SUBJECT_PREFIX}{state}: {alert['summary']}"
                       .split())[:200]
    body = (f"{alert['summary']}\n\nState: {alert['state']}\nKind: {alert['kind']}\n"
            + (f"Id: {alert['subject']}\n" if alert["subject"] else "")
            + f"At: {alert['at']}\nAdmin: {alert['admin_url']}\n")
    EmailMessage(subject=subject, body=body, to=list(settings.OPERATOR_ALERT_EMAILS)).send()


@dataclass(frozen=True)
class Webhook:
    style: str  # json, slack, feishu, dingtalk
    url: str
    secret: str = ""  # feishu/dingtalk signing secret (the URL's ``secret`` parameter)


def parse_webhook(entry: str) -> Webhook:
    """``[style+]http(s)://…``; a feishu or dingtalk URL may carry its robot's signing
    secret as a ``secret`` query parameter, which is taken off the URL (never sent)."""
    style, sep, rest = entry.partition("+")
    if sep and style in STYLES and rest.startswith(("http://", "https://")):
        url = rest
    else:
        style, url = "json", entry
    secret = ""
    if style in ("feishu", "dingtalk"):
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        secret = next((v for k, v in query if k == "secret"), "")
        url = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query
                                                         if k != "secret"])))
    return Webhook(style, url, secret)


def describe(target: str) -> str:
    """A target as logs and errors name it: a webhook by its style and host only (the
    path and query of a chat webhook are its credential)."""
    if target == "email":
        return "email"
    hook = parse_webhook(target)
    return f"{hook.style} webhook {urlsplit(hook.url).netloc}"


def webhook_body(hook: Webhook, alert: dict[str, str],
                 now: Callable[[], float] = time.time) -> tuple[str, dict[str, Any]]:
    """(URL, JSON body) of one webhook call in its style."""
    message = text(alert)
    if hook.style == "slack":
        return hook.url, {"text": message}
    if hook.style == "feishu":
        body: dict[str, Any] = {"msg_type": "text", "content": {"text": message}}
        if hook.secret:
            stamp = str(int(now()))
            key = f"{stamp}\n{hook.secret}".encode()
            sign = base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
            body.update(timestamp=stamp, sign=sign)
        return hook.url, body
    if hook.style == "dingtalk":
        url = hook.url
        if hook.secret:
            stamp = str(int(now() * 1000))
            digest = hmac.new(hook.secret.encode(), f"{stamp}\n{hook.secret}".encode(),
                              hashlib.sha256).digest()
            sign = quote_plus(base64.b64encode(digest).decode())
            url += ("&" if urlsplit(url).query else "?") + f"timestamp={stamp}&sign={sign}"
        return url, {"msgtype": "text", "text": {"content": message}}
    return hook.url, dict(alert)


def send_webhook(target: str, alert: dict[str, str]) -> None:
    hook = parse_webhook(target)
    url, body = webhook_body(hook, alert)
    resp = httpx.post(url, json=body, timeout=WEBHOOK_TIMEOUT, follow_redirects=False)
    if resp.status_code >= 300:
        raise DeliveryError(f"HTTP {resp.status_code}: {resp.text[:200]}")
    if hook.style in ("feishu", "dingtalk"):
        # Both answer 200 with an error code in the body (a bad signature, a keyword
        # missing, a rate limit).
        try:
            answer = resp.json()
        except ValueError:
            return
        code = answer.get("code", answer.get("errcode", 0)) if isinstance(answer, dict) else 0
        if code:
            raise DeliveryError(f"refused: {resp.text[:200]}")


# --- triggers --------------------------------------------------------------------------------

def upstream_changed(upstream_id: int, name: str, disabled: bool, detail: str) -> None:
    if disabled:
        summary = f"Upstream {name} auto-disabled by the health probe: {detail}"
    else:
        summary = f"Upstream {name} re-enabled: the health probe succeeded"
    transition(AlertKind.UPSTREAM_DOWN, str(upstream_id), disabled, summary,
               f"/admin/gateway/upstream/{upstream_id}/change/")


def credential_changed(credential_id: int, label: str, disabled: bool, detail: str = "") -> None:
    if disabled:
        summary = f"Credential {label} disabled: {detail}"
    else:
        summary = f"Credential {label} is active again"
    transition(AlertKind.CREDENTIAL_DISABLED, str(credential_id), disabled, summary,
               f"/admin/gateway/credential/{credential_id}/change/")


class _Serial:
    """One daemon thread running jobs in order (a Redis outage's start before its end)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], object]) -> None:
        self._jobs.put(job)
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="opsalert-redis")
                self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            except Exception:
                log.exception("operator alert: a Redis state change was not recorded")
            finally:
                connections.close_all()


_redis_jobs = _Serial()


def redis_changed(down: bool, detail: str) -> None:
    """``portal.infra.redishealth`` listener: called on the event loop when this process
    finds Redis unreachable or reachable again; the database work goes to a thread."""
    if not enabled():
        return
    mode = settings.GATEWAY_REDIS_FAILURE
    if down:
        summary = (f"Redis is unreachable ({detail}); GATEWAY_REDIS_FAILURE={mode}: "
                   + ("requests that need the shared limits are refused with 503"
                      if mode == "closed" else "serving with each process's own limits"))
    else:
        summary = f"Redis is reachable again ({detail})"
    _redis_jobs.submit(lambda: transition(AlertKind.REDIS_FAILURE, "", down, summary,
                                          ALERTS_ADMIN))


def watch_redis() -> None:
    from portal.infra.redishealth import redis_health

    redis_health.on_change(redis_changed)


# --- the periodic checks (beat: gateway.check_operator_alerts) -------------------------------

def check(now: float | None = None) -> dict[str, bool | None]:
    """Check the usage spool and the error rate once. ``now``: unix seconds (tests)."""
    if not enabled():
        return {}
    moment = time.time() if now is None else now
    return {"usage_spool": check_spool(moment), "error_rate": check_error_rate(moment)}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _journal_front(client: Any) -> bytes | None:
    """The oldest rows not yet written, one per usage journal (tenant group) that holds any:
    the first of its oldest claimed batch (a writer holds it, or held it and stopped), else
    its head. None when every journal is empty; the marker moves when any journal moved."""
    from billing.usage import journals

    fronts = []
    for journal in journals():
        oldest = client.zrange(journal.claims_key(), 0, 0)
        first = client.lindex(journal.claim_list(_text(oldest[0])), 0) if oldest else None
        if first is None:
            first = client.lindex(journal.key(), 0)
        if first is not None:
            fronts.append(bytes(first))
    return b"\n".join(fronts) if fronts else None


def check_spool(now: float) -> bool | None:
    """Firing when the oldest row waiting in the usage journal is the same one as
    OPERATOR_ALERT_SPOOL_SECONDS ago (no writer moved it: the database refuses the rows,
    or GATEWAY_USAGE_SINK=redis and no ``usagewriter`` runs); resolved when it moved or
    the journal is empty. A journal that is never empty under load but keeps moving is
    healthy. None without Redis."""
    from billing.usage import journal_length
    from portal.infra import rediskeys
    from portal.infra.redis import sync_redis

    client = sync_redis()
    if client is None:
        return None
    state_key = rediskeys.opsalert_spool()
    front = _journal_front(client)
    if front is None:
        client.delete(state_key)
        transition(AlertKind.USAGE_SPOOL, "", False, "The usage spool is empty again",
                   ALERTS_ADMIN)
        return False
    marker = hashlib.sha256(front).hexdigest()
    seen = {_text(k): _text(v) for k, v in client.hgetall(state_key).items()}
    if seen.get("front") != marker:
        client.hset(state_key, mapping={"front": marker, "since": repr(now)})
        client.expire(state_key, 86400)
        transition(AlertKind.USAGE_SPOOL, "", False,
                   f"The usage spool is moving again ({journal_length()} rows wait)",
                   ALERTS_ADMIN)
        return False
    waited = now - float(seen.get("since", now))
    if waited < settings.OPERATOR_ALERT_SPOOL_SECONDS:
        return False
    transition(AlertKind.USAGE_SPOOL, "", True,
               f"The usage spool has not moved for {int(waited)} s: "
               f"{journal_length()} usage rows wait for the database (is it "
               "reachable? with GATEWAY_USAGE_SINK=redis, is manage.py usagewriter running?)",
               ALERTS_ADMIN)
    return True


def check_error_rate(now: float) -> bool | None:
    """Firing when at least OPERATOR_ALERT_ERROR_RATE of the requests of the last
    OPERATOR_ALERT_ERROR_WINDOW seconds failed (``error_counts``); resolved when fewer did.
    With fewer than OPERATOR_ALERT_ERROR_MIN_REQUESTS requests in the window, no change
    either way (None), as when the rate is 0 (off)."""
    threshold = settings.OPERATOR_ALERT_ERROR_RATE
    if threshold <= 0:
        return None
    window = settings.OPERATOR_ALERT_ERROR_WINDOW
    total, failed = error_counts(now, window)
    if total < max(1, settings.OPERATOR_ALERT_ERROR_MIN_REQUESTS):
        return None
    share = failed / total
    firing = share >= threshold
    summary = (f"Error rate {share:.0%}: {failed} of the {total} requests of the last "
               f"{window:g} s failed (threshold {threshold:.0%})")
    if not firing:
        summary = f"Error rate back under the threshold. {summary}"
    transition(AlertKind.ERROR_RATE, "", firing, summary, "/admin/billing/usagelog/")
    return firing


def error_counts(now: float, window: float) -> tuple[int, int]:
    """(requests, failed requests) of the ``window`` seconds up to ``now``: failed are the
    server and upstream errors as the rollups and dashboards count them
    (billing.rollups.server_or_upstream: status 5xx, or an upstream failure whatever the
    status). Read from the raw rows by their time index, since the rollups' hours are too
    coarse for a window of minutes (``python -m benchmarks.ops_overview`` times it)."""
    from django.db.models import Count

    from billing.models import UsageLog
    from billing.rollups import server_or_upstream

    end = datetime.fromtimestamp(now, tz=timezone.get_current_timezone())
    counts = UsageLog.objects.filter(
        created_at__gt=end - timedelta(seconds=window), created_at__lte=end,
    ).aggregate(total=Count("id"), failed=Count("id", filter=server_or_upstream()))
    return counts["total"] or 0, counts["failed"] or 0


def test_alert() -> dict[str, str]:
    """A made-up alert for ``manage.py opsalert test``: not recorded anywhere."""
    return payload("test", "", True, "A test alert: Turnpike's operator alerts reach you",
                   ALERTS_ADMIN, timezone.now())
