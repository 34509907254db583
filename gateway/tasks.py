"""Celery tasks of the gateway app (thin: they call gateway.health)."""

from __future__ import annotations

from celery import shared_task

from gateway import health


@shared_task(name="gateway.probe_upstreams", ignore_result=True)
def probe_upstreams() -> dict[str, bool]:
    return health.probe_all()
