"""``manage.py token create|list|revoke``: personal access tokens for the tenant API
(``/api/v1``) and, with ``--staff``, the operations API (``/api/ops``). ``create`` prints the
new token once, alone on its last line (``TOKEN=$(manage.py token create … | tail -n1)``);
the others name a token by its prefix and never print a secret (only its hash is stored)."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.utils import timezone

from keys import cli
from keys.models import AccessToken, Tenant
from keys.tokens import DISPLAY_PREFIX_LENGTH, TOKEN_PREFIX, token_create, token_revoke

STATES = ("active", "revoked", "expired")


def state(token: AccessToken) -> str:
    if token.revoked_at is not None:
        return "revoked"
    return "expired" if token.is_expired else "active"


def as_dict(token: AccessToken) -> dict[str, Any]:
    return {
        "id": token.pk, "name": token.name, "token": token.masked, "prefix": token.prefix,
        "user": token.user.email or token.user.get_username(),
        "tenant": token.tenant.name if token.tenant else None, "scope": token.scope,
        "staff": token.staff, "state": state(token), "expires_at": token.expires_at,
        "revoked_at": token.revoked_at, "last_used_at": token.last_used_at,
        "created_at": token.created_at,
    }


class Command(cli.OperatorCommand):
    help = "Create, list and revoke personal access tokens (for the tenant and ops APIs)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="Create a token; prints it once, alone on the "
                                               "last line.")
        create.add_argument("--user", required=True, metavar="EMAIL",
                            help="The user the token acts as.")
        create.add_argument("--tenant", help="Bind it to this tenant (the user must be a "
                                             "member, unless --staff).")
        create.add_argument("--scope", choices=AccessToken.Scope.values, default="read",
                            help="read (default) or write.")
        create.add_argument("--staff", action="store_true",
                            help="Also reaches the operations API (the user must be staff).")
        create.add_argument("--name", default="cli", help="A label (default: cli).")
        create.add_argument("--expires", help="ISO date/datetime; default: never.")
        lst = sub.add_parser("list", help="List tokens (never their secrets).")
        lst.add_argument("--user", metavar="EMAIL")
        lst.add_argument("--tenant")
        lst.add_argument("--state", choices=STATES)
        revoke = sub.add_parser("revoke", help="Revoke a token: refused at once.")
        revoke.add_argument("token_prefix", metavar="TOKEN_PREFIX",
                            help=f"{TOKEN_PREFIX}ab12 (or less, if unambiguous), the masked "
                                 f"form {TOKEN_PREFIX}ab12…wxyz, or the full token.")
        revoke.add_argument("--user", metavar="EMAIL", help="Only look among this user's.")

    def do_create(self, opts: dict[str, Any]) -> None:
        user = cli.find_user(opts["user"])
        tenant = (cli.find_named(Tenant.objects.all(), opts["tenant"], what="tenant")
                  if opts["tenant"] else None)
        expires_at = cli.parse_when(opts["expires"]) if opts["expires"] else None
        made = token_create(user=user, name=opts["name"], scope=opts["scope"], tenant=tenant,
                            staff=opts["staff"], expires_at=expires_at)
        token = made.token
        where = f", tenant {tenant.name}" if tenant else ""
        staff = ", staff" if token.staff else ""
        self.emit_secret(as_dict(token), made.secret,
                         f"Created token {token.masked} ({token.get_scope_display()}{staff}) "
                         f"for {user.email}{where}.")

    def do_list(self, opts: dict[str, Any]) -> None:
        qs = AccessToken.objects.select_related("user", "tenant")
        if opts["user"]:
            qs = qs.filter(user=cli.find_user(opts["user"]))
        if opts["tenant"]:
            qs = qs.filter(tenant=cli.find_named(Tenant.objects.all(), opts["tenant"],
                                                 what="tenant"))
        now = timezone.now()
        if opts["state"] == "revoked":
            qs = qs.filter(revoked_at__isnull=False)
        elif opts["state"] == "expired":
            qs = qs.filter(revoked_at__isnull=True, expires_at__lte=now)
        elif opts["state"] == "active":
            qs = qs.filter(revoked_at__isnull=True).exclude(expires_at__lte=now)
        rows = [as_dict(t) for t in qs]
        self.emit(rows, cli.table(rows, [
            ("ID", "id"), ("TOKEN", "token"), ("USER", "user"), ("TENANT", "tenant"),
            ("SCOPE", "scope"), ("STAFF", "staff"), ("STATE", "state"), ("NAME", "name"),
            ("LAST USED", "last_used_at")]) if rows else "No tokens.")

    def do_revoke(self, opts: dict[str, Any]) -> None:
        tokens = AccessToken.objects.select_related("user", "tenant")
        where = ""
        if opts["user"]:
            user = cli.find_user(opts["user"])
            tokens, where = tokens.filter(user=user), f" of {user.email}"
        token = cli.find_by_secret(
            tokens, opts["token_prefix"], scheme=TOKEN_PREFIX,
            display_length=DISPLAY_PREFIX_LENGTH, noun="token", where=where, narrow="--user",
            describe=lambda t: f"{t.masked} ({t.user.email}/{t.name}, id {t.pk})")
        changed = token.revoked_at is None
        token_revoke(token)
        line = (f"Token {token.masked} ({token.user.email}/{token.name}) "
                f"{'revoked' if changed else 'was already revoked'}.")
        self.emit({**as_dict(token), "changed": changed}, line)
