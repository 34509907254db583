from __future__ import annotations

from typing import Any

from django.apps import AppConfig


class PortalConfig(AppConfig):
    """The portal app (``portal`` is also the project package; see README, "Layers")."""

    name = "portal"

    def ready(self) -> None:
        from billing.usage import usage_written

        # The portal's live events follow the usage writer; billing, below the portal, only
        # sends the signal.
        usage_written.connect(_publish_live, dispatch_uid="portal.live.publish_usage")


def _publish_live(sender: Any, rows: list[Any], **kwargs: Any) -> None:
    from portal.live import publish_usage

    publish_usage(rows)
