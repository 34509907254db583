"""Logs and request ids, in-process: which client ids and traceparents are taken, the logging
configuration each setting gives (JSON lines, the access logger's switch), the access line's
fields and text form, and tracing switched off."""

from __future__ import annotations

import io
import logging
import logging.config
from typing import Any

import orjson
import pytest

from gateway import accesslog, tracing
from gateway.context import RelayContext
from gateway.requestids import client_request_id, parse_traceparent
from portal.infra.logconfig import ACCESS_LOGGER, logging_config

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


@pytest.mark.parametrize("raw, taken", [
    (b"abc-123", "abc-123"),
    (b"  7f0c1e2a-9d4b-4c1e-8f00-1a2b3c4d5e6f ", "7f0c1e2a-9d4b-4c1e-8f00-1a2b3c4d5e6f"),
    (b"req_01HZX:part/2+x=y@host.example", "req_01HZX:part/2+x=y@host.example"),
    (b"x" * 64, "x" * 64),
    (b"x" * 65, ""),
    (b"", ""),
    (b"two words", ""),
    (b"semi;colon", ""),
    (b'quo"te', ""),
    (b"new\nline", ""),
    (b"caf\xc3\xa9", ""),
    (b"nul\x00", ""),
])
def test_which_client_request_ids_are_taken(raw, taken):
    assert client_request_id(raw) == taken


@pytest.mark.parametrize("raw, parsed", [
    (f"00-{TRACE}-{SPAN}-01".encode(), (TRACE, SPAN, True)),
    (f"00-{TRACE}-{SPAN}-00".encode(), (TRACE, SPAN, False)),
    (f"01-{TRACE}-{SPAN}-01-future-part".encode(), (TRACE, SPAN, True)),  # a later version
    (f"00-{TRACE}-{SPAN}-01-extra".encode(), None),  # version 00 is exactly 55 characters
    (f"ff-{TRACE}-{SPAN}-01".encode(), None),
    (f"00-{'0' * 32}-{SPAN}-01".encode(), None),
    (f"00-{TRACE}-{'0' * 16}-01".encode(), None),
    (f"00-{TRACE.upper()}-{SPAN}-01".encode(), None),
    (f"00-{TRACE}-{SPAN}".encode(), None),
    (b"garbage", None),
])
def test_traceparent(raw, parsed):
    assert parse_traceparent(raw) == parsed


# --- the logging configuration ----------------------------------------------------------------

def configured(fmt: str, access: bool = True, level: str = "WARNING") -> io.StringIO:
    """Apply the configuration with its console handler writing into a buffer."""
    stream = io.StringIO()
    config = logging_config(fmt, level, access)
    config["handlers"]["console"]["stream"] = stream
    logging.config.dictConfig(config)
    return stream


@pytest.fixture
def restore_logging() -> Any:
    """Put the root's handlers back afterwards (the secret scan's file handler among them:
    dictConfig closes it, and a file handler reopens on its next record)."""
    root, access = logging.getLogger(), logging.getLogger(ACCESS_LOGGER)
    saved = root.handlers[:], root.level, access.level
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    access.setLevel(saved[2])


def test_json_lines_for_every_logger_with_extras_and_exceptions(restore_logging):
    out = configured("json")
    logging.getLogger("django.request").warning("Unauthorized: %s", "/api/ops/")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("some.lib").exception("failed")
    logging.getLogger("some.lib").info("below the level")
    logging.getLogger(ACCESS_LOGGER).info("%s", "GET /v1/models 200",
                                          extra={"request_id": "req_1", "status": 200})
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [(x["logger"], x["level"], x["message"]) for x in lines] == [
        ("django.request", "WARNING", "Unauthorized: /api/ops/"),
        ("some.lib", "ERROR", "failed"),
        (ACCESS_LOGGER, "INFO", "GET /v1/models 200")]  # INFO whatever LOG_LEVEL says
    assert "ValueError: boom" in lines[1]["exc_info"]
    assert (lines[2]["request_id"], lines[2]["status"]) == ("req_1", 200)
    assert all(x["time"].endswith("+00:00") for x in lines)


def test_text_lines(restore_logging):
    out = configured("text")
    logging.getLogger("x.y").warning("hello %s", "there")
    assert out.getvalue().rstrip().endswith(" WARNING x.y hello there")


def test_the_access_log_switch_turns_the_logger_off(restore_logging):
    configured("json", access=False)
    assert not logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.CRITICAL)
    configured("json", access=True, level="ERROR")
    assert logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.INFO)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        logging_config("xml", "INFO", True)
    with pytest.raises(ValueError, match="LOG_LEVEL"):
        logging_config("text", "LOUD", True)


# --- the access line --------------------------------------------------------------------------

def context(**headers: str) -> RelayContext:
    scope = {"type": "http", "method": "POST", "path": "/v1/responses",
             "client": ("203.0.113.9", 5000),
             "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]}
    return RelayContext.start(scope, "responses")


def test_the_fields_of_a_refused_request():
    ctx = context(x_request_id="mine-1", traceparent=f"00-{TRACE}-{SPAN}-01")
    ctx.trace = tracing.start_request(ctx)  # tracing is off here: the incoming ids only
    ctx.status, ctx.error_code, ctx.model = 401, "invalid_api_key", "gpt-5"
    fields = accesslog.access_fields(ctx)
    assert list(fields)[:4] == ["request_id", "client_request_id", "trace_id",
                                "parent_span_id"]
    assert fields["request_id"].startswith("req_") and fields["client_request_id"] == "mine-1"
    assert (fields["trace_id"], fields["parent_span_id"]) == (TRACE, SPAN)
    assert {"method": "POST", "path": "/v1/responses", "endpoint": "responses", "status": 401,
            "error_code": "invalid_api_key", "tenant": None, "key_prefix": "",
            "model": "gpt-5", "upstream": None, "stream": False, "input_tokens": 0,
            "cost": 0.0, "attempts": 0, "client_ip": "203.0.113.9"}.items() <= fields.items()
    bare = accesslog.access_fields(context())
    assert not {"client_request_id", "trace_id", "span_id", "parent_span_id"} & set(bare)


def test_the_text_form():
    fields = accesslog.access_fields(context(x_request_id="c-1"))
    fields.update(status=200, model="my model\n", stream=True, cost=0.00042, tenant=7,
                  key_prefix="sk-tp-ab12", upstream='a"b', input_tokens=12, output_tokens=3,
                  latency_ms=40, ttfb_ms=None)
    assert accesslog.text_line(fields) == (
        f'{fields["request_id"]} POST /v1/responses 200 client_request_id=c-1 tenant=7 '
        'key_prefix=sk-tp-ab12 model="my model\\n" upstream="a\\"b" stream=true '
        'tokens=12/0/3/0 cost=0.00042 latency_ms=40 ttfb_ms=None attempts=0 '
        'client_ip=203.0.113.9')


def test_the_json_shortcut_writes_what_the_library_writes(restore_logging):
    """An access line's record (logconfig.fast_record) is written by JsonFormatter's shortcut;
    python-json-logger's own path gives the same object, keys in the same order."""
    from portal.infra.logconfig import FIELDS, JsonFormatter, fast_record

    formatter = JsonFormatter("%(levelname)s %(name)s %(message)s",
                              rename_fields={"levelname": "level", "name": "logger"},
                              timestamp="time")
    fields = accesslog.access_fields(context(x_request_id="c-1"))
    record = fast_record(ACCESS_LOGGER, logging.INFO, "POST /v1/responses 500", fields)
    fast = formatter.format(record)
    del record.__dict__[FIELDS]
    slow = formatter.format(record)  # the library's path: the fields as extra attributes
    assert fast == slow
    assert list(orjson.loads(fast))[:4] == ["level", "logger", "message", "request_id"]
    # Any other formatter takes the record too.
    text = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s").format(record)
    assert text.endswith(" INFO turnpike.access POST /v1/responses 500")


def test_nothing_is_built_when_the_access_logger_is_off(monkeypatch, restore_logging):
    configured("text", access=False)

    def fail(ctx: RelayContext) -> dict[str, Any]:
        raise AssertionError("built a line nobody logs")

    monkeypatch.setattr(accesslog, "access_fields", fail)
    accesslog.emit(context())


def test_tracing_off_costs_a_check_and_gives_no_spans():
    assert tracing.ENABLED is False
    ctx = context()
    assert tracing.start_request(ctx) is None
    ctx.trace = tracing.start_request(context(traceparent=f"00-{TRACE}-{SPAN}-01"))
    assert tracing.span(ctx, "authenticate") is tracing.NO_SPAN
    assert tracing.upstream_traceparent(ctx) is None
    tracing.end_request(ctx)  # nothing to end


def test_the_text_formatter_writes_what_the_stdlib_writes():
    """TextFormatter makes the time's text once a second: the same text all the same."""
    from portal.infra.logconfig import TextFormatter

    fmt = "%(asctime)s %(levelname)s %(name)s %(message)s"
    ours, stdlib = TextFormatter(fmt), logging.Formatter(fmt)
    record = logging.LogRecord("x", logging.INFO, "", 0, "hello", (), None)
    for created in (1764526452.259, 1764526452.999, 1764526453.0, 1764526453.5,
                    1764526452.001):
        record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
        assert ours.format(record) == stdlib.format(record)
