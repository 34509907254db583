from __future__ import annotations

from django.apps import AppConfig


class KeysConfig(AppConfig):
    name = "keys"
    verbose_name = "Tenants and keys"

    def ready(self) -> None:
        from keys import signals  # noqa: F401
