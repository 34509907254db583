"""``manage.py usagewriter``: write the usage journal in Redis (the rows of settled requests,
and every other row with GATEWAY_USAGE_SINK=redis) to the database as rows arrive, and the
stored-response and body-capture journals with it (with that sink gateway processes write
none of them). Run one or more: each batch is claimed by one writer, and a dead writer's
claim is put back."""

from __future__ import annotations

import signal
import time
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import CommandError

from billing.usage import drain_spool, journal_length
from gateway.capture import store as capture_store
from gateway.stored.store import drain_journal
from keys import cli
from portal.infra.redis import sync_redis

IDLE_POLL_SECONDS = 0.2  # with nothing waiting, how soon a writer looks again


class Command(cli.OperatorCommand):
    help = "Write usage rows that gateway processes pushed to Redis."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--once", action="store_true", help="Drain what is there, then exit "
                            "(with --json: prints {\"written\": N}).")

    def run(self, opts: dict[str, Any]) -> None:
        client = sync_redis()
        if client is None:
            raise CommandError("usagewriter needs REDIS_URL.")
        stopping = False

        def stop(*_: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        if not (opts["once"] and self.json):  # --once --json: one document, the count
            self.emit({"state": "waiting"}, "usagewriter: waiting for usage batches")
        self.stdout.flush()
        while not stopping:
            written = drain_spool()
            written_store = drain_journal()  # stored responses (gateway.stored)
            written_store += capture_store.drain_journal()  # body captures (gateway.capture)
            if opts["once"]:
                self.emit({"written": written}, f"wrote {written} row(s)")
                return
            if written or written_store:
                continue
            if journal_length():  # rows wait but could not be written: the database is away
                time.sleep(1)
                continue
            # Nothing waits: look again shortly (the journal is one list per tenant group,
            # so no single blocking read covers it; nothing is held outside Redis meanwhile).
            time.sleep(IDLE_POLL_SECONDS)
