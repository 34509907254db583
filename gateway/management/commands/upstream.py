"""``manage.py upstream add|list``: manage upstreams from scripts and the shell."""

from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from gateway.models import Upstream, UpstreamKind
from gateway.services import upstream_create
from keys.services import ApplicationError


class Command(BaseCommand):
    help = "Add and list upstreams."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="Add an upstream with its credentials.")
        add.add_argument("--name", required=True)
        add.add_argument("--kind", required=True, choices=UpstreamKind.values)
        add.add_argument("--base-url", required=True,
                         help="OpenAI kinds: include /v1. Anthropic/Ollama: the server root.")
        add.add_argument("--api-key", action="append", default=[],
                         help="An upstream credential; repeat for several.")
        add.add_argument("--models", required=True, help="Comma-separated names or wildcards.")
        add.add_argument("--priority", type=int, default=0)
        add.add_argument("--weight", type=int, default=1)
        add.add_argument("--json", action="store_true", help="Print the upstream as JSON.")
        lst = sub.add_parser("list", help="List upstreams.")
        lst.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["action"] == "add":
            try:
                upstream = upstream_create(
                    name=opts["name"], kind=opts["kind"], base_url=opts["base_url"],
                    models=opts["models"], api_keys=opts["api_key"],
                    priority=opts["priority"], weight=opts["weight"],
                )
            except (ApplicationError, ValidationError) as exc:
                raise CommandError(str(exc)) from exc
            if opts["json"]:
                self.stdout.write(json.dumps(_as_dict(upstream)))
            else:
                self.stdout.write(f"Added upstream {upstream.name} ({upstream.kind}) "
                                  f"with {upstream.credentials.count()} credential(s).")
            return
        rows = [_as_dict(u) for u in Upstream.objects.prefetch_related("credentials")]
        if opts["json"]:
            self.stdout.write(json.dumps(rows))
            return
        if not rows:
            self.stdout.write("No upstreams.")
            return
        self.stdout.write(f"{'NAME':20} {'KIND':17} {'STATUS':8} {'PRI':>4} {'W':>3} "
                          f"{'CREDS':>5}  BASE URL / MODELS")
        for r in rows:
            self.stdout.write(
                f"{r['name']:20} {r['kind']:17} {r['status']:8} {r['priority']:>4} "
                f"{r['weight']:>3} {len(r['credentials']):>5}  {r['base_url']}  "
                f"[{', '.join(r['models'])}]"
            )


def _as_dict(upstream: Upstream) -> dict[str, Any]:
    return {
        "id": upstream.pk, "name": upstream.name, "kind": upstream.kind,
        "base_url": upstream.base_url, "models": upstream.served_models,
        "priority": upstream.priority, "weight": upstream.weight, "status": upstream.status,
        "credentials": [{"id": c.pk, "name": c.name, "key": c.masked, "status": c.status}
                        for c in upstream.credentials.all()],
    }
