"""``manage.py member add|remove|list``: tenant memberships, with the portal's rules (the
last owner of a tenant can be neither removed nor demoted)."""

from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from keys import membership as rules
from keys.models import Membership, Tenant
from keys.services import ApplicationError


def _tenant(name: str) -> Tenant:
    tenant = Tenant.objects.filter(name=name.strip()).first()
    if tenant is None:
        raise CommandError(f"No tenant named {name!r}.")
    return tenant


def _user(email: str) -> Any:
    user = rules.user_by_email(email)
    if user is None:
        raise CommandError(f"No user with the email {email!r} (create one with "
                           "'manage.py user create').")
    return user


def _row(membership: Membership) -> dict[str, Any]:
    return {"tenant": membership.tenant.name, "email": membership.user.email,
            "user_id": membership.user_id, "role": membership.role,
            "joined": membership.created_at.isoformat()}


class Command(BaseCommand):
    help = "Add, remove and list the members of tenants."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="Add a user to a tenant, or change their role.")
        add.add_argument("--tenant", required=True, help="Name of an existing tenant.")
        add.add_argument("--email", required=True, help="Email of an existing user.")
        add.add_argument("--role", default="member", choices=[r.value for r in rules.Role])
        add.add_argument("--json", action="store_true")
        remove = sub.add_parser("remove", help="Remove a user from a tenant.")
        remove.add_argument("--tenant", required=True)
        remove.add_argument("--email", required=True)
        remove.add_argument("--json", action="store_true")
        lst = sub.add_parser("list", help="List members (of one tenant, or of all).")
        lst.add_argument("--tenant")
        lst.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            getattr(self, f"_{opts['action']}")(opts)
        except ApplicationError as exc:
            raise CommandError(str(exc)) from exc

    def _add(self, opts: dict[str, Any]) -> None:
        tenant, user = _tenant(opts["tenant"]), _user(opts["email"])
        membership, created = rules.member_add(tenant=tenant, user=user, role=opts["role"])
        if opts["json"]:
            self.stdout.write(json.dumps({**_row(membership), "created": created}))
        else:
            verb = "Added" if created else "Updated"
            self.stdout.write(f"{verb}: {user.email} is {membership.role} of {tenant.name}.")

    def _remove(self, opts: dict[str, Any]) -> None:
        tenant, user = _tenant(opts["tenant"]), _user(opts["email"])
        membership = Membership.objects.select_related("tenant", "user").filter(
            tenant=tenant, user=user).first()
        if membership is None:
            raise CommandError(f"{user.email} is not a member of {tenant.name}.")
        row = _row(membership)
        rules.member_remove(membership=membership)
        if opts["json"]:
            self.stdout.write(json.dumps({**row, "removed": True}))
        else:
            self.stdout.write(f"Removed {user.email} from {tenant.name}.")

    def _list(self, opts: dict[str, Any]) -> None:
        rows = Membership.objects.select_related("tenant", "user").order_by(
            "tenant__name", "user__email")
        if opts["tenant"]:
            rows = rows.filter(tenant=_tenant(opts["tenant"]))
        data = [_row(m) for m in rows]
        if opts["json"]:
            self.stdout.write(json.dumps(data))
            return
        if not data:
            self.stdout.write("No members.")
            return
        width = max(len(r["email"] or "") for r in data)
        for r in data:
            self.stdout.write(f"{r['tenant']}\t{(r['email'] or '').ljust(width)}\t{r['role']}")
