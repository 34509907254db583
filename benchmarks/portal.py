"""Portal benchmark: server time of the portal's pages on a big usage table.

    python -m benchmarks.portal                    # 100k keys, 10M usage rows, 200 requests
    python -m benchmarks.portal --requests 50      # fewer timed requests per page
    python -m benchmarks.portal --rows 1000000     # a smaller table (a fresh database)
    python -m benchmarks.portal --regenerate       # drop the data and make it again

It uses its own PostgreSQL database (``PORTAL_BENCH_DB``, default turnpike_bench_portal,
on the server of DATABASE_URL), made once: 1000 tenants, 100k keys and the usage rows
spread over the last 30 days with INSERT ... SELECT generate_series (like
benchmarks/run.py), then rolled up (daily and hourly, per key and per tenant, and the per-key
totals of the dashboard's window) the way the Celery tasks do. A later
run reuses it (the rollups are brought up to date first, as beat would).

Pages are fetched through Django's test client in this process (server time only: the
view, its queries, the template; no network), after a few warm-up requests; it prints
p50/p95/max per page in milliseconds, as a Markdown table for BENCHMARKS.md ("Portal").

Two tenants are measured: ``bench-big`` (100 keys, 10 % of all rows: one heavy tenant)
and ``bench-wide`` (10,000 keys, 10 % of the rows spread over all of them: the worst case
for the by-key breakdowns). Redis is not used (REDIS_URL is dropped): the limiter's
in-memory backend answers "available" from nothing, and the page shows the balance.

More pages: append a ``Page`` to PAGES (a path, or a function of the context that returns
one, and an optional check); other measurements (e.g. an export's memory): append a
function to EXTRA, called with the context after the pages.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

DB_NAME = os.environ.get("PORTAL_BENCH_DB", "turnpike_bench_portal")
TENANTS = 1000
BIG_KEYS = 100
WIDE_KEYS = 10_000
MODELS = ("gpt-5", "gpt-5-mini", "o3", "gpt-4o-mini")
USER = "bench-portal@example.com"


def database_url(name: str = DB_NAME) -> str:
    """DATABASE_URL (or the local default) with its database renamed: a benchmark's own."""
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/turnpike")
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


def _ensure_database(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                            [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def setup_django(url: str | None = None) -> None:
    url = url or database_url()
    _ensure_database(url)
    os.environ["DATABASE_URL"] = url
    os.environ.pop("REDIS_URL", None)
    os.environ.setdefault("SECRET_KEY", "portal-bench")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["DJANGO_SETTINGS_MODULE"] = "portal.settings"
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- data ------------------------------------------------------------------------------------

@dataclass
class Band:
    """Usage rows ``prefix`` || 1..rows, spread over the ``span`` seconds before ``end``
    (None: the current time)."""
    prefix: str
    rows: int
    span: int = 2_592_000  # 30 days
    end: Any = None


def generate(keys: int, rows: int, regenerate: bool, more: list[Band] | None = None) -> None:
    """Tenants, keys and ``rows`` usage rows over the last 30 days (prefix ``pb_``), plus
    the rows of ``more`` bands (other prefixes, other periods), loaded together."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from billing.models import UsageLog
    from keys.models import ApiKey, Membership, Tenant

    if regenerate:
        say("dropping the old data")
        with connection.cursor() as cur:
            cur.execute("TRUNCATE billing_usagelog, billing_usagerollup, "
                        "billing_usagerolluphourly, billing_usagerolluptenant, "
                        "billing_usagerolluptenanthourly, billing_keyusagetotals, "
                        "billing_rollupstate")
        ApiKey.objects.all().delete()
        Tenant.objects.filter(name__startswith="bench-").delete()
    if not Tenant.objects.filter(name="bench-big").exists():
        say(f"creating {TENANTS} tenants and {keys} keys")
        names = ["bench-big", "bench-wide"] + [f"bench-t{i:04d}" for i in range(TENANTS - 2)]
        Tenant.objects.bulk_create([Tenant(name=n, balance=1000) for n in names])
        ids = dict(Tenant.objects.filter(name__startswith="bench-").values_list("name", "pk"))
        others = [ids[n] for n in names[2:]]
        big_keys, wide_keys = min(BIG_KEYS, keys // 20), min(WIDE_KEYS, keys // 10)
        plan = [(ids["bench-big"], big_keys, None), (ids["bench-wide"], wide_keys, None),
                (None, keys - big_keys - wide_keys, others)]
        n = 0
        for tenant_id, count, spread in plan:
            batch = []
            for i in range(count):
                n += 1
                owner = tenant_id if spread is None else spread[i % len(spread)]
                batch.append(ApiKey(tenant_id=owner, name=f"bench key {n}", prefix=f"sk-b{n:07d}",
                                    last4=f"{n % 10000:04d}", secret_hash=f"bench{n:059d}"))
                if len(batch) == 5000:
                    ApiKey.objects.bulk_create(batch)
                    batch = []
            if batch:
                ApiKey.objects.bulk_create(batch)
    user = get_user_model().objects.filter(username=USER).first()
    if user is None:
        user = get_user_model().objects.create_user(username=USER, email=USER, password="x")
    for name in ("bench-big", "bench-wide"):
        Membership.objects.get_or_create(user=user, tenant=Tenant.objects.get(name=name),
                                         defaults={"role": "owner"})

    _restore_indexes()
    from django.utils import timezone

    bands = [Band("pb_", rows), *(more or [])]
    todo = []
    for band in bands:
        have = UsageLog.objects.filter(request_id__startswith=band.prefix).count()
        if have >= band.rows:
            say(f"{have} usage rows {band.prefix}* already there")
        else:
            todo.append((band, have))
    if not todo:
        return
    big = list(ApiKey.objects.filter(tenant__name="bench-big").order_by("pk")
               .values_list("pk", flat=True))
    wide = list(ApiKey.objects.filter(tenant__name="bench-wide").order_by("pk")
                .values_list("pk", flat=True))
    rest = list(ApiKey.objects.exclude(tenant__name__in=("bench-big", "bench-wide"))
                .filter(tenant__name__startswith="bench-").order_by("pk")
                .values_list("pk", "tenant_id"))
    assert big[-1] - big[0] + 1 == len(big) and wide[-1] - wide[0] + 1 == len(wide)
    assert rest[-1][0] - rest[0][0] + 1 == len(rest)
    other_tenants = sorted({t for _, t in rest})
    assert other_tenants[-1] - other_tenants[0] + 1 == len(other_tenants) == TENANTS - 2
    big_tenant = Tenant.objects.get(name="bench-big").pk
    wide_tenant = Tenant.objects.get(name="bench-wide").pk
    first_other_tenant = min(t for _, t in rest)
    spread = TENANTS - 2
    chunk = 1_000_000
    # g -> h: a cheap deterministic hash; u in [0, 1). Tenant by g % 10: 0 big (its keys
    # skewed: u^2), 1 wide (uniform over its 10k keys: every key busy, the worst case for
    # the rollups), else one of the others (key index ko skewed like real traffic, u^4: the
    # top 1 % of keys carry about a third of it; tenant = that key's tenant, as created).
    sql = f"""
        INSERT INTO billing_usagelog (created_at, request_id, key_id, key_prefix, tenant_id,
            endpoint, model, status_code, error_code, stream, input_tokens, cached_tokens,
            output_tokens, reasoning_tokens, cost, latency_ms, ttfb_ms, user_agent, attempts,
            estimated)
        SELECT TIMESTAMPTZ 'END_AT' - (((g * 7919) % SPAN) * interval '1 second'),
               'PREFIX' || g,
               CASE WHEN g % 10 = 0 THEN {big[0]} + floor({len(big)} * u * u)::int
                    WHEN g % 10 = 1 THEN {wide[0]} + (h % {len(wide)})
                    ELSE {rest[0][0]} + ko END,
               'sk-b',
               CASE WHEN g % 10 = 0 THEN {big_tenant}
                    WHEN g % 10 = 1 THEN {wide_tenant}
                    ELSE {first_other_tenant} + (ko % {spread}) END,
               'responses',
               (ARRAY{list(MODELS)})[(1 + (h / 7) % {len(MODELS)})::int],
               CASE WHEN h % 50 = 0 THEN 500 WHEN h % 50 = 1 THEN 429 ELSE 200 END,
               CASE WHEN h % 50 = 0 THEN 'upstream_error' WHEN h % 50 = 1 THEN 'rate_limited'
                    ELSE '' END,
               h % 2 = 0,
               100 + h % 2000, (h % 3) * 50, 50 + h % 800, h % 200,
               ((100 + h % 2000) * 0.00000125 + (50 + h % 800) * 0.00001)::numeric(20, 8),
               120 + (h / 11) % 4000,
               CASE WHEN h % 2 = 0 THEN 40 + (h / 13) % 900 END,
               'bench', '[]', false
        FROM (SELECT g, h, u, floor({len(rest)} * u * u * u * u)::bigint AS ko
              FROM (SELECT g, (g * 2654435761) % 4294967291 AS h,
                           ((g * 2654435761) % 4294967291) / 4294967291.0 AS u
                    FROM generate_series(FIRST_G::bigint, LAST_G::bigint) g) r) s
    """
    # Loading millions of rows into a table with a dozen indexes is slow: drop the
    # secondary indexes (and the request_id unique constraint) for the load and build them
    # again afterwards, with the same names and definitions (Django's migrations still
    # match).
    # The definitions are kept in a table of this database first, so a load that was
    # interrupted gets them back on the next run (``_restore_indexes``).
    with connection.cursor() as cur:
        cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = "
                    "'billing_usagelog' AND indexname <> 'billing_usagelog_pkey'")
        indexes = cur.fetchall()
        cur.execute("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE "
                    "conrelid = 'billing_usagelog'::regclass AND contype = 'u'")
        uniques = cur.fetchall()
        constraint_indexes = {name for name, _ in uniques}
        cur.execute("CREATE TABLE IF NOT EXISTS portal_bench_dropped "
                    "(name text PRIMARY KEY, kind text, definition text)")
        for name, definition in uniques:
            cur.execute("INSERT INTO portal_bench_dropped VALUES (%s, 'constraint', %s) "
                        "ON CONFLICT DO NOTHING", [name, definition])
        for name, definition in indexes:
            if name not in constraint_indexes:
                cur.execute("INSERT INTO portal_bench_dropped VALUES (%s, 'index', %s) "
                            "ON CONFLICT DO NOTHING", [name, definition])
        for name, _ in uniques:
            cur.execute(f'ALTER TABLE billing_usagelog DROP CONSTRAINT "{name}"')
        for name, _ in indexes:
            if name not in constraint_indexes:
                cur.execute(f'DROP INDEX IF EXISTS "{name}"')
    for band, have in todo:
        start = have + 1
        band_sql = (sql.replace("END_AT", (band.end or timezone.now()).isoformat())
                    .replace("SPAN", str(band.span)).replace("PREFIX", band.prefix))
        while start <= band.rows:
            end = min(band.rows, start + chunk - 1)
            t = time.monotonic()
            with connection.cursor() as cur:  # no parameters: "%" is the modulo operator
                cur.execute(band_sql.replace("FIRST_G", str(start))
                            .replace("LAST_G", str(end)))
            say(f"usage rows {band.prefix}{start}..{end} in {time.monotonic() - t:.0f} s")
            start = end + 1
    _restore_indexes()


def _restore_indexes() -> None:
    """Build the indexes and constraints a load dropped (this run's, or an interrupted
    one's: a killed client's INSERT may still commit, so after an interrupted load use
    --regenerate)."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT to_regclass('portal_bench_dropped')")
        if cur.fetchone()[0] is None:
            return
        cur.execute("SET maintenance_work_mem = '512MB'")
        cur.execute("SELECT name, kind, definition FROM portal_bench_dropped "
                    "ORDER BY kind DESC, name")
        for name, kind, definition in cur.fetchall():
            t = time.monotonic()
            if kind == "constraint":
                cur.execute(f'ALTER TABLE billing_usagelog ADD CONSTRAINT "{name}" '
                            f"{definition}")
            else:  # a partitioned table's index reads "ON ONLY": build the partitions' too
                cur.execute(definition.replace(" ON ONLY ", " ON ", 1))
            cur.execute("DELETE FROM portal_bench_dropped WHERE name = %s", [name])
            say(f"{kind} {name} in {time.monotonic() - t:.0f} s")
        cur.execute("DROP TABLE portal_bench_dropped")
        cur.execute("ANALYZE billing_usagelog")


def rollups_up_to_date() -> None:
    """Daily rollups of the last 31 days and hourly ones since yesterday, with watermarks,
    as the Celery tasks leave them (only what changed is written on a later run)."""
    from datetime import timedelta

    from django.db import connection
    from django.utils import timezone

    from billing import rollups
    from billing.models import RollupState

    now = timezone.now()
    today = rollups.local_date(now)
    if not RollupState.objects.filter(name="daily").exists():
        for back in range(31, 0, -1):
            t = time.monotonic()
            day = today - timedelta(days=back)
            n = rollups.rollup_day(day, now=now)
            say(f"daily rollup {day}: {n} rows in {time.monotonic() - t:.1f} s")
        RollupState.objects.create(name="daily", since=rollups.day_bounds(today - timedelta(
            days=31))[0], through=rollups.day_bounds(today)[0])
    t = time.monotonic()
    rollups.rollup_recent_days(now)
    say(f"daily rollups caught up in {time.monotonic() - t:.1f} s")
    t = time.monotonic()
    done = rollups.rollup_recent_hours(now)
    say(f"hourly rollups caught up ({len(done)} hours) in {time.monotonic() - t:.1f} s")
    with connection.cursor() as cur:
        for table in ("billing_usagerollup", "billing_usagerolluphourly",
                      "billing_usagerolluptenant", "billing_usagerolluptenanthourly",
                      "billing_keyusagetotals"):
            cur.execute(f"ANALYZE {table}")


# --- measurement --------------------------------------------------------------------------

@dataclass
class Page:
    label: str
    path: str | Callable[[dict[str, Any]], str | None]
    tenant: str = "bench-big"
    check: bytes = b""


@dataclass
class Result:
    label: str
    times_ms: list[float] = field(default_factory=list)
    note: str = ""

    def row(self) -> str:
        if not self.times_ms:
            return f"| {self.label} | - | - | - | {self.note} |"
        ordered = sorted(self.times_ms)
        p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
        return (f"| {self.label} | {statistics.median(ordered):.1f} | {p95:.1f} | "
                f"{ordered[-1]:.1f} | {self.note} |")


def _resolves(path: str) -> bool:
    from django.urls import Resolver404, resolve

    try:
        resolve(path)
    except Resolver404:
        return False
    return True


def _top_key(ctx: dict[str, Any]) -> str | None:
    from billing.models import UsageRollup

    row = (UsageRollup.objects.filter(tenant__name="bench-big").values("key_id")
           .order_by("-requests").first())
    return f"/portal/dashboard/keys/{row['key_id']}/" if row else None


PAGES: list[Page] = [
    Page("dashboard, bench-big (100 keys, 1M rows)", "/portal/", "bench-big", b"chart"),
    Page("dashboard, bench-wide (10k keys, 1M rows)", "/portal/", "bench-wide", b"chart"),
    Page("key usage, bench-big's busiest key", _top_key, "bench-big"),
    Page("key list, bench-wide (10k keys)", "/portal/keys/", "bench-wide"),
    Page("usage log, bench-big", "/portal/usage/", "bench-big"),
    Page("usage log, bench-wide (10k keys)", "/portal/usage/", "bench-wide"),
]
EXTRA: list[Callable[[dict[str, Any]], list[Result]]] = []


def measure(page: Page, ctx: dict[str, Any], n: int) -> Result:
    from django.test import Client

    from keys.models import Tenant
    from portal.tenancy import SESSION_KEY

    path = page.path(ctx) if callable(page.path) else page.path
    result = Result(page.label)
    if not path or not _resolves(path):
        result.note = "not on this branch: skipped"
        return result
    client = Client(HTTP_HOST="localhost")
    client.force_login(ctx["user"])
    session = client.session
    session[SESSION_KEY] = Tenant.objects.get(name=page.tenant).pk
    session.save()
    for _ in range(3):
        resp = client.get(path)
        assert resp.status_code == 200, (path, resp.status_code)
        assert page.check in resp.content
    for _ in range(n):
        t = time.perf_counter()
        resp = client.get(path)
        result.times_ms.append((time.perf_counter() - t) * 1000)
        assert resp.status_code == 200
    result.note = f"`{path}`, {n} requests"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument("--generate-only", action="store_true",
                        help="Make the data and the rollups, measure nothing.")
    args = parser.parse_args()
    setup_django()
    from django.contrib.auth import get_user_model

    generate(args.keys, args.rows, args.regenerate)
    rollups_up_to_date()
    if args.generate_only:
        return
    ctx: dict[str, Any] = {"user": get_user_model().objects.get(username=USER),
                           "requests": args.requests}
    results = [measure(page, ctx, args.requests) for page in PAGES]
    for extra in EXTRA:
        results += extra(ctx)
    from billing.models import (
        KeyUsageTotals,
        UsageLog,
        UsageRollup,
        UsageRollupHourly,
        UsageRollupTenant,
        UsageRollupTenantHourly,
    )
    from keys.models import ApiKey

    print()
    print(f"{ApiKey.objects.count()} keys, {UsageLog.objects.count()} usage rows, "
          f"{UsageRollup.objects.count()} daily and {UsageRollupHourly.objects.count()} "
          f"hourly per-key rollup rows, {UsageRollupTenant.objects.count()} daily and "
          f"{UsageRollupTenantHourly.objects.count()} hourly per-tenant ones, "
          f"{KeyUsageTotals.objects.count()} per-key totals")
    print()
    print("| page | p50 ms | p95 ms | max ms | |")
    print("|---|---:|---:|---:|---|")
    for r in results:
        print(r.row())


if __name__ == "__main__":
    main()
