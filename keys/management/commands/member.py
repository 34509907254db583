"""``manage.py member add|role|remove|list``: tenant memberships, with the portal's rules
(``keys.membership``; the operator is bound by no role, but a tenant always keeps an owner:
its last owner can be neither removed nor demoted)."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import CommandError

from keys import cli
from keys import membership as rules
from keys.models import Membership, Tenant

TENANT_HELP = "The tenant's name (or its start, if only one tenant's name starts so)."


def _tenant(name: str) -> Tenant:
    return cli.find_named(Tenant.objects.all(), name, what="tenant")


def _membership(opts: dict[str, Any]) -> Membership:
    tenant, user = _tenant(opts["tenant"]), cli.find_user(opts["email"])
    membership = Membership.objects.select_related("tenant", "user").filter(
        tenant=tenant, user=user).first()
    if membership is None:
        raise CommandError(f"{user.email} is not a member of {tenant.name}.")
    return membership


def _row(membership: Membership) -> dict[str, Any]:
    return {"tenant": membership.tenant.name, "email": membership.user.email,
            "user_id": membership.user_id, "role": membership.role,
            "joined": membership.created_at}


class Command(cli.OperatorCommand):
    help = "Add, list and remove the members of tenants, and change their roles."

    def add_arguments(self, parser: ArgumentParser) -> None:
        roles = [r.value for r in rules.Role]
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="Add a user to a tenant (or change their role).")
        role = sub.add_parser("role", help="Change the role of a member.")
        remove = sub.add_parser("remove", help="Remove a user from a tenant.")
        for one in (add, role, remove):
            one.add_argument("--tenant", required=True, help=TENANT_HELP)
            one.add_argument("--email", required=True, help="Email of an existing user.")
        add.add_argument("--role", default="member", choices=roles)
        role.add_argument("--role", required=True, choices=roles)
        lst = sub.add_parser("list", help="List members (of one tenant, or of all).")
        lst.add_argument("--tenant", help=TENANT_HELP)
        lst.add_argument("--email", help="Only this user's memberships.")

    def do_add(self, opts: dict[str, Any]) -> None:
        tenant, user = _tenant(opts["tenant"]), cli.find_user(opts["email"])
        membership, created = rules.member_add(tenant=tenant, user=user, role=opts["role"])
        verb = "Added" if created else "Updated"
        self.emit({**_row(membership), "created": created},
                  f"{verb}: {user.email} is {membership.role} of {tenant.name}.")

    def do_role(self, opts: dict[str, Any]) -> None:
        membership = _membership(opts)
        before = membership.role
        rules.member_set_role(membership=membership, role=opts["role"])
        changed = before != membership.role
        line = (f"{membership.user.email} is now {membership.role} of {membership.tenant.name} "
                f"(was {before})." if changed else
                f"{membership.user.email} was already {before} of {membership.tenant.name}.")
        self.emit({**_row(membership), "previous_role": before, "changed": changed}, line)

    def do_remove(self, opts: dict[str, Any]) -> None:
        membership = _membership(opts)
        row = _row(membership)
        rules.member_remove(membership=membership)
        self.emit({**row, "removed": True}, f"Removed {row['email']} from {row['tenant']}.")

    def do_list(self, opts: dict[str, Any]) -> None:
        rows = Membership.objects.select_related("tenant", "user").order_by(
            "tenant__name", "user__email")
        if opts["tenant"]:
            rows = rows.filter(tenant=_tenant(opts["tenant"]))
        if opts["email"]:
            rows = rows.filter(user=cli.find_user(opts["email"]))
        data = [_row(m) for m in rows]
        self.emit(data, cli.table(data, [("TENANT", "tenant"), ("EMAIL", "email"),
                                         ("ROLE", "role"), ("JOINED", "joined")])
                  if data else "No members.")
