"""Drop the cached price table after a committed price change (new requests only)."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from billing.models import ModelPrice
from billing.pricing import price_tables


@receiver([post_save, post_delete], sender=ModelPrice)
def _prices_changed(sender: type, instance: ModelPrice, **kwargs: Any) -> None:
    transaction.on_commit(lambda: price_tables.invalidate(["all"]))
