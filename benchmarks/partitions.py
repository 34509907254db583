"""Usage-log partitions benchmark: the portal, retention and the usage writer at scale.

    python -m benchmarks.partitions --rows 50000000 \\
        --database-url postgres://postgres@127.0.0.1:5432/turnpike_bench_partition
    python -m benchmarks.partitions --rows 20000 --window-rows 10000 --keys 2000 --smoke

Builds on ``benchmarks.portal`` (its tenants, keys, row generator and page measurements)
in a database of its own (migrated here, so ``billing_usagelog`` is partitioned by month):

1. the usage writer's insert rate (``billing.usage.write_events``, batches of
   GATEWAY_USAGE_BATCH_SIZE) into the table as it is before the load;
2. the load: ``--window-rows`` rows over the last 30 days (the dashboard's window, as in
   ``benchmarks.portal``) and the rest of ``--rows`` spread evenly over the two full UTC
   months before that window's month (``INSERT ... SELECT generate_series``, secondary
   indexes dropped for the load and rebuilt);
3. rollups of the dashboard's window as the Celery tasks leave them; the watermarks
   (``RollupState`` 'daily' and 'hourly') are set from the oldest loaded month on, as a
   beat that has been running since then leaves them (the older days are not rolled up
   here: that takes about a minute per million rows on this box, and retention would
   skip them all the same);
4. the portal's pages (``benchmarks.portal.PAGES``: dashboards and usage log), the log
   page at depth and the CSV export (``benchmarks.portal_export``) on the full table;
5. the usage writer's insert rate again, at the full table;
6. retention of one month: ``billing.rollups.expire_usage`` with the retention set so the
   oldest month is the only thing expired (its partition is dropped), timed, and the
   dashboard's totals (rollups) compared before and after.

Prints one Markdown table of the figures (for BENCHMARKS.md, "Usage log partitions").
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from benchmarks import portal
from benchmarks.portal import Band, say

WRITER_TENANT = "bench-t0000"


def insert_rate(rows: int, tag: str) -> tuple[float, int]:
    """Rows per second of the usage writer (``write_events``, its real batches and
    charges) writing ``rows`` new rows of one ordinary bench tenant's keys; and the
    table's rows at the time (the planner's estimate)."""
    from django.conf import settings
    from django.db import connection
    from django.utils import timezone

    from billing.usage import write_events
    from billing.usagerow import UsageEvent
    from keys.models import ApiKey

    # A tenant no measured page shows: these rows land in the current hour, which the
    # dashboards read from the log itself (the rollups cover the hours before it), so
    # written as bench-big's they would make it a tenant of ~40,000 requests an hour.
    keys = list(ApiKey.objects.filter(tenant__name=WRITER_TENANT)
                .values_list("pk", "tenant_id"))
    batch = int(settings.GATEWAY_USAGE_BATCH_SIZE)
    now = timezone.now()
    events = [UsageEvent(created_at=now - timedelta(microseconds=i), request_id=f"{tag}{i}",
                         endpoint="responses", status_code=200, key_id=keys[i % len(keys)][0],
                         tenant_id=keys[i % len(keys)][1], model="gpt-5-mini",
                         input_tokens=120, output_tokens=80, cost=Decimal("0.000125"),
                         latency_ms=300, ttfb_ms=90, user_agent="bench")
              for i in range(rows)]
    started = time.perf_counter()
    written = 0
    for i in range(0, rows, batch):
        written += len(write_events(events[i:i + batch]))
    seconds = time.perf_counter() - started
    assert written == rows, (written, rows)
    with connection.cursor() as cursor:
        cursor.execute("SELECT sum(greatest(c.reltuples, 0))::bigint FROM pg_inherits i "
                       "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = "
                       "'billing_usagelog'::regclass")
        table_rows = int(cursor.fetchone()[0] or 0)
    return rows / seconds, table_rows


def rollups(oldest: datetime) -> None:
    """The dashboard window's daily rollups, hourly ones of the last two days, per-key
    totals; watermarks from ``oldest`` on (see the module docstring, step 3)."""
    from billing import rollups as r
    from billing.models import RollupState

    now = datetime.now(UTC)
    today = r.local_date(now)
    if not RollupState.objects.filter(name="daily").exists():
        for back in range(31, 0, -1):
            t = time.monotonic()
            day = today - timedelta(days=back)
            n = r.rollup_day(day, now=now)
            say(f"daily rollup {day}: {n} rows in {time.monotonic() - t:.1f} s")
        RollupState.objects.create(name="daily", since=oldest,
                                   through=r.day_bounds(today)[0])
    r.rollup_recent_days(now)
    r.rollup_recent_hours(now)
    RollupState.objects.filter(name="hourly").update(since=oldest)
    say("rollups up to date")


def dashboard_totals() -> dict[str, Any]:
    """What the dashboards sum: the per-tenant daily rollups, all of them."""
    from django.db.models import Sum

    from billing.models import UsageRollupTenant

    return UsageRollupTenant.objects.aggregate(requests=Sum("requests"), cost=Sum("cost"),
                                               input=Sum("input_tokens"))


def move_to_tablespace(name: str, tablespace: str) -> float:
    """Move one partition, its indexes with it, to ``tablespace`` (seconds taken)."""
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(f'ALTER TABLE "{name}" SET TABLESPACE "{tablespace}"')
        cursor.execute("SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = "
                       "to_regclass(%s)", [f'"{name}"'])
        for (index,) in cursor.fetchall():
            cursor.execute(f"ALTER INDEX {index} SET TABLESPACE \"{tablespace}\"")
    return time.perf_counter() - started


class StatementTimes:
    """Wall time of the retention's DETACH and DROP statements (``connection.execute_wrapper``)
    and of the commit after each (the connection's ``_commit``, timed while ``timing()``
    lasts), so the figure says what locked the usage log and what only freed files: a
    dropped table's files are unlinked at its commit."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self._last: str | None = None

    def _add(self, kind: str, started: float) -> None:
        self.ms[kind] = self.ms.get(kind, 0.0) + (time.perf_counter() - started) * 1000

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        kind = ("DETACH" if "DETACH PARTITION" in sql else
                "DROP" if sql.startswith("DROP TABLE") else None)
        self._last = kind
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            if kind:
                self._add(kind, started)

    @contextmanager
    def timing(self) -> Iterator[None]:
        from django.db import connection

        commit = connection._commit

        def timed_commit() -> None:
            kind, self._last = self._last, None
            started = time.perf_counter()
            try:
                commit()
            finally:
                if kind:
                    self._add(f"{kind} commit", started)

        connection._commit = timed_commit  # type: ignore[method-assign]
        try:
            with connection.execute_wrapper(self):
                yield
        finally:
            del connection._commit


def partition_bytes(name: str) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_total_relation_size(to_regclass(%s))", [f'"{name}"'])
        return int(cursor.fetchone()[0] or 0)


def drop_caches() -> bool:
    """Checkpoint, then have the kernel drop its page cache (needs root), so the month
    retention drops is cold, as an old month is in production: a dropped file's pages still
    cached are freed one by one at its unlink, which a just-loaded month would pay and an
    old one does not. False when this process may not."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("CHECKPOINT")
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def retention_of_oldest_month(tablespace: str | None = None,
                              cold: bool = False) -> dict[str, Any]:
    """Expire exactly the oldest monthly partition (retention set to end there); returns
    the figures. With ``tablespace`` the partition is first moved there (e.g. a file
    system mounted without online discard, to tell the database's work from the disk's)."""
    from django.conf import settings

    from billing import partitions
    from billing import rollups as r

    months = [p for p in partitions.partitions() if not p.is_default]
    oldest = months[0]
    assert oldest.end is not None
    moved = move_to_tablespace(oldest.name, tablespace) if tablespace else None
    size = partition_bytes(oldest.name)
    now = datetime.now(UTC)
    settings.BILLING_USAGE_RETENTION_DAYS = (r.local_today(now) - r.local_date(oldest.end)).days
    kept_from = r.retention_start(now)
    assert kept_from is not None and r.day_bounds(kept_from)[0] == oldest.end, "TIME_ZONE: UTC"
    before = dashboard_totals()
    cooled = drop_caches() if cold else False
    times = StatementTimes()
    started = time.perf_counter()
    with times.timing():
        expired = r.expire_usage(now)
    seconds = time.perf_counter() - started
    after = dashboard_totals()
    assert before == after, (before, after)
    left = [p.name for p in partitions.partitions()]
    assert oldest.name not in left
    return {"partition": oldest.name, "rows": expired, "seconds": seconds, "bytes": size,
            "statements_ms": times.ms, "tablespace": tablespace, "move_seconds": moved,
            "cold": cooled}


def retention_figure(retention: dict[str, Any]) -> tuple[str, str]:
    statements = ", ".join(f"{k} {v:.0f} ms" for k, v in retention["statements_ms"].items())
    where = (f", moved to tablespace {retention['tablespace']} first "
             f"({retention['move_seconds']:.0f} s)" if retention["tablespace"] else "")
    cold = ", page cache dropped first" if retention["cold"] else ""
    return (f"retention of {retention['partition']} (~{retention['rows']:,} rows, "
            f"{retention['bytes'] / 2**30:.1f} GiB{where}{cold}; dashboard totals unchanged)",
            f"{retention['seconds'] * 1000:.0f} ms ({statements})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default=os.environ.get(
        "DATABASE_URL", "postgres://postgres@127.0.0.1:5432/turnpike_bench_partition"))
    parser.add_argument("--rows", type=int, default=50_000_000)
    parser.add_argument("--window-rows", type=int, default=10_000_000,
                        help="rows in the dashboard's 30-day window (part of --rows)")
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=30, help="timed requests a page")
    parser.add_argument("--writes", type=int, default=20_000,
                        help="rows the usage writer inserts for each insert-rate figure")
    parser.add_argument("--export-rows", type=int, default=200_000)
    parser.add_argument("--generate-only", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="few requests, small export")
    parser.add_argument("--retention-only", action="store_true",
                        help="only expire the oldest month of an already loaded database")
    parser.add_argument("--retention-tablespace",
                        help="move the month retention drops to this tablespace first")
    parser.add_argument("--cold", action="store_true",
                        help="drop the kernel's page cache before timing retention (root)")
    args = parser.parse_args()
    os.environ["TIME_ZONE"] = "UTC"  # local days = UTC days: a month's end is a day's start
    portal.setup_django(args.database_url)
    from django.contrib.auth import get_user_model

    from benchmarks import portal_export
    from billing import partitions

    figures: list[tuple[str, str]] = []
    if args.retention_only:
        name, value = retention_figure(
            retention_of_oldest_month(args.retention_tablespace, args.cold))
        print(f"| {name} | {value} |")
        return
    portal.generate(args.keys, 0, False)  # tenants and keys only
    rate, size = insert_rate(args.writes, f"pw_start_{time.time_ns()}_")
    figures.append((f"usage writer, table at ~{size:,} rows", f"{rate:,.0f} rows/s"))
    now = datetime.now(UTC)
    window_month = partitions.month_start(now - timedelta(days=30))
    oldest_month = partitions.add_months(window_month, -2)
    old_start, old_end = (partitions.bounds(oldest_month)[0],
                          partitions.bounds(window_month)[0])
    older = max(0, args.rows - args.window_rows)
    span = int((old_end - old_start).total_seconds())
    partitions.ensure_partitions(since=oldest_month)  # the load never meets the default
    portal.generate(args.keys, args.window_rows, False,
                    [Band("po_", older, span=span, end=old_end - timedelta(seconds=1))])
    rollups(old_start)
    if args.generate_only:
        print(f"| {figures[0][0]} | {figures[0][1]} |")
        return
    ctx: dict[str, Any] = {"user": get_user_model().objects.get(username=portal.USER),
                           "requests": args.requests}
    pages = [portal.measure(page, ctx, 3 if args.smoke else args.requests)
             for page in portal.PAGES
             if isinstance(page.path, str) and page.path in ("/portal/", "/portal/usage/")]
    export = portal_export.export_benchmark(args.database_url, args.export_rows)
    depth = portal_export.explain_and_time(3 if args.smoke else 20)
    rate, size = insert_rate(args.writes, f"pw_end_{time.time_ns()}_")
    figures.append((f"usage writer, table at ~{size:,} rows", f"{rate:,.0f} rows/s"))
    figures.append(retention_figure(
        retention_of_oldest_month(args.retention_tablespace, args.cold)))
    for r in pages:
        figures.append((f"{r.label} p50 / p95", r.row().split("|")[2].strip() + " / "
                        + r.row().split("|")[3].strip() + " ms"))
    for name, timing in depth["timings"].items():
        figures.append((f"usage log {name} p50 / p95",
                        f"{timing['p50_ms']} / {timing['p95_ms']} ms"))
    figures.append((f"CSV export, {export['csv_rows']:,} rows",
                    f"{export['seconds']} s, {export['rows_per_second']:,} rows/s, peak RSS "
                    f"growth {export['peak_rss_growth_mib']} MiB"))
    print()
    print(f"partitions: {', '.join(p.name for p in partitions.partitions())}")
    print()
    print("| measure | figure |")
    print("|---|---|")
    for name, value in figures:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
