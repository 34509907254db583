"""``manage.py key create|list|show|disable|enable``. ``create`` prints the secret once,
alone on its last line; the others name a key by its prefix (see ``keys.services.key_find``)
and never print a secret (only its hash is stored)."""

from __future__ import annotations

import json
from argparse import ArgumentParser
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from keys.models import ApiKey, Group, Status
from keys.services import (
    ApplicationError,
    key_create,
    key_find,
    key_set_status,
    tenant_get_or_create,
)


def _expiry(value: str) -> datetime:
    parsed = parse_datetime(value)
    if parsed is None:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise CommandError(f"--expires {value!r} is not an ISO date or datetime") from exc
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed)
    return parsed


def _errors(exc: ApplicationError | ValidationError) -> str:
    """A readable one-line message: ``allowed_ips: Not an IP address …`` rather than the
    repr of ValidationError's dict."""
    if isinstance(exc, ValidationError) and hasattr(exc, "error_dict"):
        return "; ".join(f"{field}: {' '.join(messages)}"
                         for field, messages in exc.message_dict.items())
    if isinstance(exc, ValidationError):
        return " ".join(exc.messages)
    return str(exc)


class Command(BaseCommand):
    help = "Create, list, show, disable and enable API keys."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="Create a key; prints its secret once.")
        create.add_argument("--tenant", required=True, help="Created if it does not exist.")
        create.add_argument("--name", required=True)
        create.add_argument("--group", help="Name of an existing group.")
        create.add_argument("--models", help="Allowed models, comma-separated (wildcards ok).")
        create.add_argument("--deny-models", "--deny", dest="deny_models",
                            help="Denied models, comma-separated (wildcards ok).")
        create.add_argument("--ip-allow", "--ips", dest="ip_allow",
                            help="Allowed client IPs/CIDRs, comma-separated; default any.")
        for name in ("rpm", "rpd", "tpm", "concurrency", "max-tokens"):
            create.add_argument(f"--{name}", type=int)
        create.add_argument("--quota", help="Spending cap (decimal).")
        create.add_argument("--expires", help="ISO date/datetime.")
        create.add_argument("--secret", help="Use this secret instead of generating one.")
        create.add_argument("--json", action="store_true",
                            help="Print one JSON object with the secret and the key's fields.")
        lst = sub.add_parser("list", help="List keys (never their secrets).")
        lst.add_argument("--tenant")
        lst.add_argument("--json", action="store_true")
        for action, text in (("show", "Print a key's fields (never its secret)."),
                             ("disable", "Refuse the key on /v1 (403 api_key_disabled)."),
                             ("enable", "Accept a disabled key again.")):
            one = sub.add_parser(action, help=text)
            one.add_argument("key_prefix", metavar="KEY_PREFIX",
                             help="sk-tp-ab12 (or less, if unambiguous), the masked form "
                                  "sk-tp-ab12…wxyz, or the full secret.")
            one.add_argument("--tenant", help="Only look among this tenant's keys.")
            one.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["action"] == "list":
            self._list(opts)
            return
        if opts["action"] in ("show", "disable", "enable"):
            self._one(opts)
            return
        group = None
        if opts["group"]:
            group = Group.objects.filter(name=opts["group"]).first()
            if group is None:
                raise CommandError(f"No group named {opts['group']!r}.")
        try:
            quota = Decimal(opts["quota"]) if opts["quota"] else None
        except InvalidOperation as exc:
            raise CommandError(f"--quota {opts['quota']!r} is not a decimal number") from exc
        try:
            with transaction.atomic():  # a rejected key must not leave a new tenant behind
                tenant, created = tenant_get_or_create(name=opts["tenant"])
                made = key_create(
                    tenant=tenant, name=opts["name"], group=group, models=opts["models"],
                    denied_models=opts["deny_models"], allowed_ips=opts["ip_allow"],
                    rpm=opts["rpm"],
                    rpd=opts["rpd"], tpm=opts["tpm"], concurrency=opts["concurrency"],
                    max_tokens=opts["max_tokens"], quota=quota,
                    expires_at=_expiry(opts["expires"]) if opts["expires"] else None,
                    secret=opts["secret"],
                )
        except (ApplicationError, ValidationError) as exc:
            raise CommandError(_errors(exc)) from exc
        if opts["json"]:
            self.stdout.write(json.dumps({"secret": made.secret, **_as_dict(made.key)}))
            return
        if created:
            self.stdout.write(f"Created tenant {tenant.name}.")
        self.stdout.write(f"Created key {made.key.name!r} ({made.key.masked}) for tenant "
                          f"{tenant.name}. Copy the secret now; it is not shown again:")
        self.stdout.write(made.secret)

    def _list(self, opts: dict[str, Any]) -> None:
        qs = ApiKey.objects.select_related("tenant", "group")
        if opts["tenant"]:
            qs = qs.filter(tenant__name=opts["tenant"])
        rows = [_as_dict(k) for k in qs]
        if opts["json"]:
            self.stdout.write(json.dumps(rows))
            return
        for r in rows:
            self.stdout.write(f"{r['id']:>5}  {r['key']:16} {r['tenant']:20} {r['status']:8} "
                              f"{r['name']}")


    def _one(self, opts: dict[str, Any]) -> None:
        try:
            key = key_find(opts["key_prefix"], tenant=opts["tenant"])
        except ApplicationError as exc:
            raise CommandError(str(exc)) from exc
        action = opts["action"]
        if action == "show":
            data = {**_as_dict(key), "quota_used": str(key.quota_used),
                    "tenant_status": key.tenant.status, "expired": key.is_expired}
            if opts["json"]:
                self.stdout.write(json.dumps(data))
                return
            for name, value in data.items():
                self.stdout.write(f"{name:14} {_text(value)}")
            return
        changed = key_set_status(key=key, active=action == "enable")
        if opts["json"]:
            self.stdout.write(json.dumps({**_as_dict(key), "changed": changed}))
            return
        state = "enabled" if action == "enable" else "disabled"
        self.stdout.write(f"Key {key.masked} ({key.tenant.name}/{key.name}) "
                          f"{state if changed else 'was already ' + state}.")
        if action == "enable" and key.tenant.status != Status.ACTIVE:
            self.stdout.write(f"Note: its tenant {key.tenant.name} is {key.tenant.status}, "
                              "so the key is still refused.")


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(value) or "-"
    return str(value)


def _as_dict(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.pk, "name": key.name, "tenant": key.tenant.name, "key": key.masked,
        "prefix": key.prefix, "status": key.status,
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "models": key.allowed_models, "denied_models": key.denied_models,
        "allowed_ips": key.allowed_ips, "rpm": key.rpm, "rpd": key.rpd, "tpm": key.tpm,
        "concurrency": key.concurrency, "max_tokens": key.max_tokens,
        "quota": str(key.quota) if key.quota is not None else None,
        "group": key.group.name if key.group else None,
        "created_at": key.created_at.isoformat(),
    }
