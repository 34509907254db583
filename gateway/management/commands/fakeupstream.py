"""`manage.py fakeupstream`: run the scriptable fake LLM upstream (tests/fakeupstream/).

The fake is a test and demo tool that lives with the tests, not in the gateway package; this
command imports it only when run, so a deployment without `tests/` loses nothing but this
command (which then says so).
"""

from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import CommandError

from keys import cli


class Command(cli.OperatorCommand):
    help = "Run the fake OpenAI/Anthropic/Ollama upstream used by tests and the demo."
    # The fake touches no models or database; skipping checks keeps its start-up instant.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
        parser.add_argument(
            "--api-key", action="append", dest="api_keys", help="required key (repeatable)"
        )
        parser.add_argument("--models", help="comma-separated model ids to list")

    def run(self, opts: dict[str, Any]) -> None:
        try:
            from tests.fakeupstream import serve, split_models
        except ModuleNotFoundError as exc:
            if exc.name not in ("tests", "tests.fakeupstream"):
                raise
            raise CommandError(
                "the fake upstream is a test tool (tests/fakeupstream/) and is not in this "
                "installation; run it from a source checkout"
            ) from exc

        # serve() prints its own "listening" line to stdout; tests and `make run` wait on it.
        # With --json that line is {"listening": URL}.
        def announce(url: str) -> None:
            print(json.dumps({"listening": url}), flush=True)

        serve(opts["host"], opts["port"], opts["api_keys"], split_models(opts["models"]),
              announce=announce if self.json else None)
