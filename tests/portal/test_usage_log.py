"""The usage log: filters, keyset pages, the htmx partial, the streamed CSV export, one
request's detail (staff and member views of the upstream attempts), and tenant isolation."""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import os
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.http import StreamingHttpResponse
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext

from billing.models import ModelPrice, UsageLog
from gateway.models import Credential, Upstream
from keys.models import ApiKey, Group, Membership, Tenant
from keys.services import key_create
from portal.selectors import usage as sel

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)
_seq = itertools.count()


def member(email: str, tenant: Tenant, role: str = "member", staff: bool = False) -> Client:
    user = get_user_model().objects.create_user(username=email, email=email, password="pw-1!",
                                                is_staff=staff)
    Membership.objects.create(tenant=tenant, user=user, role=role)
    client = Client()
    client.force_login(user)
    return client


def log(tenant: Tenant | None, key: ApiKey | None = None, *, at: dt.datetime = T0,
        **fields: Any) -> UsageLog:
    n = next(_seq)
    values: dict[str, Any] = {
        "created_at": at, "request_id": f"req_{n:06d}", "tenant": tenant, "key": key,
        "key_prefix": key.prefix if key else "", "endpoint": "responses", "model": "gpt-5",
        "status_code": 200, "input_tokens": 100, "cached_tokens": 20, "output_tokens": 50,
        "reasoning_tokens": 10, "cost": Decimal("0.001250"), "latency_ms": 900,
        "ttfb_ms": 300, "client_ip": "203.0.113.9", "user_agent": "openai-python/2.1"}
    values.update(fields)
    return UsageLog.objects.create(**values)


@pytest.fixture
def acme() -> Tenant:
    return Tenant.objects.create(name="acme")


@pytest.fixture
def beta() -> Tenant:
    return Tenant.objects.create(name="beta")


@pytest.fixture
def key_a(acme: Tenant) -> ApiKey:
    return key_create(tenant=acme, name="alpha key").key


def ids(content: bytes) -> list[str]:
    """Request ids of the table's rows, in page order."""
    import re

    return re.findall(r"/portal/usage/(req_[0-9a-z_]+)/", content.decode())


def csv_rows(response: Any) -> list[list[str]]:
    body = b"".join(response.streaming_content).decode()
    return list(csv.reader(io.StringIO(body)))


# --- the list and its filters ---------------------------------------------------------------

def test_the_log_lists_the_tenants_requests_newest_first_with_every_column(acme, key_a):
    old = log(acme, key_a, at=T0)
    new = log(acme, key_a, at=T0 + dt.timedelta(minutes=1), stream=True, error_code="",
              estimated=True)
    page = member("a@example.com", acme).get("/portal/usage/")
    assert page.status_code == 200
    html = page.content.decode()
    assert ids(page.content) == [new.request_id, old.request_id]
    assert 'href="/portal/usage/"' in html and ">Usage<" in html  # the nav link
    assert f"{key_a.prefix}…{key_a.last4}" in html and "alpha key" in html
    for text in ("gpt-5", "responses", "100 / 20 / 50 / 10", "0.001250", ">900<", ">300<",
                 'data-live="on"', "usage.js"):
        assert text in html, text


def test_an_empty_log_says_what_will_appear(acme):
    page = member("a@example.com", acme).get("/portal/usage/")
    assert b"No requests yet" in page.content


@pytest.mark.parametrize("query, expected", [
    ("model=o3", {"o3"}),
    ("endpoint=chat/completions", {"chat"}),
    ("status=success", {"base", "o3", "chat", "stream", "other key"}),
    ("status=client_error", {"429"}),
    ("status=upstream_error", {"502", "cut", "500"}),
    ("error_code=rate_limit_exceeded", {"429"}),
    ("stream=yes", {"stream", "cut"}),
    ("stream=no", {"base", "o3", "chat", "429", "502", "500", "other key"}),
    ("error_code=upstream_stream_cut", {"cut"}),
    ("status=upstream_error&error_code=rate_limit_exceeded", set()),
])
def test_each_filter_narrows_the_log(acme, key_a, query, expected):
    other_key = key_create(tenant=acme, name="other").key
    made = {
        "base": log(acme, key_a),
        "o3": log(acme, key_a, model="o3"),
        "chat": log(acme, key_a, endpoint="chat/completions"),
        "429": log(acme, key_a, status_code=429, error_code="rate_limit_exceeded"),
        "502": log(acme, key_a, status_code=502, error_code="upstream_error"),
        "500": log(acme, key_a, status_code=500, error_code="internal_error"),
        "stream": log(acme, key_a, stream=True),
        # The upstream broke the stream off after its 200 went out: an upstream error.
        "cut": log(acme, key_a, stream=True, error_code="upstream_stream_cut"),
        "other key": log(acme, other_key),
    }
    names = {v.request_id: k for k, v in made.items()}
    client = member("a@example.com", acme)
    page = client.get(f"/portal/usage/?{query}")
    assert {names[i] for i in ids(page.content)} == expected
    assert {names[r[1]] for r in csv_rows(client.get(f"/portal/usage/export.csv?{query}"))[1:]
            } == expected


def test_a_stream_cut_after_its_200_shows_as_an_upstream_error(acme, key_a):
    cut = log(acme, key_a, stream=True, error_code="upstream_stream_cut")
    client = member("a@example.com", acme)
    html = client.get("/portal/usage/").content.decode()
    assert '<span class="badge bad">200</span> <span class="mono">upstream_stream_cut' in html
    detail = client.get(f"/portal/usage/{cut.request_id}/").content.decode()
    assert '<span class="badge bad">200</span>' in detail and "badge ok" not in detail


def test_the_key_filter_takes_a_key_id_or_its_prefix(acme, key_a):
    other = key_create(tenant=acme, name="other").key
    mine, theirs = log(acme, key_a), log(acme, other)
    client = member("a@example.com", acme)
    assert ids(client.get(f"/portal/usage/?key={key_a.pk}").content) == [mine.request_id]
    assert ids(client.get(f"/portal/usage/?key={other.prefix}").content) == [theirs.request_id]


@override_settings(TIME_ZONE="Asia/Shanghai")
def test_the_date_range_is_in_local_days(acme, key_a):
    # 2026-03-01 17:30 UTC is 2026-03-02 01:30 in Shanghai; 15:30 UTC is 23:30 on the 1st.
    late = log(acme, key_a, at=dt.datetime(2026, 3, 1, 17, 30, tzinfo=dt.UTC))
    early = log(acme, key_a, at=dt.datetime(2026, 3, 1, 15, 30, tzinfo=dt.UTC))
    client = member("a@example.com", acme)
    assert ids(client.get("/portal/usage/?date_from=2026-03-02&date_to=2026-03-02").content
               ) == [late.request_id]
    assert ids(client.get("/portal/usage/?date_to=2026-03-01").content) == [early.request_id]
    assert ids(client.get("/portal/usage/?date_from=2026-03-01").content
               ) == [late.request_id, early.request_id]


@pytest.mark.parametrize("query, message", [
    ("date_from=yesterday", b"Enter a valid date"),
    ("status=bogus", b"Select a valid choice"),
    ("stream=maybe", b"Select a valid choice"),
    ("endpoint=embeddings", b"Select a valid choice"),
    ("key=999999", b"No key of this tenant matches"),
    ("date_from=2026-03-05&date_to=2026-03-01", b"The end date is before the start date"),
    ("cursor=not-a-cursor!!", b"This page link is not valid"),
    ("cursor=WyJ4IiwxLDFd", b"This page link is not valid"),  # ["x",1,1]
    ("model=" + "m" * 300, b"Ensure this value has at most 200 characters"),
])
def test_invalid_filters_are_form_errors_not_500s(acme, key_a, query, message):
    log(acme, key_a)
    client = member("a@example.com", acme)
    page = client.get(f"/portal/usage/?{query}")
    assert page.status_code == 200 and message in page.content
    assert b"Some filters are not valid" in page.content and ids(page.content) == []
    partial = client.get(f"/portal/usage/?{query}", HTTP_HX_REQUEST="true")
    assert partial.status_code == 200 and message in partial.content
    if not query.startswith("cursor"):
        export = client.get(f"/portal/usage/export.csv?{query}")
        assert export.status_code == 400 and b"Invalid filters" in export.content


# --- keyset pages ---------------------------------------------------------------------------

def walk(client: Client, url: str, direction: str = "older") -> tuple[list[str], list[str]]:
    """Follow the "older" (or "newer") links to the end; the ids seen and the urls used."""
    import html as htmlmod
    import re

    seen, urls = [], [url]
    while True:
        page = client.get(url)
        seen += ids(page.content)
        rel = "next" if direction == "older" else "prev"
        found = re.search(rf'<a href="([^"]+)"[^>]*rel="{rel}"', page.content.decode())
        if not found:
            return seen, urls
        url = "/portal/usage/" + htmlmod.unescape(found.group(1))
        urls.append(url)


def test_keyset_pages_cover_every_row_once_even_with_equal_timestamps(acme, key_a):
    rows = [log(acme, key_a, at=T0 + dt.timedelta(seconds=i // 7)) for i in range(130)]
    expected = [r.request_id for r in sorted(rows, key=lambda r: (r.created_at, r.id),
                                             reverse=True)]
    client = member("a@example.com", acme)
    seen, urls = walk(client, "/portal/usage/")
    assert seen == expected and len(urls) == 3  # 50 + 50 + 30, no duplicates, no gaps
    assert "offset" not in "".join(urls).lower() and "page=" not in "".join(urls)
    # Back from the last page through the "newer" links gives the same rows in order.
    back, _ = walk(client, urls[-1], direction="newer")
    assert back[:30] == expected[100:] and set(back) == set(expected)


def test_keyset_pages_are_stable_while_new_rows_arrive(acme, key_a):
    rows = [log(acme, key_a, at=T0 + dt.timedelta(seconds=i)) for i in range(120)]
    client = member("a@example.com", acme)
    first = client.get("/portal/usage/")
    import html as htmlmod
    import re

    older = htmlmod.unescape(re.search(r'<a href="([^"]+)"[^>]*rel="next"',
                                       first.content.decode()).group(1))
    for i in range(30):  # newer requests land while the user reads page one
        log(acme, key_a, at=T0 + dt.timedelta(hours=1, seconds=i))
    rest, _ = walk(client, "/portal/usage/" + older)
    expected = [r.request_id for r in reversed(rows)]
    assert ids(first.content) + rest == expected


def test_filtered_pages_through_time_windows_match_the_plain_query(acme, key_a):
    """Pages filtered on unindexed columns are read through widening time windows; they
    give exactly the rows of the unbounded query, in both directions, at every depth."""
    from django.utils import timezone

    now = timezone.now()
    spread = [3 * 60, 20 * 60, 5 * 3600, 2 * 86400, 10 * 86400, 60 * 86400, 400 * 86400]
    for i in range(140):  # every 5th row is o3, the rest spread from minutes to a year back
        log(acme, key_a, at=now - dt.timedelta(seconds=spread[i % 7] + i),
            model="o3" if i % 5 == 0 else "gpt-5")
    log(acme, key_a, at=now + dt.timedelta(minutes=2), model="o3")  # a clock ahead
    rows = sel.filtered(acme, {"model": "o3"})
    for size in (3, 7, 50):
        cursor, seen_windowed, seen_plain = None, [], []
        while True:
            a = sel.page(rows, cursor, size=size, windowed=True)
            b = sel.page(rows, cursor, size=size, windowed=False)
            assert [r["id"] for r in a.rows] == [r["id"] for r in b.rows]
            assert (a.older, a.newer) == (b.older, b.newer)
            seen_windowed += [r["id"] for r in a.rows]
            if not a.older:
                break
            cursor = sel.Cursor.decode(a.older)
            back = sel.page(rows, sel.Cursor.decode(a.older), size=size, windowed=True)
            assert back.rows  # and newer from there is the plain query's too
            newer = sel.Cursor.decode(back.newer)
            assert [r["id"] for r in sel.page(rows, newer, size=size, windowed=True).rows] == [
                r["id"] for r in sel.page(rows, newer, size=size).rows]
        seen_plain = list(rows.order_by(*sel.NEWEST_FIRST).values_list("id", flat=True))
        assert seen_windowed == seen_plain and len(seen_plain) == 29


def test_a_cursor_only_moves_within_ones_own_tenant(acme, beta, key_a):
    mine = [log(acme, key_a, at=T0 + dt.timedelta(seconds=i)) for i in range(3)]
    log(beta, None, at=T0 - dt.timedelta(seconds=1))
    cursor = sel.Cursor("older", mine[-1].created_at, mine[-1].id).encode()
    page = member("a@example.com", acme).get(f"/portal/usage/?cursor={cursor}")
    assert ids(page.content) == [mine[1].request_id, mine[0].request_id]


def test_the_page_query_uses_the_tenant_time_index_and_no_offset(acme, key_a):
    log(acme, key_a)
    rows = sel.filtered(acme, {})
    cursor = sel.Cursor("older", T0, 10**9)
    qs = sel.older_than(rows, cursor.created_at, cursor.id).order_by(*sel.NEWEST_FIRST)
    sql = str(qs.values(*sel.LIST_COLUMNS)[:51].query)
    assert "OFFSET" not in sql.upper() and '"created_at" <=' in sql


# --- htmx and live --------------------------------------------------------------------------

def test_htmx_gets_only_the_table_partial(acme, key_a):
    row = log(acme, key_a)
    client = member("a@example.com", acme)
    partial = client.get("/portal/usage/?model=gpt-5", HTTP_HX_REQUEST="true")
    body = partial.content.decode()
    assert partial.status_code == 200 and "<html" not in body and "<form" not in body
    assert body.lstrip().startswith('<div id="usage-results"') and row.request_id in body
    assert "HX-Request" in partial["Vary"]
    assert 'data-live="off"' in body  # filtered: live rows are not prepended
    full = client.get("/portal/usage/?model=gpt-5")
    assert b"<html" in full.content and b'hx-get="/portal/usage/"' in full.content


def test_totals_cover_the_filtered_range_and_say_when_capped(acme, key_a):
    for _ in range(3):
        log(acme, key_a)
    log(acme, key_a, model="o3", status_code=500, cost=Decimal("1"))
    client = member("a@example.com", acme)
    body = client.get("/portal/usage/totals?model=gpt-5", HTTP_HX_REQUEST="true").content
    assert b"3 requests" in body and b"300 in" in body and b"0.003750" in body
    nojs = client.get("/portal/usage/?totals=1")
    assert b"4 requests" in nojs.content and b"1 error" in nojs.content
    capped = sel.totals(sel.filtered(acme, {}), cap=2)
    assert capped["capped"] and capped["requests"] == 2


def test_live_rows_carry_no_upstream_fields(acme, key_a):
    row = log(acme, key_a, attempts=[{"upstream": "secret-up", "upstream_id": 7,
                                      "credential_id": 3, "status": 200, "error": "",
                                      "ms": 5}])
    text = repr(sel.live_row(row))
    assert "secret-up" not in text and "upstream" not in text and "credential" not in text


# --- export ---------------------------------------------------------------------------------

def test_the_export_streams_every_filtered_row_in_machine_format(acme, key_a, monkeypatch):
    monkeypatch.setattr(sel, "EXPORT_CHUNK", 3)
    made = [log(acme, key_a, at=T0 + dt.timedelta(seconds=i // 2), stream=bool(i % 2),
                attempts=[{"upstream": "upstream-secret-name", "upstream_id": 1,
                           "credential_id": 2, "status": 200, "error": "", "ms": 1}])
            for i in range(10)]
    log(acme, key_create(tenant=acme, name="other").key)  # filtered out
    client = member("a@example.com", acme)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"/portal/usage/export.csv?key={key_a.pk}")
        assert isinstance(response, StreamingHttpResponse) and response.streaming
        before = len([q for q in queries if "billing_usagelog" in q["sql"]])
        stream = iter(response.streaming_content)
        header = next(stream).decode()
        after_header = len([q for q in queries if "billing_usagelog" in q["sql"]])
        first = next(stream).decode()
        after_one = len([q for q in queries if "billing_usagelog" in q["sql"]])
        rest = b"".join(stream).decode()
        after_all = len([q for q in queries if "billing_usagelog" in q["sql"]])
    # One query per chunk of 3 rows (3 + 3 + 3 + 1), each run only when its block is read.
    assert (before, after_header, after_one, after_all) == (0, 0, 1, 4)
    assert first.count("\n") == 3
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(header + first + rest)))
    assert rows[0] == sel.EXPORT_HEADER
    assert [r[1] for r in rows[1:]] == [r.request_id for r in sorted(
        made, key=lambda r: (r.created_at, r.id), reverse=True)]
    sample = dict(zip(rows[0], rows[1], strict=True))
    assert sample["time"] == "2026-03-10T12:00:04Z"
    assert sample["cost"] == "0.001250" and sample["stream"] in ("true", "false")
    assert sample["key"] == f"{key_a.prefix}…{key_a.last4}" and sample["ttfb_ms"] == "300"
    assert "upstream-secret-name" not in header + first + rest


def test_under_asgi_the_export_is_an_async_stream(acme, key_a, monkeypatch):
    """daphne serves the portal: Django reads a sync iterator whole before sending it under
    ASGI, so there the export must be an async iterator, still one query per chunk."""
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    monkeypatch.setattr(sel, "EXPORT_CHUNK", 4)
    made = [log(acme, key_a, at=T0 + dt.timedelta(seconds=i)) for i in range(10)]
    user = get_user_model().objects.create_user(username="x@example.com", password="p")
    Membership.objects.create(tenant=acme, user=user, role="member")

    async def export() -> tuple[bool, list[bytes]]:
        client = AsyncClient()
        await client.aforce_login(user)
        response = await client.get("/portal/usage/export.csv")
        assert response.status_code == 200
        return response.is_async, [part async for part in response.streaming_content]

    is_async, parts = async_to_sync(export)()
    assert is_async and len(parts) == 4  # the header, then chunks of 4, 4 and 2 rows
    rows = list(csv.reader(io.StringIO(b"".join(parts).decode())))
    assert [r[1] for r in rows[1:]] == [r.request_id for r in reversed(made)]


def test_a_filtered_export_walks_time_slices_and_writes_every_match_once(acme, key_a):
    from django.utils import timezone

    now = timezone.now()
    spread = [60, 50 * 60, 7 * 3600, 2 * 86400, 9 * 86400, 70 * 86400, 500 * 86400]
    made = [log(acme, key_a, at=now - dt.timedelta(seconds=spread[i % 7] + i),
                status_code=429 if i % 3 == 0 else 200)
            for i in range(120)]
    log(acme, key_a, at=now + dt.timedelta(minutes=3), status_code=429)  # a clock ahead
    rows = sel.filtered(acme, {"status": "client_error"})
    plain = [r for c in sel.export_chunks(rows, 4) for r in c][1:]
    for chunk in (1, 4, 7, 100):
        sliced = [r for c in sel.export_chunks(rows, chunk, sliced=True,
                                               floor=sel.oldest(acme)) for r in c][1:]
        assert sliced == plain
    assert len(plain) == 41 and len({r[1] for r in plain}) == 41
    client = member("a@example.com", acme)
    exported = csv_rows(client.get("/portal/usage/export.csv?status=client_error"))[1:]
    assert [r[1] for r in exported] == [r[1] for r in plain]
    assert {r.request_id for r in made if r.status_code == 429} <= {r[1] for r in exported}


@override_settings(USE_THOUSAND_SEPARATOR=True, LANGUAGE_CODE="zh-hans")
def test_the_export_is_not_localised(acme, key_a):
    log(acme, key_a, input_tokens=1234567, cost=Decimal("1234.5"))
    rows = csv_rows(member("a@example.com", acme).get("/portal/usage/export.csv",
                                                      HTTP_ACCEPT_LANGUAGE="zh-CN"))
    sample = dict(zip(rows[0], rows[1], strict=True))
    assert sample["input_tokens"] == "1234567" and sample["cost"] == "1234.500000"


@pytest.mark.parametrize("role", ["owner", "admin", "member"])
def test_every_role_may_export_its_tenants_rows(acme, key_a, role):
    row = log(acme, key_a)
    response = member(f"{role}@example.com", acme, role).get("/portal/usage/export.csv")
    assert response.status_code == 200 and row.request_id in b"".join(
        response.streaming_content).decode()


def test_anonymous_users_are_sent_to_log_in():
    for path in ("/portal/usage/", "/portal/usage/export.csv", "/portal/usage/req_x/",
                 "/portal/usage/totals"):
        assert Client().get(path).status_code == 302


# --- tenant isolation -----------------------------------------------------------------------

def test_another_tenant_never_sees_these_rows(acme, beta, key_a):
    theirs = log(acme, key_a)
    mine = log(beta, None)
    b = member("b@example.com", beta, "owner")
    listing = b.get("/portal/usage/")
    assert ids(listing.content) == [mine.request_id]
    assert theirs.request_id.encode() not in listing.content
    partial = b.get("/portal/usage/", HTTP_HX_REQUEST="true")
    assert theirs.request_id.encode() not in partial.content
    assert b.get(f"/portal/usage/{theirs.request_id}/").status_code == 404
    exported = csv_rows(b.get("/portal/usage/export.csv"))
    assert [r[1] for r in exported[1:]] == [mine.request_id]
    # A's key as a filter is "no such key", not A's rows.
    assert b"No key of this tenant" in b.get(f"/portal/usage/?key={key_a.pk}").content
    assert b.get(f"/portal/usage/export.csv?key={key_a.pk}").status_code == 400
    totals = b.get("/portal/usage/totals", HTTP_HX_REQUEST="true").content
    assert b"1 request" in totals


def test_rows_without_a_tenant_are_nobodys(acme, key_a):
    orphan = log(None, None, status_code=401, error_code="invalid_api_key")
    client = member("a@example.com", acme)
    assert orphan.request_id.encode() not in client.get("/portal/usage/").content
    assert client.get(f"/portal/usage/{orphan.request_id}/").status_code == 404


# --- one request ----------------------------------------------------------------------------

@pytest.fixture
def tried(acme: Tenant, key_a: ApiKey) -> UsageLog:
    up = Upstream.objects.create(name="azure-east-internal", kind="openai",
                                 base_url="http://127.0.0.1:9/v1")
    cred = Credential.objects.create(upstream=up, name="prod-cred-7", secret_encrypted="x",
                                     last4="abcd")
    return log(acme, key_a, status_code=200, attempts=[
        {"upstream": "azure-east-internal", "upstream_id": up.pk, "credential_id": cred.pk,
         "status": 429, "error": "rate_limit_exceeded", "ms": 120},
        {"upstream": "azure-east-internal", "upstream_id": up.pk, "credential_id": cred.pk,
         "status": 200, "error": "", "ms": 800},
    ])


def test_staff_see_every_upstream_attempt_with_names(acme, tried):
    page = member("s@example.com", acme, "owner", staff=True).get(
        f"/portal/usage/{tried.request_id}/")
    html = page.content.decode()
    assert page.status_code == 200
    assert "azure-east-internal" in html and "prod-cred-7" in html
    assert "rate_limit_exceeded" in html and "120 ms" in html and "800 ms" in html


@pytest.mark.parametrize("role", ["owner", "admin", "member"])
def test_non_staff_see_one_outcome_and_no_upstream_internals(acme, tried, role):
    client = member(f"{role}@example.com", acme, role)
    page = client.get(f"/portal/usage/{tried.request_id}/").content.decode()
    assert "azure-east-internal" not in page and "prod-cred-7" not in page
    assert "rate_limit_exceeded" not in page  # a retried attempt is internal
    assert "upstream_id" not in page and "credential_id" not in page
    assert "Outcome" in page and "Completed" in page
    for path in ("/portal/usage/", "/portal/usage/totals"):
        body = client.get(path, HTTP_HX_REQUEST="true").content.decode()
        assert "azure-east-internal" not in body and "prod-cred-7" not in body
    export = b"".join(client.get("/portal/usage/export.csv").streaming_content).decode()
    assert "azure-east-internal" not in export and "prod-cred-7" not in export
    header = export.split("\n", 1)[0]  # no upstream or credential column at all
    assert "credential" not in header and "upstream" not in header and "attempt" not in header


def test_the_detail_page_shows_tokens_timings_and_the_cost_breakdown(acme):
    group = Group.objects.create(name="premium", price_multiplier=Decimal("1.5"))
    key = key_create(tenant=acme, name="k", group=group).key
    ModelPrice.objects.create(model="gpt-5*", input_per_million=Decimal("2"),
                              cached_input_per_million=Decimal("0.5"),
                              output_per_million=Decimal("8"),
                              reasoning_per_million=Decimal("10"))
    row = log(acme, key, model="gpt-5-mini", input_tokens=1_000_000, cached_tokens=400_000,
              output_tokens=200_000, reasoning_tokens=50_000, cost=Decimal("3.975000"),
              estimated=True, stream=True)
    page = member("a@example.com", acme).get(f"/portal/usage/{row.request_id}/")
    html = page.content.decode()
    # input 600k × 2 × 1.5 = 1.8; cached 400k × 0.5 × 1.5 = 0.3; output 150k × 8 × 1.5 = 1.8;
    # reasoning 50k × 10 × 1.5 = 0.75; total 4.65
    for text in ("1.800000", "0.300000", "0.750000", "4.650000", "× 1.5", "3.975000",
                 "This request was charged", "203.0.113.9", "openai-python/2.1",
                 row.request_id, "900 ms", "300 ms", "yes: the upstream reported no usage",
                 "600,000", "400,000", "150,000", "50,000"):
        assert text in html, text
    breakdown = sel.cost_breakdown(row)
    assert breakdown["total"] == Decimal("4.650000") and breakdown["multiplier"] == Decimal(
        "1.5")


def test_the_detail_page_shows_the_clients_own_request_id_when_it_sent_one(acme):
    client = member("a@example.com", acme)
    sent = log(acme, client_request_id="my-trace-42")
    html = client.get(f"/portal/usage/{sent.request_id}/").content.decode()
    assert 'id="client-request-id">my-trace-42<' in html and "Client's request id" in html
    html = client.get(f"/portal/usage/{log(acme).request_id}/").content.decode()
    assert "client-request-id" not in html


def test_the_detail_page_of_an_unknown_request_is_404(acme):
    assert member("a@example.com", acme).get("/portal/usage/req_nope/").status_code == 404


def test_pages_carry_no_inline_script_or_style(acme, tried):
    client = member("s@example.com", acme, "owner", staff=True)
    for path in ("/portal/usage/", f"/portal/usage/{tried.request_id}/"):
        html = client.get(path).content.decode()
        assert "style=" not in html and " onclick" not in html
        assert "<script>" not in html and "<script src" in html


def test_cursors_round_trip_to_the_microsecond():
    when = dt.datetime(2026, 3, 10, 12, 0, 0, 999_999, tzinfo=dt.UTC)
    back = sel.Cursor.decode(sel.Cursor("newer", when, 42).encode())
    assert back == sel.Cursor("newer", when, 42)
    with pytest.raises(sel.BadCursor):
        sel.Cursor.decode("%%%")


# --- the benchmark hook ---------------------------------------------------------------------

@pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"),
                    reason="the benchmark seeds PostgreSQL")
def test_the_export_benchmark_runs_and_reports():
    """benchmarks/portal_export.py on a small database of its own (seconds)."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.servers import fresh_database

    # Its own database per checkout, new each run (a schema left by an earlier run or
    # another branch cannot break it).
    url = fresh_database(os.environ["DATABASE_URL"],
                         os.environ.get("TEST_DATABASE_NAME", "turnpike") + "_bench_usage_smoke")
    result = subprocess.run(
        [sys.executable, "benchmarks/portal_export.py", "--rows", "3000"],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300,
        env={**os.environ, "DATABASE_URL": url})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    assert int(figures["csv_rows"]) == int(figures["tenant_rows"]) >= 3000
    assert "peak_rss_growth_mib" in figures
