"""``manage.py upstream add|list|show|disable|enable|test``: manage upstreams from scripts and
the shell. An upstream is named by its name, or the start of it if only one fits."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import CommandError

from gateway.health import probe, record
from gateway.models import Upstream, UpstreamKind
from gateway.services import upstream_create, upstream_set_status
from keys import cli


class Command(cli.OperatorCommand):
    help = "Add, list, show, disable, enable and test upstreams."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="Add an upstream with its credentials.")
        add.add_argument("--name", required=True)
        add.add_argument("--kind", required=True, choices=UpstreamKind.values)
        add.add_argument("--base-url", required=True,
                         help="OpenAI kinds: include /v1. Anthropic/Ollama: the server root.")
        add.add_argument("--api-key", action="append", default=[],
                         help="An upstream credential; repeat for several.")
        add.add_argument("--models", default="",
                         help="Comma-separated names or wildcards (or use --map).")
        add.add_argument("--priority", type=int, default=0, help="Higher tiers first.")
        add.add_argument("--weight", type=int, default=1, help="Share within a tier.")
        add.add_argument("--map", action="append", default=[], metavar="CLIENT=UPSTREAM",
                         help="Serve CLIENT under the upstream's name UPSTREAM; repeatable.")
        add.add_argument("--groups", help="Only keys of these groups (comma-separated).")
        add.add_argument("--timeout-connect", type=float, metavar="SECONDS")
        add.add_argument("--timeout-first-byte", type=float, metavar="SECONDS")
        add.add_argument("--timeout-idle", type=float, metavar="SECONDS")
        add.add_argument("--proxy", default="", help="HTTP proxy URL for this upstream.")
        sub.add_parser("list", help="List upstreams (never their credentials' secrets).")
        for action, text in (("show", "Print one upstream (never its credentials' secrets)."),
                             ("disable", "Take an upstream out of routing."),
                             ("enable", "Put an upstream back (clears an automatic disable)."),
                             ("test", "Probe an upstream now and record its health.")):
            one = sub.add_parser(action, help=text)
            one.add_argument("name")

    def do_add(self, opts: dict[str, Any]) -> None:
        mapping = {}
        for pair in opts["map"]:
            client, sep, target = pair.partition("=")
            if not sep or not client.strip() or not target.strip():
                raise CommandError(f"--map {pair!r}: use CLIENT=UPSTREAM")
            mapping[client.strip()] = target.strip()
        if not opts["models"] and not mapping:
            raise CommandError("Give the models it serves: --models and/or --map.")
        upstream = upstream_create(
            name=opts["name"], kind=opts["kind"], base_url=opts["base_url"],
            models=opts["models"], api_keys=opts["api_key"],
            priority=opts["priority"], weight=opts["weight"], model_map=mapping,
            groups=opts["groups"], timeout_connect=opts["timeout_connect"],
            timeout_first_byte=opts["timeout_first_byte"],
            timeout_idle=opts["timeout_idle"], proxy_url=opts["proxy"],
        )
        self.emit(_as_dict(upstream), f"Added upstream {upstream.name} ({upstream.kind}) "
                                      f"with {upstream.credentials.count()} credential(s).")

    def do_list(self, opts: dict[str, Any]) -> None:
        rows = [_as_dict(u) for u in Upstream.objects.prefetch_related("credentials", "groups")]
        if self.json or not rows:
            self.emit(rows, "No upstreams.")
            return
        self.stdout.write(f"{'NAME':20} {'KIND':17} {'STATUS':8} {'PRI':>4} {'W':>3} "
                          f"{'CREDS':>5}  BASE URL / MODELS")
        for r in rows:
            self.stdout.write(
                f"{r['name']:20} {r['kind']:17} {r['status']:8} {r['priority']:>4} "
                f"{r['weight']:>3} {len(r['credentials']):>5}  {r['base_url']}  "
                f"[{', '.join(r['models'])}]"
            )

    def do_show(self, opts: dict[str, Any]) -> None:
        data = _as_dict(_find(opts["name"]))
        self.emit(data, cli.fields(data))

    def do_test(self, opts: dict[str, Any]) -> None:
        upstream = _find(opts["name"])
        result = probe(upstream)
        record(upstream, result)
        data = {"name": upstream.name, "ok": result.ok, "latency_ms": result.latency_ms,
                "error": result.error or None}
        if self.json:
            self.emit(data)
        if not result.ok:
            raise CommandError(f"{upstream.name}: unhealthy after {result.latency_ms} ms: "
                               f"{result.error}")
        if not self.json:
            self.stdout.write(f"{upstream.name}: healthy ({result.latency_ms} ms)")

    def do_disable(self, opts: dict[str, Any]) -> None:
        self._set_status(opts["name"], active=False)

    def do_enable(self, opts: dict[str, Any]) -> None:
        self._set_status(opts["name"], active=True)

    def _set_status(self, name: str, *, active: bool) -> None:
        upstream = _find(name)
        before = upstream.status
        upstream_set_status(upstream=upstream, active=active)
        upstream.refresh_from_db()
        self.emit({**_as_dict(upstream), "changed": before != upstream.status},
                  f"{upstream.name}: {'enabled' if active else 'disabled'}")


def _find(name: str) -> Upstream:
    return cli.find_named(Upstream.objects.prefetch_related("credentials", "groups"), name,
                          what="upstream")


def _as_dict(upstream: Upstream) -> dict[str, Any]:
    return {
        "id": upstream.pk, "name": upstream.name, "kind": upstream.kind,
        "base_url": upstream.base_url, "models": upstream.served_models,
        "priority": upstream.priority, "weight": upstream.weight, "status": upstream.status,
        "model_map": upstream.model_map, "groups": [g.name for g in upstream.groups.all()],
        "health": upstream.health, "auto_disabled": upstream.auto_disabled,
        "timeouts": {"connect": upstream.timeout_connect,
                     "first_byte": upstream.timeout_first_byte, "idle": upstream.timeout_idle},
        "proxy": upstream.proxy_url or None,
        "credentials": [{"id": c.pk, "name": c.name, "key": c.masked, "status": c.status}
                        for c in upstream.credentials.all()],
    }
