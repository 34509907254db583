"""The admin's operations overview with busy hours: server time of its recent hours
(``portal.selectors.overview.recent_hours``: the previous UTC hour and the current one so
far) at N requests an hour, read from the rollups, raw, and as the overview read before.

    python -m benchmarks.ops_overview                        # 200k requests an hour, minute 55
    python -m benchmarks.ops_overview --rows 50000 --minute 30 --repeat 20
    python -m benchmarks.ops_overview --database-url postgres://.../db   # another database

The rows are TENANTS tenants' (4 models, a few errors of each class), spread evenly at
``--rows`` an hour over the previous hour and the current one up to ``--minute``. The hours
are yesterday's (the same UTC hours as now) and every read is made as at that minute
(``recent_hours(now=...)``), so the figures do not depend on the clock. Three ways, on the
same rows:

- ``rollup``: as the overview reads now, after the minute task ran at that minute: the
  previous hour from its rollup, the current hour from its rollup up to
  BILLING_ROLLUP_SETTLE_SECONDS (300) before, only the rows after that raw.
- ``raw``: the same code with no rollup state (no Celery beat): the window read raw.
- ``before``: the query the overview made until it read rollups: the raw rows of the last
  60 minutes (fewer rows than the window: 60 minutes, not 60 + ``--minute``).

And the operator alert's error-rate check (``gateway.opsalerts.error_counts``: the raw rows
of its OPERATOR_ALERT_ERROR_WINDOW, 300 s by default, up to the same minute), checked
against the rows counted here.

It uses its own PostgreSQL database (OPS_OVERVIEW_BENCH_DB, default turnpike_bench_ops, on the
server of DATABASE_URL), emptied at the start. It checks that ``rollup`` and ``raw`` give the
same figures, and prints p50/p95 in milliseconds as a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from benchmarks.portal import database_url, say, setup_django

DB_NAME = os.environ.get("OPS_OVERVIEW_BENCH_DB", "turnpike_bench_ops")
TENANTS = 200
MODELS = ("gpt-5", "gpt-5-mini", "o3", "gpt-4o-mini")



def load(rows: int, start: datetime, span: int) -> None:
    """An empty usage log and rollups, then ``rows`` rows of TENANTS tenants evenly over the
    ``span`` seconds from ``start``: 1 in 50 a 429, 1 in 70 a 500, 1 in 90 a 502
    ``upstream_error``, 1 in 110 a stream cut after its 200 (``upstream_stream_cut``; where
    they coincide, the later rule wins)."""
    from django.db import connection

    from keys.models import Tenant

    with connection.cursor() as cur:
        cur.execute("TRUNCATE billing_usagelog, billing_usagerollup, billing_usagerolluphourly, "
                    "billing_usagerolluptenant, billing_usagerolluptenanthourly, "
                    "billing_keyusagetotals, billing_rollupstate")
    for i in range(TENANTS):
        Tenant.objects.get_or_create(name=f"ops-bench-{i:03d}", defaults={"balance": 1000})
    tenants = list(Tenant.objects.filter(name__startswith="ops-bench-").order_by("pk")
                   .values_list("pk", flat=True))
    with connection.cursor() as cur:
        cur.execute(f"""
            INSERT INTO billing_usagelog (created_at, request_id, key_prefix, tenant_id,
                endpoint, model, status_code, error_code, stream, input_tokens, cached_tokens,
                output_tokens, reasoning_tokens, cost, latency_ms, ttfb_ms, user_agent,
                attempts, estimated)
            SELECT %s + (g::bigint * %s / %s) * interval '1 second', 'ob' || g, 'sk-o',
                   (ARRAY{tenants})[1 + (g * 7) %% {len(tenants)}], 'responses',
                   (ARRAY{list(MODELS)})[1 + (g / 7) %% {len(MODELS)}],
                   CASE WHEN g %% 110 = 0 THEN 200 WHEN g %% 90 = 0 THEN 502
                        WHEN g %% 70 = 0 THEN 500 WHEN g %% 50 = 0 THEN 429 ELSE 200 END,
                   CASE WHEN g %% 110 = 0 THEN 'upstream_stream_cut'
                        WHEN g %% 90 = 0 THEN 'upstream_error' WHEN g %% 70 = 0
                        THEN 'internal_error' WHEN g %% 50 = 0 THEN 'rate_limit_exceeded'
                        ELSE '' END,
                   g %% 2 = 0, 100 + g %% 2000, (g %% 3) * 50, 50 + g %% 800, g %% 200,
                   ((100 + g %% 2000) * 0.00000125 + (50 + g %% 800) * 0.00001)::numeric(20, 8),
                   120 + (g / 11) %% 4000, CASE WHEN g %% 2 = 0 THEN 40 + (g / 13) %% 900 END,
                   'bench', '[]', false
            FROM generate_series(0, %s - 1) g""", [start, span, rows, rows])
        cur.execute("VACUUM ANALYZE billing_usagelog")


def before(now: datetime) -> Any:
    """The overview's last hour as it was read until it read rollups (its query, as it was):
    the raw rows of the 60 minutes before ``now``."""
    from django.db.models import Count, Sum

    from billing.models import UsageLog
    from billing.rollups import error_class_filters, failed

    rows = UsageLog.objects.filter(created_at__gte=now - timedelta(hours=1))
    totals = rows.aggregate(
        requests=Count("id"), errors=Count("id", filter=failed()),
        **{name: Count("id", filter=q) for name, q in error_class_filters().items()},
        spend=Sum("cost"))
    top = list(rows.filter(tenant__isnull=False).values("tenant_id", "tenant__name")
               .annotate(requests=Count("id"), spend=Sum("cost"))
               .order_by("-spend", "-requests")[:5])
    return totals, top


def alert_counts(now: datetime, window: float) -> tuple[int, int]:
    """(requests, failed) of the window counted here in SQL of its own: 5xx, or an upstream
    failure code whatever the status."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("""
            SELECT count(*), count(*) FILTER (WHERE status_code >= 500 OR error_code IN
                ('upstream_error', 'upstream_unavailable', 'upstream_timeout',
                 'upstream_stream_cut', 'upstream_bad_response', 'upstream_auth_failed'))
            FROM billing_usagelog WHERE created_at > %s AND created_at <= %s""",
                    [now - timedelta(seconds=window), now])
        total, failed = cur.fetchone()
    return total, failed


def timed(read: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """(p50, p95) of ``read()`` in ms over ``repeat`` reads after warm-ups, and its result."""
    for _ in range(3):
        result = read()
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        read()
        times.append((time.perf_counter() - began) * 1000)
    times.sort()
    return (statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.95))],
            result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="requests an hour")
    parser.add_argument("--minute", type=int, default=55, help="minute of the hour read at")
    parser.add_argument("--repeat", type=int, default=20, help="timed reads per way")
    parser.add_argument("--database-url", default=None,
                        help="the database to use (default: OPS_OVERVIEW_BENCH_DB on the "
                             "server of DATABASE_URL)")
    args = parser.parse_args()
    setup_django(args.database_url or database_url(DB_NAME))
    from django.conf import settings
    from django.utils import timezone

    from billing import rollups
    from billing.models import RollupState
    from gateway.opsalerts import error_counts
    from portal.selectors.overview import recent_hours

    since = rollups.hour_start(timezone.now()) - timedelta(days=1, hours=1)
    now = since + timedelta(hours=1, minutes=args.minute)
    span = (60 + args.minute) * 60
    total = args.rows * span // 3600
    say(f"loading {total} rows over {since:%H:%M}..{now:%H:%M} UTC ({args.rows}/hour)")
    load(total, since, span)

    def shown(window: Any) -> tuple[Any, ...]:
        return (window.requests, window.errors, window.client_errors, window.server_errors,
                window.upstream_errors, window.spend,
                [(t["tenant_id"], t["requests"], t["spend"]) for t in window.top_tenants])

    rollups.rollup_recent_hours(now)
    say(f"rolled up: partial hour {rollups.partial_hour()}")
    measured = {"rollup": timed(lambda: recent_hours(now), args.repeat)}
    RollupState.objects.all().delete()  # no beat: nothing vouches for the rollups
    measured["raw"] = timed(lambda: recent_hours(now), args.repeat)
    measured["before"] = timed(lambda: before(now), args.repeat)
    window = float(settings.OPERATOR_ALERT_ERROR_WINDOW)
    measured["alert"] = timed(lambda: error_counts(now.timestamp(), window), args.repeat)
    rolled, raw = shown(measured["rollup"][2]), shown(measured["raw"][2])
    assert rolled == raw, (rolled, raw)  # the same figures, every row once
    assert rolled[0] == total, (rolled[0], total)
    assert measured["alert"][2] == alert_counts(now, window), measured["alert"][2]
    table = ["| requests an hour | read at | rows in the window | rollup p50 / p95 ms | "
             "raw p50 / p95 ms | before (raw 60 min) p50 / p95 ms |", "|---|---|---|---|---|---|"]
    cells = " | ".join(f"{measured[w][0]:.1f} / {measured[w][1]:.1f}"
                       for w in ("rollup", "raw", "before"))
    table.append(f"| {args.rows:,} | minute {args.minute} | {total:,} | {cells} |")
    for way in ("rollup", "raw", "before"):
        say(f"{way}: p50 {measured[way][0]:.1f} ms, p95 {measured[way][1]:.1f} ms")
    print("\n".join(table))
    alert = measured["alert"]
    print(f"\nerror-rate alert (gateway.opsalerts.error_counts, {window:g} s window, "
          f"{alert[2][0]:,} rows, {alert[2][1]:,} failed): p50 {alert[0]:.1f} ms, "
          f"p95 {alert[1]:.1f} ms")


if __name__ == "__main__":
    main()
