from __future__ import annotations

from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "gateway"
    verbose_name = "Upstreams"

    def ready(self) -> None:
        from gateway import opsalerts, signals  # noqa: F401

        opsalerts.watch_redis()
