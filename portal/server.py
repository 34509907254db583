"""Start daphne with uvloop: ``python -m portal.server [daphne options]``.

daphne creates its event loop when ``daphne.server`` is first imported, so the uvloop
policy has to be installed before that import; setting it in asgi.py would be too late.
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
    _speed_up_twisted_content_type()
    _settle_the_heap()
    from daphne.cli import CommandLineInterface

    if not args or not re.fullmatch(r"[\w.]+:\w+", args[-1]):
        args.append("portal.asgi:application")
    CommandLineInterface().run(args)


def _settle_the_heap() -> None:
    """Load the application, then move everything loaded so far out of the garbage
    collector's sight (gc.freeze) and collect young objects less often: Django's object
    graph otherwise makes full collections pause the event loop for milliseconds, which is
    what a single client sees as its p99 latency."""
    import gc

    import django

    django.setup()
    import portal.asgi  # noqa: F401  (daphne imports it again, from the module cache)

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _speed_up_twisted_content_type() -> None:
    """Twisted parses every request's Content-Type with the email package only to compare it
    with the two form types it decodes; profiled, that was ~9% of a /v1 request's CPU. The
    same answer for those comparisons, without the email machinery."""
    from twisted.web import http

    def parse_content_type(line: bytes) -> bytes:
        key = line.split(b";", 1)[0].strip().lower()
        return key if b"/" in key else b"text/plain"

    http._parseContentType = parse_content_type


if __name__ == "__main__":
    main()
