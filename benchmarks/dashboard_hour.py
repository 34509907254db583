"""The dashboard's hour not over yet: server time of ``overview()`` for a tenant whose hour so
far holds many requests.

    python -m benchmarks.dashboard_hour                      # 50k and 200k requests, minute 55
    python -m benchmarks.dashboard_hour --rows 100000 --minute 30 --repeat 40
    python -m benchmarks.dashboard_hour --database-url postgres://.../db   # another database

Each run reads the dashboard two ways, on the same rows:

- ``rollup``: as it does now. The minute rollup covers the hour up to
  BILLING_ROLLUP_SETTLE_SECONDS (300) before it ran. Only the rows after that are read raw.
- ``raw``: as it did before. The whole hour so far is read from the raw rows (a settle time
  longer than the hour so far gives exactly that).

The rows are one tenant's (100 keys, 4 models), spread evenly over the hour up to
``--minute``. The hour is yesterday's, the same UTC hour as now, and every read is made as at
that minute of it (``overview(now=...)``), so the figures do not depend on the clock. It
uses its own PostgreSQL database (DASHBOARD_HOUR_BENCH_DB, default turnpike_bench_hour, on
the server of DATABASE_URL), emptied at the start of each row count. It prints p50/p95 in
milliseconds per row count, as a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import timedelta
from typing import Any

from benchmarks.portal import database_url, say, setup_django

DB_NAME = os.environ.get("DASHBOARD_HOUR_BENCH_DB", "turnpike_bench_hour")
KEYS = 100
MODELS = ("gpt-5", "gpt-5-mini", "o3", "gpt-4o-mini")



def load(rows: int, start: Any, span: int) -> Any:
    """An empty usage log, then ``rows`` rows of the tenant ``hour-big`` evenly over the
    ``span`` seconds from ``start``. Returns the tenant."""
    from django.db import connection

    from keys.models import ApiKey, Tenant

    with connection.cursor() as cur:
        cur.execute("TRUNCATE billing_usagelog, billing_usagerollup, billing_usagerolluphourly, "
                    "billing_usagerolluptenant, billing_usagerolluptenanthourly, "
                    "billing_keyusagetotals, billing_rollupstate")
    tenant, _ = Tenant.objects.get_or_create(name="hour-big", defaults={"balance": 1000})
    if not ApiKey.objects.filter(tenant=tenant).exists():
        ApiKey.objects.bulk_create([
            ApiKey(tenant=tenant, name=f"hour key {i}", prefix=f"sk-h{i:07d}",
                   last4=f"{i:04d}", secret_hash=f"hour{i:060d}") for i in range(KEYS)])
    keys = list(ApiKey.objects.filter(tenant=tenant).order_by("pk").values_list("pk", flat=True))
    with connection.cursor() as cur:
        cur.execute(f"""
            INSERT INTO billing_usagelog (created_at, request_id, key_id, key_prefix,
                tenant_id, endpoint, model, status_code, error_code, stream, input_tokens,
                cached_tokens, output_tokens, reasoning_tokens, cost, latency_ms, ttfb_ms,
                user_agent, attempts, estimated)
            SELECT %s + (g * %s / %s) * interval '1 second', 'hb' || g,
                   (ARRAY{keys})[1 + g %% {len(keys)}], 'sk-h', %s, 'responses',
                   (ARRAY{list(MODELS)})[1 + (g / 7) %% {len(MODELS)}],
                   CASE WHEN g %% 50 = 0 THEN 500 ELSE 200 END,
                   CASE WHEN g %% 50 = 0 THEN 'upstream_error' ELSE '' END,
                   g %% 2 = 0, 100 + g %% 2000, (g %% 3) * 50, 50 + g %% 800, g %% 200,
                   ((100 + g %% 2000) * 0.00000125 + (50 + g %% 800) * 0.00001)::numeric(20, 8),
                   120 + (g / 11) %% 4000, CASE WHEN g %% 2 = 0 THEN 40 + (g / 13) %% 900 END,
                   'bench', '[]', false
            FROM generate_series(0, %s - 1) g""", [start, span, rows, tenant.pk, rows])
        cur.execute("VACUUM ANALYZE billing_usagelog")
    return tenant


def timed(tenant: Any, now: Any, repeat: int) -> tuple[float, float, int]:
    """(p50, p95) of ``overview`` in ms over ``repeat`` reads after warm-ups, and the
    requests it counted today."""
    from portal.selectors.dashboard import overview

    for _ in range(3):
        figures = overview(tenant, now=now)
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        overview(tenant, now=now)
        times.append((time.perf_counter() - began) * 1000)
    times.sort()
    return (statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.95))],
            figures.today_totals.requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, action="append",
                        help="requests in the hour (repeatable; default 50000 and 200000)")
    parser.add_argument("--minute", type=int, default=55, help="minute of the hour read at")
    parser.add_argument("--repeat", type=int, default=40, help="timed reads per way")
    parser.add_argument("--database-url", default=None,
                        help="the database to use (default: DASHBOARD_HOUR_BENCH_DB on the "
                             "server of DATABASE_URL)")
    args = parser.parse_args()
    setup_django(args.database_url or database_url(DB_NAME))
    from django.test.utils import override_settings
    from django.utils import timezone

    from billing import rollups

    hour = rollups.hour_start(timezone.now()) - timedelta(days=1)
    now = hour + timedelta(minutes=args.minute)
    table = ["| requests in the hour | read at | rollup p50 / p95 ms | raw p50 / p95 ms |",
             "|---|---|---|---|"]
    for rows in args.rows or [50_000, 200_000]:
        say(f"loading {rows} rows over {hour:%H:%M}..{now:%H:%M} UTC")
        tenant = load(rows, hour, args.minute * 60)
        rollups.rollup_recent_days(now)
        measured = []
        for settle in (300.0, 3600.0):
            with override_settings(BILLING_ROLLUP_SETTLE_SECONDS=settle):
                rollups.rollup_recent_hours(now)
                p50, p95, counted = timed(tenant, now, args.repeat)
            assert counted == rows, (counted, rows)  # both ways count every row, once
            measured.append(f"{p50:.1f} / {p95:.1f}")
            say(f"settle {settle:.0f} s: p50 {p50:.1f} ms, p95 {p95:.1f} ms")
        table.append(f"| {rows:,} | minute {args.minute} | {measured[0]} | {measured[1]} |")
    print("\n".join(table))


if __name__ == "__main__":
    main()
