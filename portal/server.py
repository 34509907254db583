"""Start daphne with uvloop: ``python -m portal.server [daphne options]``.

daphne creates its event loop when ``daphne.server`` is first imported, so the uvloop
policy has to be installed before that import; setting it in asgi.py would be too late.
Everything else that makes serving fast (``portal.tuning``) is applied by importing
portal.asgi, so a plain ``daphne portal.asgi:application`` has it too.
Any daphne option works (``-b``, ``-p``, ``--proxy-headers`` ...); the application defaults
to ``portal.asgi:application``.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    if os.environ.get("TURNPIKE_UVLOOP", "1") != "0":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    _load_the_application()
    _log_access_through_logging()
    from daphne.cli import CommandLineInterface

    if not args or not re.fullmatch(r"[\w.]+:\w+", args[-1]):
        args.append("portal.asgi:application")
    CommandLineInterface().run(args)


def _load_the_application() -> None:
    """Set Django up and import the application now, with uvloop already the policy:
    ``django.setup()`` imports daphne.server (daphne is an installed app), and importing
    portal.asgi applies ``portal.tuning`` (the Content-Type shortcut, the settled heap)."""
    import django

    django.setup()
    import portal.asgi  # noqa: F401  (daphne imports it again, from the module cache)


def _log_access_through_logging() -> None:
    """With LOG_FORMAT=json, daphne's own access log (every HTTP request and WebSocket
    event, written as NCSA text to stdout by default) goes through logging instead, as
    ``daphne.access`` lines, so that every line the process writes is JSON. /v1 requests
    also have Turnpike's own access line (``turnpike.access``, gateway.accesslog)."""
    from django.conf import settings

    if settings.LOG_FORMAT != "json":
        return
    import logging

    import daphne.cli
    from daphne.access import AccessLogGenerator

    log = logging.getLogger("daphne.access")

    class LoggedAccess(AccessLogGenerator):
        def write_entry(self, host: object, date: object, request: str, status: object = None,
                        length: object = None, ident: object = None,
                        user: object = None) -> None:
            if log.isEnabledFor(logging.INFO):
                log.info("%s %s", request, status or "-",
                         extra={"client": host, "request": request, "status": status,
                                "size": length})

    daphne.cli.AccessLogGenerator = LoggedAccess


if __name__ == "__main__":
    main()
