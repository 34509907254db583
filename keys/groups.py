"""Writes for groups (plans): create one, change its settings. Saved through the model, so
``keys.signals`` evicts the snapshots of every key the group governs on commit and the
gateway applies a change within GATEWAY_SNAPSHOT_TTL; which upstreams serve a group is the
upstreams' ``groups`` relation, whose changes the gateway's routing signals pick up."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import transaction

from keys.fields import split_items
from keys.models import Group
from keys.services import ApplicationError

# Fields of a group that ``group_update`` may change.
GROUP_SETTINGS = ("name", "description", "allowed_models", "rpm", "rpd", "concurrency",
                  "max_tokens", "price_multiplier", "dedicated_upstreams")


def _clean(name: str, value: Any) -> Any:
    if name == "allowed_models":
        return split_items(value)
    if name == "name":
        value = str(value).strip()
        if not value:
            raise ApplicationError("A group needs a name.")
    return value


@transaction.atomic
def group_create(*, name: str, upstreams: Iterable[Any] | None = None,
                 **settings: Any) -> Group:
    """A new group; an existing name is an error. ``upstreams``: the upstreams that serve
    it (with ``dedicated_upstreams`` its keys use only these)."""
    unknown = set(settings) - set(GROUP_SETTINGS)
    if unknown:
        raise ApplicationError(f"Not a group setting: {', '.join(sorted(unknown))}.")
    name = _clean("name", name)
    if Group.objects.filter(name=name).exists():
        raise ApplicationError(f"A group named {name!r} already exists.")
    group = Group(name=name, **{k: _clean(k, v) for k, v in settings.items()})
    group.full_clean()
    group.save()
    if upstreams is not None:
        group.upstreams.set(upstreams)
    return group


@transaction.atomic
def group_update(*, group: Group, upstreams: Iterable[Any] | None = None,
                 **changes: Any) -> list[str]:
    """Change a group's settings (names in ``GROUP_SETTINGS``) and, when given, the
    upstreams that serve it; returns what changed (``upstreams`` included)."""
    unknown = set(changes) - set(GROUP_SETTINGS)
    if unknown:
        raise ApplicationError(f"Not a group setting: {', '.join(sorted(unknown))}.")
    changed = []
    for name, value in changes.items():
        value = _clean(name, value)
        if name == "name" and Group.objects.filter(name=value).exclude(pk=group.pk).exists():
            raise ApplicationError(f"A group named {value!r} already exists.")
        if getattr(group, name) != value:
            setattr(group, name, value)
            changed.append(name)
    if changed:
        group.full_clean()
        group.save(update_fields=changed)
    if upstreams is not None:
        wanted = {u.pk for u in upstreams}
        current = set(group.upstreams.values_list("pk", flat=True))
        if wanted != current:
            group.upstreams.set(wanted)
            changed.append("upstreams")
    return changed
