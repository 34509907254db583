"""``manage.py demo``: seed a demo tenant, user, key and an upstream on the fake upstream.

Safe to run again: the tenant, user and upstream are reused and the demo key is replaced
(its secret is only known at creation, so each run prints a fresh one).
"""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from allauth.account.models import EmailAddress
from django.contrib.auth import get_user_model
from django.db import transaction

from gateway.models import Upstream
from gateway.services import upstream_create
from keys import cli
from keys.models import ApiKey, Membership
from keys.services import key_create, tenant_get_or_create

DEMO_EMAIL = "demo@example.com"
DEMO_MODELS = ["gpt-4o-mini", "gpt-5", "gpt-5-codex"]
CURL_BODY = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'


class Command(cli.OperatorCommand):
    help = "Seed demo data that relays to the fake upstream, and print a working key."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--upstream-url", default="http://127.0.0.1:8900/v1",
                            help="Base URL of the fake upstream (default: %(default)s).")
        parser.add_argument("--gateway-url", default="http://127.0.0.1:8000",
                            help="Where Turnpike listens, for the printed curl line.")
        parser.add_argument("--password", default="demo",
                            help="Password of the demo admin user 'demo'.")

    @transaction.atomic
    def run(self, opts: dict[str, Any]) -> None:
        tenant, _ = tenant_get_or_create(name="demo")
        user_model = get_user_model()
        user, made_user = user_model.objects.get_or_create(
            username="demo", defaults={"email": DEMO_EMAIL, "is_staff": True,
                                       "is_superuser": True},
        )
        if made_user:
            user.set_password(opts["password"])
            user.save()
        # The same user logs in to the portal by its email (verified, so at once).
        if not user.email:
            user.email = DEMO_EMAIL
            user.save(update_fields=["email"])
        address, _ = EmailAddress.objects.get_or_create(
            user=user, email=user.email, defaults={"verified": True, "primary": True})
        if not (address.verified and address.primary):
            address.verified = address.primary = True
            address.save(update_fields=["verified", "primary"])
        membership, _ = Membership.objects.get_or_create(
            tenant=tenant, user=user, defaults={"role": Membership.Role.OWNER})
        if membership.role != Membership.Role.OWNER:
            membership.role = Membership.Role.OWNER
            membership.save(update_fields=["role"])
        upstream = Upstream.objects.filter(name="fake").first()
        if upstream is None:
            upstream = upstream_create(name="fake", kind="openai", base_url=opts["upstream_url"],
                                       models=DEMO_MODELS, api_keys=["sk-fake-upstream-key"])
        elif upstream.base_url != opts["upstream_url"].rstrip("/"):
            upstream.base_url = opts["upstream_url"].rstrip("/")
            upstream.save()
        for old in ApiKey.objects.filter(tenant=tenant, name="demo key"):
            old.delete()
        made = key_create(tenant=tenant, name="demo key", created_by=user)
        url = opts["gateway_url"].rstrip("/")
        if self.json:
            self.emit({"secret": made.secret, "key": made.key.masked, "tenant": tenant.name,
                       "user": user.email, "admin_user": user.get_username(),
                       "upstream": upstream.name, "upstream_url": upstream.base_url,
                       "models": upstream.served_models, "gateway_url": url})
            return
        self.stdout.write(
            f"Demo ready: tenant 'demo', admin user 'demo' (password '{opts['password']}' "
            f"if new) at {url}/admin/, upstream 'fake' -> {upstream.base_url} "
            f"serving {', '.join(upstream.served_models)}.\n"
            f"Portal: {url}/ - log in as {user.email} (password '{opts['password']}' "
            "if new), owner of tenant 'demo'.\n"
            "Try:\n"
            f"  curl -s {url}/v1/chat/completions -H 'Authorization: Bearer {made.secret}' "
            "-H 'Content-Type: application/json' "
            f"-d '{CURL_BODY}'\n"
            "Demo key:"
        )
        self.stdout.write(made.secret)
