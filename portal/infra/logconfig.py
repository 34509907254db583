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
from typing import Any

ACCESS_LOGGER = "turnpike.access"
LOG_FORMATS = ("text", "json")


def logging_config(fmt: str, level: str, access_log: bool) -> dict[str, Any]:
    """Django's LOGGING for these settings (``portal.settings.base``)."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"LOG_FORMAT must be 'text' or 'json', not {fmt!r}")
    level = level.upper()
    if not isinstance(logging.getLevelName(level), int):
        raise ValueError(f"LOG_LEVEL must be a level name (DEBUG, INFO, WARNING ...), "
                         f"not {level!r}")
    formatters: dict[str, Any] = {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {
            "()": "pythonjsonlogger.orjson.OrjsonFormatter",
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
