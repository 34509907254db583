"""``manage.py opsalert test|list``: check the operator alerts' wiring, list their states."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import CommandError

from keys import cli


class Command(cli.OperatorCommand):
    help = "Send a test operator alert to every target; list the alerts' states."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("test", help="Send a made-up alert now to OPERATOR_ALERT_EMAILS and "
                                    "each of OPERATOR_ALERT_WEBHOOKS (no retries), and say "
                                    "which took it; exit non-zero when one did not.")
        sub.add_parser("list", help="Every alert's state: firing or resolved, since when, "
                                    "the last delivery and its error.")

    def do_test(self, opts: dict[str, Any]) -> None:
        from gateway import opsalerts

        to = opsalerts.targets()
        if not to:
            raise CommandError("No target: set OPERATOR_ALERT_EMAILS and/or "
                               "OPERATOR_ALERT_WEBHOOKS")
        alert = opsalerts.test_alert()
        results: list[dict[str, Any]] = []
        for target in to:
            try:
                opsalerts.send(target, alert)
                results.append({"target": opsalerts.describe(target), "ok": True, "error": ""})
            except opsalerts.DeliveryError as exc:
                results.append({"target": opsalerts.describe(target), "ok": False,
                                "error": str(exc)})
        self.emit(results, [f"{r['target']}: " + ("delivered" if r["ok"] else
                                                  f"FAILED: {r['error']}") for r in results])
        failed = [r["target"] for r in results if not r["ok"]]
        if failed:
            raise CommandError(f"not delivered to {', '.join(failed)}")

    def do_list(self, opts: dict[str, Any]) -> None:
        from gateway.models import OperatorAlert

        rows = [{"kind": a.kind, "subject": a.subject,
                 "state": "firing" if a.firing else "resolved", "since": a.changed_at,
                 "last_sent_at": a.last_sent_at, "last_error": a.last_error,
                 "summary": a.summary} for a in OperatorAlert.objects.all()]
        self.emit(rows, cli.table(rows, [("kind", "kind"), ("subject", "subject"),
                                         ("state", "state"), ("since", "since"),
                                         ("last sent", "last_sent_at"),
                                         ("summary", "summary")]))
