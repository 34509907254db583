"""``manage.py user create``: a portal user who can log in at once (verified email), with an
optional membership (``--tenant``, created if new, ``--role``) and staff access (``--staff``).
"""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from allauth.account.models import EmailAddress
from django.contrib.auth import get_user_model
from django.core.management.base import CommandError
from django.db import transaction

from keys import cli
from keys import membership as rules
from keys.services import ApplicationError, tenant_get_or_create


def user_create(*, email: str, password: str, staff: bool = False) -> Any:
    """A user whose username and (verified, primary) email are ``email``."""
    email = rules.normalize_email(email)
    if not password:
        raise ApplicationError("A password is needed (--password).")
    users = get_user_model()
    if users.objects.filter(email__iexact=email).exists() or EmailAddress.objects.filter(
            email__iexact=email).exists():
        raise ApplicationError(f"A user with the email {email} already exists.")
    if users.objects.filter(username=email).exists():
        raise ApplicationError(f"A user named {email} already exists.")
    user = users.objects.create_user(username=email[:150], email=email, password=password,
                                     is_staff=staff)
    EmailAddress.objects.create(user=user, email=email, verified=True, primary=True)
    return user


class Command(cli.OperatorCommand):
    help = "Create portal users (they can log in at once: their email is marked verified)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="Create a user, optionally a tenant member.")
        create.add_argument("--email", required=True, help="Login email (also the username).")
        create.add_argument("--password", required=True)
        create.add_argument("--tenant", help="Make the user a member (tenant created if new).")
        create.add_argument("--role", choices=[r.value for r in rules.Role],
                            help="Role in --tenant (default: member).")
        create.add_argument("--staff", action="store_true",
                            help="May log in to the admin (/admin/) as well.")

    def do_create(self, opts: dict[str, Any]) -> None:
        if opts["role"] and not opts["tenant"]:
            raise CommandError("--role needs --tenant.")
        with transaction.atomic():
            user = user_create(email=opts["email"], password=opts["password"],
                               staff=opts["staff"])
            tenant = membership = None
            if opts["tenant"]:
                tenant, _made = tenant_get_or_create(name=opts["tenant"])
                membership, _new = rules.member_add(
                    tenant=tenant, user=user, role=opts["role"] or rules.Role.MEMBER)
        data = {"id": user.pk, "email": user.email, "staff": user.is_staff,
                "tenant": tenant.name if tenant else None,
                "role": membership.role if membership else None}
        where = f", {membership.role} of {tenant.name}" if membership and tenant else ""
        staff = ", staff" if user.is_staff else ""
        self.emit(data, f"Created user {user.email} (id {user.pk}{where}{staff}).")
