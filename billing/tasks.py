"""Celery tasks of the billing app (thin: they parse their arguments and call
billing.rollups / billing.usage). Scheduled by CELERY_BEAT_SCHEDULE in portal/settings.

Every task is idempotent, so beat running one twice (or two workers taking the same
schedule) changes nothing. The optional ``now``/``day`` arguments are ISO strings (JSON
serialisable) for backfills and tests; by default the tasks use the current time.
"""

from __future__ import annotations

from datetime import date, datetime

from celery import shared_task

from billing import rollups, usage


def _moment(now: str | None) -> datetime | None:
    if not now:
        return None
    moment = datetime.fromisoformat(now)
    if moment.tzinfo is None:
        raise ValueError(f"now must carry a UTC offset: {now!r}")
    return moment


@shared_task(name="billing.rollup_usage")
def rollup_usage(day: str | None = None) -> dict[str, int]:
    """Roll up one local day (``day``, ISO ``YYYY-MM-DD``), or every day since the last
    complete one rolled up (at least today and yesterday: late rows of yesterday land after
    midnight; ``rollups.rollup_recent_days``). Returns rollup rows per day."""
    if day:
        d = date.fromisoformat(day)
        return {d.isoformat(): rollups.rollup_day(d)}
    return rollups.rollup_recent_days()


@shared_task(name="billing.rollup_usage_hourly")
def rollup_usage_hourly(hour: str | None = None) -> dict[str, int]:
    """Roll up one UTC hour (``hour``: an ISO moment with its offset, any time in the
    hour), or every hour since the last complete one rolled up (at least the current and
    the previous hour: late rows of the previous hour land after it ends;
    ``rollups.rollup_recent_hours``). Returns rollup rows per hour."""
    if hour:
        h = rollups.hour_start(_moment(hour))  # type: ignore[arg-type]
        return {h.isoformat(): rollups.rollup_hour(h)}
    return rollups.rollup_recent_hours()


@shared_task(name="billing.expire_usage")
def expire_usage(now: str | None = None) -> int:
    """Delete raw usage rows past BILLING_USAGE_RETENTION_DAYS (their days rolled up
    first). Returns the rows deleted."""
    return rollups.expire_usage(_moment(now))


@shared_task(name="billing.create_usage_partitions")
def create_usage_partitions(now: str | None = None) -> list[str]:
    """PostgreSQL: create the usage log's partitions of the current UTC month and the
    BILLING_USAGE_PARTITION_MONTHS_AHEAD after it, and split the default partition
    (``billing.partitions.ensure_partitions``). Returns the partitions created."""
    from billing import partitions

    return partitions.ensure_partitions(_moment(now))


@shared_task(name="billing.reset_daily_counters")
def reset_daily_counters(now: str | None = None) -> int:
    """Delete the RPD counters of earlier local days. Returns the keys deleted."""
    return rollups.reset_daily_counters(_moment(now))


@shared_task(name="billing.drain_usage_spool")
def drain_usage_spool() -> int:
    """Write usage rows spooled in Redis while the database was down. Returns rows."""
    return usage.drain_spool()


@shared_task(name="billing.reconcile_accounts")
def reconcile_accounts() -> int:
    """Give back the reservations of stopped gateway processes and put drifting limiter
    accounts back in line with the database. Returns accounts corrected."""
    from billing.reconcile import reconcile

    return len(reconcile())
