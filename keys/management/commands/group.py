"""``manage.py group create|list|show|update``: groups (plans): the models their keys may
call, default limits, a price multiplier, and the upstreams that serve them."""

from __future__ import annotations

from argparse import ArgumentParser, BooleanOptionalAction
from typing import Any

from django.core.management.base import CommandError
from django.db.models import Count, QuerySet

from keys import cli
from keys.fields import split_items
from keys.groups import group_create, group_update
from keys.models import Group

NAME_HELP = "The group's name (or its start, if only one group's name starts so)."
LIMITS = ("rpm", "rpd", "concurrency", "max_tokens")


def _upstream_model() -> Any:
    """The gateway's Upstream model, reached through the relation (keys never imports the
    gateway)."""
    return Group._meta.get_field("upstreams").related_model


def _settings(parser: ArgumentParser, *, update: bool) -> None:
    clear = " ('' clears)" if update else ""
    parser.add_argument("--description", help=f"Free text{clear}.")
    parser.add_argument("--models",
                        help=f"Models its keys may call, comma-separated, wildcards ok "
                             f"(gpt-5*); empty: every model{clear}.")
    for name in LIMITS:
        flag = name.replace("_", "-")
        parser.add_argument(f"--{flag}", type=int, metavar="N",
                            help="Largest max_tokens a request may ask; 0: no cap."
                            if name == "max_tokens" else "0: unlimited.")
    parser.add_argument("--price-multiplier", metavar="FACTOR",
                        help="Prices of its keys' requests are multiplied by this (1: list "
                             "price).")
    parser.add_argument("--dedicated-upstreams", action=BooleanOptionalAction,
                        help="Its keys use only the upstreams assigned to it (--upstreams).")
    parser.add_argument("--upstreams", metavar="NAMES",
                        help=f"Upstreams that serve this group, comma-separated{clear}.")


class Command(cli.OperatorCommand):
    help = "Create, list, show and change groups (plans)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="A new group.")
        create.add_argument("--name", required=True)
        _settings(create, update=False)
        sub.add_parser("list", help="Groups with their limits and counts of tenants and keys.")
        sub.add_parser("show", help="One group's settings.").add_argument("name",
                                                                         help=NAME_HELP)
        update = sub.add_parser("update", help="Change a group; options left out stay.")
        update.add_argument("name", help=NAME_HELP)
        update.add_argument("--rename", metavar="NEW_NAME")
        _settings(update, update=True)

    def _values(self, opts: dict[str, Any]) -> tuple[dict[str, Any], list[Any] | None]:
        values: dict[str, Any] = {}
        if opts["description"] is not None:
            values["description"] = opts["description"]
        if opts["models"] is not None:
            values["allowed_models"] = opts["models"]
        for name in LIMITS:
            if opts[name] is not None:
                if opts[name] < 0:
                    raise CommandError(f"--{name.replace('_', '-')} cannot be negative.")
                values[name] = opts[name]
        multiplier = cli.parse_decimal(opts["price_multiplier"], "--price-multiplier")
        if multiplier is not None:
            if multiplier < 0:
                raise CommandError("--price-multiplier cannot be negative.")
            values["price_multiplier"] = multiplier
        if opts["dedicated_upstreams"] is not None:
            values["dedicated_upstreams"] = opts["dedicated_upstreams"]
        upstreams = None
        if opts["upstreams"] is not None:
            everything = _upstream_model().objects.all()
            upstreams = [cli.find_named(everything, name, what="upstream")
                         for name in split_items(opts["upstreams"])]
        return values, upstreams

    def do_create(self, opts: dict[str, Any]) -> None:
        values, upstreams = self._values(opts)
        group = group_create(name=opts["name"], upstreams=upstreams, **values)
        data = as_dict(_with_counts(Group.objects.filter(pk=group.pk)).get())
        self.emit(data, f"Created group {group.name}.")

    def do_list(self, opts: dict[str, Any]) -> None:
        rows = [as_dict(g) for g in _with_counts(Group.objects.all())]
        self.emit(rows, cli.table(rows, [
            ("ID", "id"), ("NAME", "name"), ("RPM", "rpm"), ("RPD", "rpd"),
            ("CONC", "concurrency"), ("MAX TOK", "max_tokens"), ("PRICE x", "price_multiplier"),
            ("DEDICATED", "dedicated_upstreams"), ("TENANTS", "tenants"), ("KEYS", "keys"),
            ("MODELS", "models")]) if rows else "No groups.")

    def do_show(self, opts: dict[str, Any]) -> None:
        group = cli.find_named(_with_counts(Group.objects.all()), opts["name"], what="group")
        data = as_dict(group)
        self.emit(data, cli.fields(data))

    def do_update(self, opts: dict[str, Any]) -> None:
        group = cli.find_named(Group.objects.all(), opts["name"], what="group")
        values, upstreams = self._values(opts)
        if opts["rename"] is not None:
            values["name"] = opts["rename"]
        if not values and upstreams is None:
            raise CommandError("Nothing to change: give at least one option (see --help).")
        changed = group_update(group=group, upstreams=upstreams, **values)
        data = {**as_dict(_with_counts(Group.objects.filter(pk=group.pk)).get()),
                "changed": changed}
        what = ", ".join(changed) if changed else "nothing (the values were already so)"
        self.emit(data, f"Group {group.name}: changed {what}.")


def _with_counts(qs: QuerySet[Group]) -> QuerySet[Group]:
    return qs.annotate(n_tenants=Count("tenants", distinct=True),
                       n_keys=Count("keys", distinct=True)).prefetch_related(
                           "upstreams").order_by("name")  # GROUP BY drops Meta.ordering


def as_dict(group: Group) -> dict[str, Any]:
    return {
        "id": group.pk, "name": group.name, "description": group.description,
        "models": group.allowed_models, "rpm": group.rpm, "rpd": group.rpd,
        "concurrency": group.concurrency, "max_tokens": group.max_tokens,
        "price_multiplier": str(group.price_multiplier),
        "dedicated_upstreams": group.dedicated_upstreams,
        "upstreams": sorted(u.name for u in group.upstreams.all()),
        "tenants": getattr(group, "n_tenants", None), "keys": getattr(group, "n_keys", None),
        "created_at": group.created_at,
    }
