"""Portal usage log benchmark: the CSV export of a big tenant streams in constant memory,
and the log page costs the same at any depth.

    DATABASE_URL=postgres://…/turnpike_bench_usage \\
        python benchmarks/portal_export.py --rows 1000000 [--filler 9000000] [--explain]

Seeds (once, with INSERT … SELECT generate_series, like benchmarks/run.py) a tenant
``export-bench`` with ``--rows`` usage rows over the last 30 days and, optionally,
``--filler`` rows of another tenant (a 10M-row table in all); then streams the tenant's whole
CSV through Django's test client as an owner and reports rows, bytes, seconds and the
process's peak RSS growth while streaming (``/proc/self/clear_refs`` resets the peak). With
``--explain`` it also prints EXPLAIN (ANALYZE, BUFFERS) of the first page, a deep page and a
filtered deep page, and times the log page itself through the test client.

``export_benchmark(database_url, rows)`` is the same as a function (it returns the figures).
Use a database of its own: the script migrates it.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TENANT = "export-bench"
FILLER_TENANT = "filler-bench"


def _setup(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    os.environ.setdefault("SECRET_KEY", "bench-secret")
    os.environ.setdefault("DEBUG", "0")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import django
    from django.conf import settings

    django.setup()
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]  # the test clients' host


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux ≥ 4.0)
        return True
    except OSError:
        return False


def seed(rows: int, filler: int = 0) -> tuple[Any, Any]:
    """The bench tenant with ``rows`` usage rows (and ``filler`` rows of another tenant),
    an owner user and one key. Idempotent: tops up to the wanted counts."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection

    from billing.models import UsageLog
    from keys.models import Membership, Tenant
    from keys.services import key_create

    call_command("migrate", verbosity=0)
    tenant, _ = Tenant.objects.get_or_create(name=TENANT)
    key = tenant.keys.first() or key_create(tenant=tenant, name="bench").key
    user, _ = get_user_model().objects.get_or_create(
        username="export-bench@example.com", defaults={"email": "export-bench@example.com"})
    Membership.objects.get_or_create(tenant=tenant, user=user, defaults={"role": "owner"})
    other, _ = Tenant.objects.get_or_create(name=FILLER_TENANT)
    for owner, wanted, tag, key_id in ((tenant, rows, "e", key.pk), (other, filler, "f", None)):
        have = UsageLog.objects.filter(tenant=owner).count()
        if have >= wanted:
            continue
        with connection.cursor() as cur:
            # 30 days of traffic, a mix of models, endpoints, errors and streams.
            cur.execute(
                "INSERT INTO billing_usagelog (created_at, request_id, key_id, key_prefix, "
                "tenant_id, endpoint, model, status_code, error_code, stream, input_tokens, "
                "cached_tokens, output_tokens, reasoning_tokens, cost, latency_ms, ttfb_ms, "
                "client_ip, user_agent, attempts, estimated) "
                "SELECT now() - (g * (2592000.0 / %s)) * interval '1 second', "
                "'req_b' || %s || '_' || g, %s, 'sk-tp-bench', %s, "
                "(ARRAY['responses','chat/completions','responses/compact'])[1 + g %% 3], "
                "(ARRAY['gpt-5','gpt-5-mini','o3','gpt-4o-mini'])[1 + g %% 4], "
                "CASE WHEN g %% 50 = 0 THEN 429 WHEN g %% 97 = 0 THEN 502 ELSE 200 END, "
                "CASE WHEN g %% 50 = 0 THEN 'rate_limit_exceeded' "
                "WHEN g %% 97 = 0 THEN 'upstream_error' ELSE '' END, "
                "g %% 2 = 0, 1200, 300, 250, 40, 0.004321, 850 + g %% 400, 210 + g %% 90, "
                "'203.0.113.7', 'openai-python/2.1', "
                "'[{\"upstream\": \"internal-upstream\", \"upstream_id\": 1, "
                "\"credential_id\": 1, \"status\": 200, \"error\": \"\", \"ms\": 800}]', "
                "false FROM generate_series(%s, %s) g",
                [max(wanted, 1), tag, key_id, owner.pk, have + 1, wanted])
        with connection.cursor() as cur:
            cur.execute("ANALYZE billing_usagelog")
    return tenant, user


def export_benchmark(database_url: str, rows: int, filler: int = 0,
                     asgi: bool = False) -> dict[str, Any]:
    """Stream the bench tenant's whole CSV (``rows`` rows) through the test client (or,
    ``asgi``, Django's AsyncClient: the ASGI handler daphne uses); the figures: rows, MiB
    streamed, seconds, peak RSS growth (MiB) while streaming."""
    _setup(database_url)
    from django.test import Client

    from billing.models import UsageLog

    tenant, user = seed(rows, filler)
    total = UsageLog.objects.filter(tenant=tenant).count()
    client = Client()
    client.force_login(user)
    client.get("/portal/usage/?model=none")  # warm: imports, templates, session
    counted = {"lines": 0, "size": 0, "first_byte": None}

    def take(chunk: bytes, started: float) -> None:
        if counted["first_byte"] is None:
            counted["first_byte"] = time.perf_counter() - started
        counted["size"] += len(chunk)
        counted["lines"] += chunk.count(b"\n")

    rss_before = _rss_kib("VmRSS")
    exact_peak = _reset_peak()
    started = time.perf_counter()
    if asgi:
        from asgiref.sync import async_to_sync
        from django.test import AsyncClient

        async def stream() -> None:
            aclient = AsyncClient()
            await aclient.aforce_login(user)
            response = await aclient.get("/portal/usage/export.csv")
            assert response.is_async
            async for chunk in response.streaming_content:
                take(chunk, started)

        async_to_sync(stream)()
    else:
        for chunk in client.get("/portal/usage/export.csv").streaming_content:
            take(chunk, started)
    seconds = time.perf_counter() - started
    peak = _rss_kib("VmHWM") if exact_peak else resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss
    lines = counted["lines"]
    return {
        "handler": "ASGI (AsyncClient)" if asgi else "WSGI (test Client)",
        "tenant_rows": total, "csv_rows": lines - 1, "mib": round(counted["size"] / 2**20, 1),
        "seconds": round(seconds, 1), "rows_per_second": round((lines - 1) / seconds),
        "first_byte_ms": round((counted["first_byte"] or 0) * 1000, 1),
        "rss_before_mib": round(rss_before / 1024, 1),
        "peak_rss_growth_mib": round((peak - rss_before) / 1024, 1),
        "peak_measure": "VmHWM reset before streaming" if exact_peak else "ru_maxrss",
        "table_rows": UsageLog.objects.count(),
    }


def explain_and_time(samples: int = 20) -> dict[str, Any]:
    """EXPLAIN ANALYZE of the log's page queries and the page's server time at depth."""
    from django.db import connection
    from django.test import Client

    from billing.models import UsageLog
    from keys.models import Tenant
    from portal.selectors import usage as sel

    tenant = Tenant.objects.get(name=TENANT)
    rows = sel.filtered(tenant, {})
    n = rows.count()
    deep = rows.order_by(*sel.NEWEST_FIRST).values_list("created_at", "id")[n * 9 // 10]
    cursor = sel.Cursor("older", *deep)
    queries = {
        "first page": rows.order_by(*sel.NEWEST_FIRST),
        "page at 90% depth": sel.older_than(rows, *deep).order_by(*sel.NEWEST_FIRST),
        "page at 90% depth, model=o3 status=client_error": sel.older_than(
            sel.filtered(tenant, {"model": "o3", "status": "client_error"}), *deep
        ).order_by(*sel.NEWEST_FIRST),
        "same, as the page reads it: its first time window (1 h)": sel.older_than(
            sel.filtered(tenant, {"model": "o3", "status": "client_error"}), *deep
        ).filter(created_at__gte=deep[0] - sel.WINDOWS[0]).order_by(*sel.NEWEST_FIRST),
        "newer page at 90% depth": sel.newer_than(rows, *deep).order_by(*sel.OLDEST_FIRST),
    }
    plans = {}
    with connection.cursor() as cur:
        for name, qs in queries.items():
            sql, params = qs.values(*sel.LIST_COLUMNS)[:sel.PAGE_SIZE + 1].query.sql_with_params()
            cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
            plans[name] = "\n".join(r[0] for r in cur.fetchall())
    from keys.models import Membership

    user = Membership.objects.filter(tenant=tenant, role="owner").first().user
    client = Client()
    client.force_login(user)
    timings = {}
    urls = {"first page": "/portal/usage/",
            "page at 90% depth": f"/portal/usage/?cursor={cursor.encode()}",
            "page at 90% depth, filtered": "/portal/usage/?model=o3&status=client_error"
                                           f"&cursor={cursor.encode()}",
            "totals (capped)": "/portal/usage/totals"}
    for name, url in urls.items():
        client.get(url)
        took = []
        for _ in range(samples):
            t = time.perf_counter()
            assert client.get(url).status_code == 200
            took.append((time.perf_counter() - t) * 1000)
        took.sort()
        timings[name] = {"p50_ms": round(statistics.median(took), 1),
                         "p95_ms": round(took[int(len(took) * 0.95) - 1], 1)}
    return {"table_rows": UsageLog.objects.count(), "tenant_rows": n, "plans": plans,
            "timings": timings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--filler", type=int, default=0,
                        help="rows of another tenant, for a big table")
    parser.add_argument("--explain", action="store_true")
    parser.add_argument("--asgi", action="store_true",
                        help="stream through the ASGI handler (AsyncClient), as daphne does")
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL")
    if not url:
        parser.error("set DATABASE_URL to a database of its own")
    figures = export_benchmark(url, args.rows, args.filler, asgi=args.asgi)
    for name, value in figures.items():
        print(f"{name}: {value}")
    if args.explain:
        result = explain_and_time()
        for name, plan in result["plans"].items():
            print(f"\n--- {name}\n{plan}")
        print()
        for name, timing in result["timings"].items():
            print(f"{name}: {timing}")


if __name__ == "__main__":
    main()
