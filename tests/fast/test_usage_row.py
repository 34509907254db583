"""The usage row, one definition (billing.usagerow): the model's columns, the COPY values, the
journal's wire format (rows journalled by the previous release included) and the field lists
the portal and the APIs show, all agree with it."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest

from billing import usage, usagerow
from billing.models import UsageLog
from billing.usagerow import UsageEvent
from portal import live
from portal.ops.serializers import UsageLogSerializer
from portal.selectors import usage as usage_selectors


def full_row(**kw) -> UsageEvent:
    base = dict(
        created_at=datetime(2025, 6, 2, 10, 0, 0, 123456, tzinfo=UTC),
        request_id="req_old_journal_1", endpoint="chat/completions", status_code=200,
        key_id=11, key_prefix="sk-tp-ab12", tenant_id=7, model="gpt-5-mini", upstream_id=3,
        credential_id=4, error_code="", stream=True, input_tokens=120, cached_tokens=20,
        output_tokens=30, reasoning_tokens=5, cost=Decimal("0.000420"), latency_ms=812,
        ttfb_ms=95, client_ip="203.0.113.9", user_agent="codex_cli_rs/0.1 (Linux) ünï",
        attempts=[{"upstream_id": 3, "credential_id": 4, "status": 200, "error": "",
                   "ms": 800}],
        estimated=False)
    return UsageEvent(**{**base, **kw})


# Two rows exactly as the release before billing.usagerow journalled them (billing.usage.
# encode_row then: orjson over the dataclass, default=str), captured byte for byte.
OLD_JOURNAL_ROWS = [
    b'{"created_at":"2025-06-02T10:00:00.123456+00:00","request_id":"req_old_journal_1",'
    b'"endpoint":"chat/completions","status_code":200,"key_id":11,"key_prefix":"sk-tp-ab12",'
    b'"tenant_id":7,"model":"gpt-5-mini","upstream_id":3,"credential_id":4,"error_code":"",'
    b'"stream":true,"input_tokens":120,"cached_tokens":20,"output_tokens":30,'
    b'"reasoning_tokens":5,"cost":"0.000420","latency_ms":812,"ttfb_ms":95,'
    b'"client_ip":"203.0.113.9","user_agent":"codex_cli_rs/0.1 (Linux) \xc3\xbcn\xc3\xaf",'
    b'"attempts":[{"upstream_id":3,"credential_id":4,"status":200,"error":"","ms":800}],'
    b'"estimated":false}',
    b'{"created_at":"2025-06-02T10:00:01+00:00","request_id":"req_old_journal_2",'
    b'"endpoint":"responses","status_code":401,"key_id":null,"key_prefix":"","tenant_id":null,'
    b'"model":"","upstream_id":null,"credential_id":null,"error_code":"","stream":false,'
    b'"input_tokens":0,"cached_tokens":0,"output_tokens":0,"reasoning_tokens":0,"cost":"0",'
    b'"latency_ms":0,"ttfb_ms":null,"client_ip":null,"user_agent":"","attempts":[],'
    b'"estimated":false}',
]


# --- the row and the model ------------------------------------------------------------------

def test_the_model_has_exactly_the_rows_columns():
    columns = [f.attname for f in UsageLog._meta.concrete_fields if f.attname != "id"]
    assert sorted(columns) == sorted(usagerow.FIELDS)
    assert usage.COPY_COLUMNS == usagerow.FIELDS


def test_links_text_limits_and_model_names_match_the_model():
    for column, label in usagerow.LINKS.items():
        fk = UsageLog._meta.get_field(column.removesuffix("_id"))
        assert fk.attname == column and fk.related_model._meta.label == label
    for name, limit in usagerow.TEXT_LIMITS.items():
        assert UsageLog._meta.get_field(name).max_length == limit
    for name in usagerow.MODEL_FIELDS:
        UsageLog._meta.get_field(name)  # raises for a name the model does not have


def test_a_member_sees_no_upstream_internals():
    assert set(usagerow.MEMBER_FIELDS) <= set(usagerow.FIELDS)
    hidden = {"upstream_id", "credential_id", "attempts", "client_ip", "user_agent"}
    assert not hidden & set(usagerow.MEMBER_FIELDS)
    assert set(usagerow.TOKEN_FIELDS) <= set(usagerow.MEMBER_FIELDS)


# --- the database values --------------------------------------------------------------------

def test_db_values_follow_the_fields_and_cut_client_text():
    row = full_row(model="m" * 500, error_code="e" * 100, user_agent="u" * 1000)
    values = usagerow.db_values(row)
    by_name = dict(zip(usagerow.FIELDS, values, strict=True))
    assert (len(by_name["model"]), len(by_name["error_code"]), len(by_name["user_agent"])) == (
        200, 64, 300)
    assert orjson.loads(by_name["attempts"]) == row.attempts
    assert by_name["cost"] == Decimal("0.000420") and by_name["ttfb_ms"] == 95
    assert usagerow.db_values(row, attempts_as_text=False)[
        usagerow.FIELDS.index("attempts")] is row.attempts
    assert row.model == "m" * 500  # the event itself is left alone


# --- the journal's wire format ----------------------------------------------------------------

# Fields added to the row since OLD_JOURNAL_ROWS were captured, with their defaults, as encode
# appends them (after every older field). The previous release's decode ignores them.
ADDED_SINCE = b',"client_request_id":""'


def with_added_fields(old: bytes) -> bytes:
    assert old.endswith(b"}")
    return old[:-1] + ADDED_SINCE + b"}"


def test_encode_writes_the_format_the_previous_release_wrote():
    old_first, old_second = OLD_JOURNAL_ROWS
    assert usagerow.encode(full_row()) == with_added_fields(old_first)
    minimal = UsageEvent(created_at=datetime(2025, 6, 2, 10, 0, 1, tzinfo=UTC),
                         request_id="req_old_journal_2", endpoint="responses", status_code=401)
    assert usagerow.encode(minimal) == with_added_fields(old_second)
    assert usage.encode_row is usagerow.encode


def test_the_previous_release_reads_what_this_one_writes():
    """A rolling upgrade runs both at once: the older reader keeps only the fields it knows
    (the module's contract), so the row it gets is the one it wrote itself."""
    older_fields = set(orjson.loads(OLD_JOURNAL_ROWS[0]))
    written = orjson.loads(usagerow.encode(full_row(client_request_id="client-7")))
    assert {k: v for k, v in written.items() if k in older_fields} == orjson.loads(
        OLD_JOURNAL_ROWS[0])


@pytest.mark.parametrize("raw", OLD_JOURNAL_ROWS)
def test_rows_journalled_by_the_previous_release_decode(raw):
    event = usagerow.decode(raw)
    assert event.client_request_id == ""  # a field the old row lacks takes its default
    # nothing lost or changed on the way through
    assert usagerow.encode(event) == with_added_fields(raw)


def test_decode_round_trips_every_field():
    row = full_row(cost=Decimal("12.345678"), ttfb_ms=None, client_ip=None, estimated=True,
                   client_request_id="7f0c1e2a-client")
    assert usagerow.decode(usagerow.encode(row)) == row
    assert usagerow.decode(usagerow.encode(row).decode()) == row  # str works too


def test_decode_ignores_fields_it_does_not_know_and_defaults_missing_ones():
    data = orjson.loads(OLD_JOURNAL_ROWS[0])
    data["from_a_newer_release"] = 1
    del data["estimated"], data["user_agent"]
    event = usagerow.decode(orjson.dumps(data))
    assert event.request_id == "req_old_journal_1" and event.cost == Decimal("0.000420")
    assert event.estimated is False and event.user_agent == ""


# --- the field lists shown elsewhere come from the row ------------------------------------------

def test_field_lists_shown_elsewhere_name_only_row_fields():
    assert UsageLogSerializer.Meta.fields == ("id", *usagerow.MODEL_FIELDS)
    own = {c for c in usage_selectors.EXPORT_COLUMNS if "__" not in c and c != "id"}
    assert own <= set(usagerow.FIELDS)
    assert set(usagerow.MEMBER_FIELDS) <= own  # the CSV export has all a member may see
    assert set(usagerow.MEMBER_FIELDS) <= set(usage_selectors.LIST_COLUMNS)
    live_row = live.messages_for([full_row()])[7]["rows"][0]
    # "status": status_code; "status_class": usagerow.status_class of it and error_code
    assert set(live_row) - {"status", "status_class"} <= set(usagerow.FIELDS)
    assert not {"upstream_id", "credential_id", "attempts", "client_ip"} & set(live_row)
