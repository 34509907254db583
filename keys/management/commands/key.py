"""``manage.py key create|list|show|update|disable|enable|rotate|delete``. ``create`` and
``rotate`` print the new secret once, alone on the last line; the others name a key by its
prefix (see ``keys.cli.find_by_secret``) and never print a secret (only its hash is stored).
"""

from __future__ import annotations

import sys
from argparse import ArgumentParser, ArgumentTypeError
from typing import Any

from django.core.management.base import CommandError
from django.db import transaction
from django.utils import timezone

from keys import cli
from keys.models import MAX_CAPTURE_DAYS, ApiKey, Group, KeyResponseStorage, Status, Tenant
from keys.secrets import DISPLAY_PREFIX_LENGTH, KEY_PREFIX
from keys.services import (
    key_create,
    key_delete,
    key_rotate,
    key_set_status,
    key_update,
    tenant_get_or_create,
)

KEY_HELP = ("sk-tp-ab12 (or less, if unambiguous), the masked form sk-tp-ab12…wxyz, or the "
            "full secret.")


def find_key(reference: str, tenant: str | None = None) -> ApiKey:
    """The one key ``reference`` names, among ``tenant``'s keys if given."""
    keys = ApiKey.objects.select_related("tenant", "group")
    where = ""
    if tenant is not None:
        owner = cli.find_named(Tenant.objects.all(), tenant, what="tenant")
        keys, where = keys.filter(tenant=owner), f" in tenant {owner.name!r}"
    return cli.find_by_secret(
        keys, reference, scheme=KEY_PREFIX, display_length=DISPLAY_PREFIX_LENGTH, noun="key",
        describe=lambda k: f"{k.masked} ({k.tenant.name}/{k.name}, id {k.pk})", where=where,
        narrow="--tenant")


def _settings(parser: ArgumentParser, *, update: bool) -> None:
    """The options ``create`` and ``update`` share. For ``update`` an option left out keeps
    the key's value; an empty string clears a list, ``none`` a limit."""
    clear = " ('' clears)" if update else ""
    parser.add_argument("--group", help="Name of an existing group" +
                        (" ('none': the tenant's)." if update else "."))
    parser.add_argument("--models", help=f"Allowed models, comma-separated (wildcards ok){clear}.")
    parser.add_argument("--deny-models", "--deny", dest="deny_models",
                        help=f"Denied models, comma-separated (wildcards ok){clear}.")
    parser.add_argument("--ip-allow", "--ips", dest="ip_allow",
                        help=f"Allowed client IPs/CIDRs, comma-separated; default any{clear}.")
    for name in ("rpm", "rpd", "tpm", "concurrency", "max-tokens"):
        if update:
            parser.add_argument(f"--{name}", type=_limit, default=_KEEP,
                                help="0: none; 'none': the group's.")
        else:
            parser.add_argument(f"--{name}", type=int, help="0: none.")
    parser.add_argument("--quota", help="Spending cap (decimal)" +
                        ("; 'none' removes it." if update else "."))
    parser.add_argument("--expires", help="ISO date/datetime" +
                        ("; 'never' removes it." if update else "."))
    parser.add_argument("--response-storage", choices=KeyResponseStorage.values,
                        help="Store this key's /v1/responses answers: as its tenant "
                             "(inherit, the default), on, or off (zero data retention).")
    parser.add_argument("--capture-bodies", metavar="WHEN",
                        help="Capture this key's request and response bodies for debugging: "
                             "as its tenant (inherit, the default), 'off', or on for a "
                             f"duration (30m, 24h, 3d; at most {MAX_CAPTURE_DAYS} days) or "
                             "until an ISO datetime.")


def _capture(opts: dict[str, Any]) -> dict[str, Any]:
    """--capture-bodies as key settings (none when left out)."""
    if opts["capture_bodies"] is None:
        return {}
    mode, until = cli.parse_capture(opts["capture_bodies"], inherit=True)
    return {"capture_bodies": mode, "capture_bodies_until": until}


_KEEP = object()  # an update's limit option left out (``--rpm none`` gives None)


def _limit(value: str) -> int | None:
    if value.strip().lower() == "none":
        return None
    try:
        return int(value)
    except ValueError:
        raise ArgumentTypeError(f"{value!r} is not a whole number (or 'none')") from None


class Command(cli.OperatorCommand):
    help = "Create, list, show, change, disable, enable, rotate and delete API keys."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="Create a key; prints its secret once.")
        create.add_argument("--tenant", required=True, help="Created if it does not exist.")
        create.add_argument("--name", required=True)
        _settings(create, update=False)
        create.add_argument("--secret", help="Use this secret instead of generating one.")
        lst = sub.add_parser("list", help="List keys (never their secrets).")
        lst.add_argument("--tenant")
        lst.add_argument("--status", choices=Status.values)

        def one(action: str, text: str) -> ArgumentParser:
            parser = sub.add_parser(action, help=text)
            parser.add_argument("key_prefix", metavar="KEY_PREFIX", help=KEY_HELP)
            parser.add_argument("--tenant", help="Only look among this tenant's keys.")
            return parser

        one("show", "Print a key's fields (never its secret).")
        one("disable", "Refuse the key on /v1 (403 api_key_disabled).")
        one("enable", "Accept a disabled key again.")
        update = one("update", "Change a key's name, group, model lists and limits.")
        update.add_argument("--name")
        _settings(update, update=True)
        rotate = one("rotate", "Replace the key by a new one with the same settings; prints "
                               "the new secret once.")
        rotate.add_argument("--grace", default="0",
                            help="How long the old key keeps working: 0 (default: at once), "
                                 "or seconds, 30m, 24h, 7d.")
        delete = one("delete", "Delete a key for good (its usage rows stay).")
        delete.add_argument("--yes", action="store_true",
                            help="Confirm (needed when not asked on a terminal).")

    def do_create(self, opts: dict[str, Any]) -> None:
        group = _group(opts["group"])
        quota = cli.parse_decimal(opts["quota"], "--quota")
        expires_at = cli.parse_when(opts["expires"]) if opts["expires"] else None
        with transaction.atomic():  # a rejected key must not leave a new tenant behind
            tenant, created = tenant_get_or_create(name=opts["tenant"])
            made = key_create(
                tenant=tenant, name=opts["name"], group=group, models=opts["models"],
                denied_models=opts["deny_models"], allowed_ips=opts["ip_allow"],
                rpm=opts["rpm"], rpd=opts["rpd"], tpm=opts["tpm"],
                concurrency=opts["concurrency"], max_tokens=opts["max_tokens"], quota=quota,
                expires_at=expires_at, secret=opts["secret"],
                response_storage=opts["response_storage"] or KeyResponseStorage.INHERIT,
                **_capture(opts),
            )
        if created and not self.json:
            self.stdout.write(f"Created tenant {tenant.name}.")
        self.emit_secret(as_dict(made.key), made.secret,
                         f"Created key {made.key.name!r} ({made.key.masked}) for tenant "
                         f"{tenant.name}.")

    def do_list(self, opts: dict[str, Any]) -> None:
        qs = ApiKey.objects.select_related("tenant", "group")
        if opts["tenant"]:
            qs = qs.filter(tenant=cli.find_named(Tenant.objects.all(), opts["tenant"],
                                                 what="tenant"))
        if opts["status"]:
            qs = qs.filter(status=opts["status"])
        rows = [as_dict(k) for k in qs]
        self.emit(rows, cli.table(rows, [("ID", "id"), ("KEY", "key"), ("TENANT", "tenant"),
                                         ("STATUS", "status"), ("NAME", "name")])
                  if rows else "No keys.")

    def do_show(self, opts: dict[str, Any]) -> None:
        key = find_key(opts["key_prefix"], opts["tenant"])
        data = {**as_dict(key), "quota_used": str(key.quota_used),
                "tenant_status": key.tenant.status, "expired": key.is_expired}
        self.emit(data, cli.fields(data))

    def do_disable(self, opts: dict[str, Any]) -> None:
        self._set_status(opts, active=False)

    def do_enable(self, opts: dict[str, Any]) -> None:
        self._set_status(opts, active=True)

    def _set_status(self, opts: dict[str, Any], *, active: bool) -> None:
        key = find_key(opts["key_prefix"], opts["tenant"])
        changed = key_set_status(key=key, active=active)
        state = "enabled" if active else "disabled"
        lines = [f"Key {key.masked} ({key.tenant.name}/{key.name}) "
                 f"{state if changed else 'was already ' + state}."]
        if active and key.tenant.status != Status.ACTIVE:
            lines.append(f"Note: its tenant {key.tenant.name} is {key.tenant.status}, so the "
                         "key is still refused.")
        self.emit({**as_dict(key), "changed": changed}, lines)

    def do_update(self, opts: dict[str, Any]) -> None:
        key = find_key(opts["key_prefix"], opts["tenant"])
        changes: dict[str, Any] = {}
        if opts["name"] is not None:
            changes["name"] = opts["name"]
        if opts["group"] is not None:
            changes["group"] = None if opts["group"].strip().lower() == "none" else _group(
                opts["group"])
        for option, field in (("models", "allowed_models"), ("deny_models", "denied_models"),
                              ("ip_allow", "allowed_ips")):
            if opts[option] is not None:
                changes[field] = opts[option]
        for name in ("rpm", "rpd", "tpm", "concurrency", "max_tokens"):
            if opts[name] is not _KEEP:
                changes[name] = opts[name]
        if opts["quota"] is not None:
            changes["quota"] = (None if opts["quota"].strip().lower() == "none"
                                else cli.parse_decimal(opts["quota"], "--quota"))
        if opts["expires"] is not None:
            changes["expires_at"] = (None if opts["expires"].strip().lower() == "never"
                                     else cli.parse_when(opts["expires"]))
        if opts["response_storage"] is not None:
            changes["response_storage"] = opts["response_storage"]
        changes.update(_capture(opts))
        if not changes:
            raise CommandError("Nothing to change: give at least one option (see --help).")
        changed = key_update(key=key, **changes)
        what = ", ".join(changed) if changed else "nothing (the values were already so)"
        self.emit({**as_dict(key), "changed": changed},
                  f"Key {key.masked} ({key.tenant.name}/{key.name}): changed {what}.")

    def do_rotate(self, opts: dict[str, Any]) -> None:
        key = find_key(opts["key_prefix"], opts["tenant"])
        grace = cli.parse_duration(opts["grace"], "--grace")
        made = key_rotate(key=key, grace=grace)
        key.refresh_from_db()
        ends = key.expires_at
        when = "now" if ends is None or ends <= timezone.now() else f"at {ends.isoformat()}"
        old = {"id": key.pk, "key": key.masked, "expires_at": ends}
        self.emit_secret(
            {**as_dict(made.key), "rotated_from": old}, made.secret,
            f"Rotated key {key.name!r} of {key.tenant.name}: the new key is {made.key.masked}; "
            f"the old key {key.masked} stops working {when}.")

    def do_delete(self, opts: dict[str, Any]) -> None:
        key = find_key(opts["key_prefix"], opts["tenant"])
        label = f"{key.masked} ({key.tenant.name}/{key.name})"
        if not opts["yes"] and not self._confirmed(f"Delete key {label} for good? [y/N] "):
            raise CommandError(f"Not deleted: deleting key {label} cannot be undone; run "
                               "again with --yes to confirm.")
        data = as_dict(key)
        key_delete(key=key)
        self.emit({**data, "deleted": True}, f"Deleted key {label}.")

    def _confirmed(self, question: str) -> bool:
        """Ask on a terminal (never in --json mode or a script: they must pass --yes)."""
        if self.json or not sys.stdin.isatty():
            return False
        try:
            return input(question).strip().lower() in ("y", "yes")
        except EOFError:  # Ctrl-D: no
            return False


def _group(name: str | None) -> Group | None:
    return cli.find_named(Group.objects.all(), name, what="group") if name else None


def as_dict(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.pk, "name": key.name, "tenant": key.tenant.name, "key": key.masked,
        "prefix": key.prefix, "status": key.status, "expires_at": key.expires_at,
        "models": key.allowed_models, "denied_models": key.denied_models,
        "allowed_ips": key.allowed_ips, "rpm": key.rpm, "rpd": key.rpd, "tpm": key.tpm,
        "concurrency": key.concurrency, "max_tokens": key.max_tokens,
        "quota": str(key.quota) if key.quota is not None else None,
        "group": key.group.name if key.group else None,
        "rotated_from": key.rotated_from_id, "response_storage": key.response_storage,
        "capture_bodies": key.capture_bodies, "capture_bodies_until": key.capture_bodies_until,
        "created_at": key.created_at,
    }
