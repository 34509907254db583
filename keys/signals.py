"""Invalidate gateway snapshots after any change that affects a key's policy.

Runs on commit, so a rolled-back change never evicts anything and a committed one is seen
by every gateway process within GATEWAY_SNAPSHOT_TTL.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import Q
from django.db.models.signals import post_delete, post_save, pre_delete, pre_save
from django.dispatch import receiver

from keys import limits
from keys.models import ApiKey, Group, Tenant
from keys.money import to_micro
from keys.snapshots import key_snapshots


def _invalidate_hashes_on_commit(hashes: list[str]) -> None:
    if hashes:
        transaction.on_commit(lambda: key_snapshots.invalidate(hashes))


@receiver(pre_save, sender=ApiKey)
def _remember_quota(sender: type, instance: ApiKey, **kwargs: Any) -> None:
    instance._quota_before = (  # type: ignore[attr-defined]
        ApiKey.objects.filter(pk=instance.pk).values_list("quota", flat=True).first()
        if instance.pk else None
    )


@receiver([post_save, post_delete], sender=ApiKey)
def _key_changed(sender: type, instance: ApiKey, **kwargs: Any) -> None:
    _invalidate_hashes_on_commit([instance.secret_hash])
    before = getattr(instance, "_quota_before", None)
    after = None if kwargs.get("signal") is post_delete else instance.quota
    if before == after:
        return
    key_id, tenant_id = instance.pk, instance.tenant_id
    if before is None or after is None:
        # The key's account starts (or stops) existing: load it afresh when next needed.
        transaction.on_commit(lambda: limits.limiter().drop_account("key", key_id,
                                                                          tenant_id))
    else:
        delta = to_micro(after - before)
        transaction.on_commit(lambda: limits.limiter().adjust_account("key", key_id, delta,
                                                                            tenant_id))


@receiver([post_save, post_delete], sender=Tenant)
def _tenant_changed(sender: type, instance: Tenant, **kwargs: Any) -> None:
    if kwargs.get("created"):
        return
    if kwargs.get("signal") is post_delete:
        tenant_id = instance.pk
        transaction.on_commit(lambda: limits.limiter().drop_account("tenant", tenant_id))
    keys = ApiKey.objects.filter(tenant_id=instance.pk)
    hashes = list(keys.values_list("secret_hash", flat=True))
    _invalidate_hashes_on_commit(hashes)


# pre_delete: deleting a group nulls its keys' FK by a bulk UPDATE that sends no signals.
@receiver([post_save, pre_delete], sender=Group)
def _group_changed(sender: type, instance: Group, **kwargs: Any) -> None:
    if kwargs.get("created"):
        return
    hashes = list(
        ApiKey.objects.filter(Q(group_id=instance.pk) | Q(group__isnull=True,
                                                           tenant__group_id=instance.pk))
        .values_list("secret_hash", flat=True)
    )
    _invalidate_hashes_on_commit(hashes)
