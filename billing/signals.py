"""Drop the cached price table after a committed price change (new requests only); fold a
deleted key's rollup rows into its tenant's key-less rows."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_delete
from django.dispatch import receiver

from billing.models import ModelPrice
from billing.pricing import price_tables
from keys.models import ApiKey


@receiver([post_save, post_delete], sender=ModelPrice)
def _prices_changed(sender: type, instance: ModelPrice, **kwargs: Any) -> None:
    transaction.on_commit(lambda: price_tables.invalidate(["all"]))


@receiver(pre_delete, sender=ApiKey)
def _key_deleted(sender: type, instance: ApiKey, **kwargs: Any) -> None:
    from billing.rollups import fold_deleted_key

    fold_deleted_key(instance.pk)
