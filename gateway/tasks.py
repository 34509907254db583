"""Celery tasks of the gateway app (thin: they call gateway.health, gateway.stored and
gateway.capture)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from gateway import health


@shared_task(name="gateway.probe_upstreams", ignore_result=True)
def probe_upstreams() -> dict[str, bool]:
    return health.probe_all()


@shared_task(name="gateway.tasks.expire_stored_responses", ignore_result=True)
def expire_stored_responses() -> int:
    """Delete the stored responses whose tenant's retention is over (beat: hourly)."""
    from gateway.stored import store

    return store.expire()


@shared_task(name="gateway.tasks.expire_captures", ignore_result=True)
def expire_captures() -> int:
    """Delete the captured bodies older than GATEWAY_CAPTURE_RETENTION_HOURS (beat: every
    ten minutes)."""
    from gateway.capture import store

    return store.expire()


@shared_task(name="gateway.drain_store_journal", ignore_result=True)
def drain_store_journal() -> int:
    """Write the stored responses staged in Redis (gateway processes do it every flush
    interval; this is for when none runs)."""
    from gateway.stored import store

    return store.drain_journal()


@shared_task(name="gateway.tasks.run_background", ignore_result=True)
def run_background(job: str) -> None:
    """Run one background response (``gateway.stored.background``) on this worker
    process's event loop; the task ends when the response does."""
    from gateway.stored import background

    background.run_job(job)


@shared_task(name="gateway.reap_background", ignore_result=True)
def reap_background() -> int:
    """Fail the background responses whose worker stopped (or that no worker started in
    time; their slots and reservations come back by the limiter's own leases), and renew
    the slots and reservations of those still waiting for a worker."""
    from gateway.stored import background

    return background.reap_now()


@shared_task(name="gateway.check_operator_alerts", ignore_result=True)
def check_operator_alerts() -> dict[str, bool | None]:
    """The usage spool and the error rate (``gateway.opsalerts.check``; beat: every
    OPERATOR_ALERT_CHECK_INTERVAL seconds)."""
    from gateway import opsalerts

    return opsalerts.check()


@shared_task(name="gateway.send_operator_alert", bind=True, ignore_result=True,
             max_retries=6)
def send_operator_alert(self: Any, target: str, alert: dict[str, str]) -> None:
    """Deliver one operator alert to one target (the email list or one webhook); retried
    with back-off (10 s, 20 s, 40 s … up to 5 min) while the target does not take it."""
    from gateway import opsalerts

    try:
        opsalerts.send(target, alert)
    except opsalerts.DeliveryError as exc:
        if self.request.retries >= self.max_retries:
            opsalerts.log.error("operator alert %s to %s not delivered: %s", alert["kind"],
                                opsalerts.describe(target), exc)
            return
        raise self.retry(exc=exc, countdown=min(300, 10 * 2 ** self.request.retries)) from exc
