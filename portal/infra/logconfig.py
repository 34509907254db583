"""The processes' logging: one handler on stderr, plain text or one JSON object a line.

``LOG_FORMAT=text`` (the default) is for people: ``time level logger message``.
``LOG_FORMAT=json`` is for log collectors: every line any logger writes (Django's, daphne's,
Celery's, Turnpike's) is a JSON object with ``time`` (RFC 3339, UTC), ``level``, ``logger``
and ``message``, a logged exception under ``exc_info``, and whatever the call passed as
``extra`` (the access line's fields, ``gateway.accesslog``) as keys of its own. The JSON is
written by python-json-logger's orjson formatter.

``turnpike.access`` (one line per /v1 request) logs at INFO whatever ``LOG_LEVEL`` says, and
not at all with ``GATEWAY_ACCESS_LOG=false``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from pythonjsonlogger.orjson import OrjsonFormatter

ACCESS_LOGGER = "turnpike.access"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
LOG_FORMATS = ("text", "json")
# The record attribute holding the fields of a line made by ``fast_record`` (a leading
# underscore: python-json-logger leaves such attributes out of its output).
FIELDS = "_fields"


def logging_config(fmt: str, level: str, access_log: bool) -> dict[str, Any]:
    """Django's LOGGING for these settings (``portal.settings.base``)."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"LOG_FORMAT must be 'text' or 'json', not {fmt!r}")
    level = level.upper()
    if not isinstance(logging.getLevelName(level), int):
        raise ValueError(f"LOG_LEVEL must be a level name (DEBUG, INFO, WARNING ...), "
                         f"not {level!r}")
    formatters: dict[str, Any] = {
        "text": {"()": "portal.infra.logconfig.TextFormatter", "fmt": TEXT_FORMAT},
        "json": {
            "()": "portal.infra.logconfig.JsonFormatter",
            "fmt": "%(levelname)s %(name)s %(message)s",
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": "time",
        },
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {fmt: formatters[fmt]},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": fmt}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "django.server": {"level": "WARNING"},
            # Above CRITICAL when off: isEnabledFor() is False and no line is even built.
            ACCESS_LOGGER: {"level": "INFO" if access_log else logging.CRITICAL + 10},
        },
    }


def configure_celery() -> None:
    """In JSON mode, Celery's workers and beat keep Django's LOGGING (JSON lines) instead of
    installing their own text handlers: connecting to ``setup_logging`` tells Celery the
    application configures logging itself. The ``-l``/``--loglevel`` option still sets the
    root level. Text mode keeps Celery's usual output.

    Called when ``portal.celery`` is imported, which is while the settings themselves are
    being imported (``portal/__init__.py``): so LOG_FORMAT is read from the environment."""
    if os.environ.get("LOG_FORMAT", "").strip().lower() != "json":
        return
    from celery.signals import setup_logging

    setup_logging.connect(_keep_django_logging, weak=False)


def _keep_django_logging(loglevel: Any = None, **_: Any) -> None:
    import logging.config

    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)
    if loglevel:
        logging.getLogger().setLevel(loglevel)


# --- the access line's fast path ---------------------------------------------------------------
# One line per /v1 request is on the hot path. Measured (benchmarks/observability.py), the
# stdlib's LogRecord.__init__ (the caller's file name split apart, the process name looked up)
# and python-json-logger's generic formatting (every record attribute inspected) were 22 of
# the line's 41 µs; these two shortcuts make the same line in a fraction of that, and every
# other record still takes the ordinary path.


class JsonFormatter(OrjsonFormatter):
    """python-json-logger's orjson formatter; a record made by ``fast_record`` is written
    straight from its fields, as the same object the library writes for it (keys in the
    same order; tests/fast/test_logs.py compares the two)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = record.__dict__.get(FIELDS)
        if fields is None:
            return super().format(record)
        return orjson.dumps({"level": record.levelname, "logger": record.name,
                             "message": record.msg, **fields,
                             "time": datetime.fromtimestamp(record.created, UTC)},
                            default=str).decode()


class TextFormatter(logging.Formatter):
    """The stdlib's formatter, with the time's text (``2026-11-30 18:04:12,259``) made once a
    second rather than once a line (``time.strftime`` was a tenth of an access line)."""

    _second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        """A record made by ``fast_record`` (no arguments, exception or stack) in the usual
        format is written without the generic steps, as the stdlib writes it (the same
        ``message`` and ``asctime`` attributes set on the record too)."""
        if FIELDS not in record.__dict__ or self._fmt != TEXT_FORMAT or self.datefmt:
            return super().format(record)
        record.message = message = record.msg
        record.asctime = asctime = self.formatTime(record)
        return f"{asctime} {record.levelname} {record.name} {message}"

    def formatTime(self, record: logging.LogRecord,
                   datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        cached = self._second
        if cached[0] != second:
            cached = self._second = (second, time.strftime(self.default_time_format,
                                                           self.converter(record.created)))
        return f"{cached[1]},{int(record.msecs):03d}"  # the stdlib's default_msec_format


_FIXED: dict[str, Any] = {
    "args": (), "pathname": "", "filename": "", "module": "", "exc_info": None,
    "exc_text": None, "stack_info": None, "lineno": 0, "funcName": None, "processName": None}
if sys.version_info >= (3, 12):
    _FIXED["taskName"] = None  # a LogRecord attribute since 3.12
_START = getattr(logging, "_startTime", time.time())


def fast_record(name: str, level: int, message: str,
                fields: dict[str, Any]) -> logging.LogRecord:
    """A record of ``message`` with ``fields`` as its extra attributes (and as ``FIELDS``),
    made without LogRecord.__init__'s look-ups: no caller's file and line, no process or
    thread name. Any handler and formatter takes it like another record."""
    created = time.time()
    record = logging.LogRecord.__new__(logging.LogRecord)
    attributes = record.__dict__
    attributes.update(fields)
    attributes.update(_FIXED)
    attributes["name"] = name
    attributes["msg"] = message
    attributes["levelno"] = level
    attributes["levelname"] = logging.getLevelName(level)
    attributes["created"] = created
    attributes["msecs"] = int((created - int(created)) * 1000) + 0.0
    attributes["relativeCreated"] = (created - _START) * 1000
    attributes["thread"] = threading.get_ident()
    attributes["threadName"] = None
    attributes["process"] = os.getpid()
    attributes[FIELDS] = fields
    return record
