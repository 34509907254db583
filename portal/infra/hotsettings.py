"""Settings the /v1 hot path reads on every request, as plain attributes.

``settings.X`` goes through Django's lazy settings object, a Python-level
``__getattribute__`` per read; a request read a dozen of them. ``hot.X`` is the same value,
read from the settings once and then an ordinary attribute. Any changed setting
(``override_settings``, the tests' ``settings`` fixture) forgets them all, so the next read
takes the new value.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.signals import setting_changed


class HotSettings:
    def __getattr__(self, name: str) -> Any:  # only when not read yet
        value = getattr(settings, name)
        setattr(self, name, value)
        return value


hot = HotSettings()


def _forget(**_: Any) -> None:
    hot.__dict__.clear()


setting_changed.connect(_forget, dispatch_uid="portal.infra.hotsettings")
