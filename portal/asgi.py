"""ASGI entry point: ``daphne portal.asgi:application`` (or ``python -m portal.server``).

channels' ProtocolTypeRouter/URLRouter sends the /v1 API (and its un-prefixed and
extra-prefixed forms) to the gateway's lean ASGI app and every other path to Django.
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()  # sets Django up before the gateway is imported

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

from gateway.urls import gateway_patterns  # noqa: E402

application = ProtocolTypeRouter({
    "http": URLRouter([*gateway_patterns(), re_path(r"", django_asgi_app)]),
})
