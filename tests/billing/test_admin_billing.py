"""The billing admin: usage log filters and CSV export, daily rollups with totals.

In-process with the test client (``admin_client`` is a logged-in superuser); the ASGI
export runs through Django's ASGI handler (``async_client``), as under daphne.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connections
from django.test import AsyncClient, Client
from django.urls import reverse
from django.utils import timezone

from billing.admin import USAGE_CSV_COLUMNS, UsageRollupAdmin
from billing.models import UsageLog, UsageRollup
from gateway.services import upstream_create
from keys.models import ApiKey, Tenant
from keys.services import key_create, tenant_get_or_create

CHANGELIST = reverse("admin:billing_usagelog_changelist")
ROLLUPS = reverse("admin:billing_usagerollup_changelist")
ATTEMPTS = [
    {"upstream": 3, "credential": 7, "status": 429, "error": "rate_limited", "latency": 12},
    {"upstream": 4, "credential": 9, "status": 200, "error": "", "latency": 340},
]


def usage(request_id: str, tenant: Tenant | None, key: ApiKey | None, **fields: Any) -> UsageLog:
    fields.setdefault("created_at", timezone.now())
    fields.setdefault("model", "gpt-5")
    fields.setdefault("status_code", 200)
    return UsageLog.objects.create(request_id=request_id, tenant=tenant, key=key,
                                   key_prefix=key.prefix if key else "", endpoint="chat",
                                   **fields)


@pytest.fixture
def logs() -> dict[str, Any]:
    acme = tenant_get_or_create(name="acme")[0]
    globex = tenant_get_or_create(name="globex")[0]
    a1 = key_create(tenant=acme, name="a1").key
    g1 = key_create(tenant=globex, name="g1").key
    up = upstream_create(name="main", kind="openai", base_url="https://api.example.com/v1",
                         models=["gpt-5", "o3"])
    made = {
        "ok": usage("req-ok", acme, a1, upstream=up, input_tokens=12, cached_tokens=2,
                    output_tokens=34, reasoning_tokens=5, cost=Decimal("0.001200"),
                    latency_ms=120, ttfb_ms=40, client_ip="10.0.0.1", attempts=ATTEMPTS,
                    user_agent="=HYPERLINK(\"http://evil\")", stream=True,
                    created_at=datetime(2025, 6, 2, 10, 0, tzinfo=UTC)),
        "failed": usage("req-failed", acme, a1, model="o3", status_code=502,
                        error_code="upstream_error", upstream=up),
        "other": usage("req-other", globex, g1, model="gpt-4o-mini"),
    }
    return {**made, "acme": acme, "globex": globex, "a1": a1, "g1": g1, "upstream": up}


def export(client: Client, *logs: UsageLog) -> Any:
    return client.post(CHANGELIST, {"action": "export_csv",
                                    "_selected_action": [str(row.pk) for row in logs]})


def parse(body: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body.decode("utf-8"))))


# --- usage log: CSV export ----------------------------------------------------------------

@pytest.mark.django_db
def test_the_csv_export_has_a_row_per_selected_log_with_every_column(
        logs: dict[str, Any], admin_client: Client) -> None:
    response = export(admin_client, logs["ok"], logs["failed"])

    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="usage-')
    body = b"".join(response.streaming_content)
    header = next(csv.reader(io.StringIO(body.decode())))
    assert header == USAGE_CSV_COLUMNS
    assert header == [
        "id", "created_at", "request_id", "key_id", "key_prefix", "tenant_id", "endpoint",
        "model", "upstream_id", "credential_id", "status_code", "error_code", "stream",
        "input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens", "cost",
        "latency_ms", "ttfb_ms", "client_ip", "attempts", "estimated", "user_agent",
        "client_request_id",
    ]
    rows = parse(body)
    assert [r["request_id"] for r in rows] == ["req-failed", "req-ok"]  # newest first
    ok = rows[1]
    assert ok["id"] == str(logs["ok"].pk)
    assert ok["created_at"] == "2025-06-02T10:00:00+00:00"
    assert ok["key_id"] == str(logs["a1"].pk)
    assert ok["key_prefix"] == logs["a1"].prefix
    assert ok["tenant_id"] == str(logs["acme"].pk)
    assert ok["upstream_id"] == str(logs["upstream"].pk)
    assert ok["credential_id"] == ""
    assert (ok["input_tokens"], ok["cached_tokens"], ok["output_tokens"],
            ok["reasoning_tokens"]) == ("12", "2", "34", "5")
    assert Decimal(ok["cost"]) == Decimal("0.0012")
    assert (ok["latency_ms"], ok["ttfb_ms"], ok["client_ip"]) == ("120", "40", "10.0.0.1")
    assert ok["stream"] == "True"
    assert json.loads(ok["attempts"]) == ATTEMPTS
    # A client-chosen value is never a spreadsheet formula.
    assert ok["user_agent"] == "'=HYPERLINK(\"http://evil\")"
    failed = rows[0]
    assert (failed["status_code"], failed["error_code"], failed["model"]) == (
        "502", "upstream_error", "o3")
    assert json.loads(failed["attempts"]) == []
    assert failed["ttfb_ms"] == ""


@pytest.mark.django_db
def test_the_csv_export_works_with_view_permission_alone(logs: dict[str, Any]) -> None:
    staff = get_user_model().objects.create_user("viewer", password="pw", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_usagelog"))
    client = Client()
    client.force_login(staff)

    page = client.get(CHANGELIST)
    assert page.status_code == 200
    assert '<option value="export_csv">Export selected as CSV</option>' in page.content.decode()
    response = export(client, logs["other"])
    assert response.status_code == 200
    assert [r["request_id"] for r in parse(b"".join(response.streaming_content))] == [
        "req-other"]


@pytest.mark.django_db
def test_the_csv_export_of_everything_filtered_uses_the_filters(
        logs: dict[str, Any], admin_client: Client) -> None:
    response = admin_client.post(
        CHANGELIST + f"?tenant__id__exact={logs['acme'].pk}",
        {"action": "export_csv", "select_across": "1", "index": "0",
         "_selected_action": [str(logs["ok"].pk)]})
    assert response.status_code == 200
    rows = parse(b"".join(response.streaming_content))
    assert sorted(r["request_id"] for r in rows) == ["req-failed", "req-ok"]


@pytest.mark.django_db(transaction=True)
async def test_under_asgi_the_csv_export_streams_from_an_async_iterator(
        async_client: AsyncClient, logs: dict[str, Any], admin_user: Any) -> None:
    await async_client.aforce_login(admin_user)
    try:
        with warnings.catch_warnings():
            # Django warns when it must read a sync iterator whole to serve it over ASGI.
            warnings.filterwarnings("error", message="StreamingHttpResponse must consume")
            response = await async_client.post(
                CHANGELIST, {"action": "export_csv",
                             "_selected_action": [str(logs["ok"].pk), str(logs["other"].pk)]})
            assert response.status_code == 200
            assert response.is_async
            body = b"".join([chunk async for chunk in response.streaming_content])
    finally:
        # The view ran in asgiref's sync thread, whose (persistent) connection would
        # otherwise keep the test database from being dropped at the end of the run.
        await sync_to_async(connections.close_all)()
    rows = parse(body)
    assert [r["request_id"] for r in rows] == ["req-other", "req-ok"]
    assert json.loads(rows[1]["attempts"]) == ATTEMPTS


# --- usage log: filters -----------------------------------------------------------------

@pytest.mark.django_db
def test_the_usage_log_offers_filters_by_tenant_key_model_upstream_status_and_date(
        logs: dict[str, Any], admin_client: Client) -> None:
    response = admin_client.get(CHANGELIST)
    assert response.status_code == 200
    titles = {str(spec.title) for spec in response.context["cl"].filter_specs}
    assert {"tenant", "key", "model", "upstream", "status code", "created at"} <= titles
    html = response.content.decode()
    # Models of the last day's rows are offered (req-ok's gpt-5 is older: see below).
    for choice in ("?model=o3", "?model=gpt-4o-mini",
                   f"?key__id__exact={logs['g1'].pk}",
                   f"?upstream__id__exact={logs['upstream'].pk}"):
        assert choice in html, choice


@pytest.mark.django_db
@pytest.mark.parametrize(("query", "expected"), [
    ("key", {"req-ok", "req-failed"}),
    ("model", {"req-failed"}),
    ("upstream", {"req-ok", "req-failed"}),
    ("tenant", {"req-other"}),
    ("status", {"req-failed"}),
    ("date", {"req-ok"}),
])
def test_each_usage_log_filter_narrows_the_list(query: str, expected: set[str],
                                                logs: dict[str, Any],
                                                admin_client: Client) -> None:
    params = {
        "key": {"key__id__exact": logs["a1"].pk},
        "model": {"model": "o3"},
        "upstream": {"upstream__id__exact": logs["upstream"].pk},
        "tenant": {"tenant__id__exact": logs["globex"].pk},
        "status": {"status_code": 502},
        "date": {"created_at__year": 2025, "created_at__month": 6, "created_at__day": 2},
    }[query]
    response = admin_client.get(CHANGELIST, params)
    assert response.status_code == 200
    assert {r.request_id for r in response.context["cl"].result_list} == expected


@pytest.mark.django_db
def test_the_usage_log_is_searched_by_the_clients_request_id_too(
        logs: dict[str, Any], admin_client: Client) -> None:
    UsageLog.objects.filter(pk=logs["failed"].pk).update(client_request_id="their-id-7")
    response = admin_client.get(CHANGELIST, {"q": "their-id-7"})
    assert [r.request_id for r in response.context["cl"].result_list] == ["req-failed"]
    response = admin_client.get(CHANGELIST, {"q": "req-ok"})
    assert [r.request_id for r in response.context["cl"].result_list] == ["req-ok"]


@pytest.mark.django_db
def test_the_model_filter_offers_older_models_once_rolled_up(
        logs: dict[str, Any], admin_client: Client) -> None:
    """Its choices come from the rollups and the last day's rows, not a DISTINCT over the
    whole log: req-ok (2025) is offered once its day has a rollup."""
    assert "?model=gpt-5" not in admin_client.get(CHANGELIST).content.decode()
    UsageRollup.objects.create(date=date(2025, 6, 2), tenant=logs["acme"], model="gpt-5")
    UsageRollup.objects.create(date=date(2024, 1, 1), tenant=logs["acme"], model="gpt-3.5")
    html = admin_client.get(CHANGELIST).content.decode()
    assert "?model=gpt-5" in html
    assert "?model=gpt-3.5" in html


# --- rollups -----------------------------------------------------------------------------

@pytest.fixture
def rollup_rows(logs: dict[str, Any]) -> list[UsageRollup]:
    acme, globex = logs["acme"], logs["globex"]
    made = [
        (date(2025, 6, 1), acme, logs["a1"], "gpt-5", 10, 1, 100, 10, 200, 20, "1.000001"),
        (date(2025, 6, 2), acme, logs["a1"], "o3", 5, 0, 50, 0, 70, 7, "0.500002"),
        (date(2025, 6, 2), globex, logs["g1"], "gpt-5", 3, 3, 30, 3, 0, 0, "0.000003"),
    ]
    return [UsageRollup.objects.create(
        date=d, tenant=t, key=k, model=m, requests=req, errors=err, input_tokens=i,
        cached_tokens=c, output_tokens=o, reasoning_tokens=r, cost=Decimal(cost))
        for d, t, k, m, req, err, i, c, o, r, cost in made]


@pytest.mark.django_db
def test_the_rollup_list_shows_the_totals_of_every_filtered_row(
        rollup_rows: list[UsageRollup], admin_client: Client, monkeypatch: Any) -> None:
    monkeypatch.setattr(UsageRollupAdmin, "list_per_page", 2)  # totals span every page
    response = admin_client.get(ROLLUPS)
    assert response.status_code == 200
    assert len(response.context["cl"].result_list) == 2
    assert response.context["rollup_totals"] == {
        "rows": 3, "requests": 18, "errors": 4, "input_tokens": 180, "cached_tokens": 13,
        "output_tokens": 270, "reasoning_tokens": 27, "cost": Decimal("1.500006"),
    }
    html = response.content.decode()
    assert 'id="rollup-totals"' in html
    assert html.index('id="rollup-totals"') < html.index('id="result_list"')
    assert '<td class="total-requests">18</td>' in html
    assert '<td class="total-cost">1.500006</td>' in html

    acme = rollup_rows[0].tenant
    filtered = admin_client.get(ROLLUPS, {"tenant__id__exact": acme.pk})
    assert filtered.context["rollup_totals"]["requests"] == 15
    assert filtered.context["rollup_totals"]["cost"] == Decimal("1.500003")
    by_day = admin_client.get(ROLLUPS, {"date__year": 2025, "date__month": 6,
                                        "date__day": 2, "model": "gpt-5"})
    assert by_day.context["rollup_totals"]["requests"] == 3
    assert '<td class="total-errors">3</td>' in by_day.content.decode()


@pytest.mark.django_db
def test_the_rollup_totals_are_zero_when_nothing_matches(
        rollup_rows: list[UsageRollup], admin_client: Client) -> None:
    response = admin_client.get(ROLLUPS, {"model": "no-such-model"})
    assert response.status_code == 200
    assert response.context["rollup_totals"]["requests"] == 0
    assert response.context["rollup_totals"]["cost"] == 0


@pytest.mark.django_db
def test_rollups_are_read_only_in_admin(rollup_rows: list[UsageRollup],
                                        admin_client: Client) -> None:
    row = rollup_rows[0]
    change = reverse("admin:billing_usagerollup_change", args=[row.pk])
    assert admin_client.get(reverse("admin:billing_usagerollup_add")).status_code == 403
    view = admin_client.get(change)
    assert view.status_code == 200
    assert 'name="_save"' not in view.content.decode()
    assert admin_client.post(change, {"requests": "999"}).status_code == 403
    assert admin_client.get(
        reverse("admin:billing_usagerollup_delete", args=[row.pk])).status_code == 403
    row.refresh_from_db()
    assert row.requests == 10


@pytest.mark.django_db
def test_a_rollup_whose_key_was_deleted_still_lists(rollup_rows: list[UsageRollup],
                                                    admin_client: Client) -> None:
    rollup_rows[2].key.delete()
    response = admin_client.get(ROLLUPS)
    assert response.status_code == 200
    assert response.context["rollup_totals"]["rows"] == 3

