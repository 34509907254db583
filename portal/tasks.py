"""Celery tasks of the portal: the email alerts of ``portal.alerts`` (scheduled by
CELERY_BEAT_SCHEDULE in portal/settings). Idempotent: a second run sends nothing new."""

from __future__ import annotations

from celery import shared_task

from portal import alerts


@shared_task(name="portal.alert_low_balance")
def alert_low_balance() -> int:
    """Low-balance emails, once per crossing of a tenant's threshold. Returns emails sent."""
    return alerts.check_low_balance()


@shared_task(name="portal.alert_keys")
def alert_keys() -> dict[str, int]:
    """Emails about keys expiring within three days or at 90% of their quota."""
    return alerts.check_keys()
