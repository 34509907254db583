"""ASGI entry point: ``python -m portal.server`` (daphne with uvloop), or any ASGI server
(``daphne portal.asgi:application``).

channels' ProtocolTypeRouter/URLRouter sends the /v1 API (and its un-prefixed and
extra-prefixed forms) to the gateway's lean ASGI app and every other path to Django.
WebSockets: the gateway's first (Responses over WebSocket at the /v1/responses paths,
gateway.websocket: API clients send a key, no Origin and no cookie, so these get no browser
guards), then ``/ws/portal/live/``, the portal's live usage events (portal.live), behind the
session login (AuthMiddlewareStack) and the Origin check (AllowedHostsOriginValidator).
Importing this module also applies the process tuning that needs no launcher
(``portal.tuning``), so a plain daphne is only without uvloop.
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()  # sets Django up before the gateway is imported

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import path, re_path  # noqa: E402

from gateway.urls import (  # noqa: E402
    ExactPathRouter,
    gateway_paths,
    gateway_patterns,
    gateway_websocket_patterns,
)
from portal import tuning  # noqa: E402
from portal.infra.shutdown import drain_on_shutdown  # noqa: E402
from portal.live import LiveConsumer  # noqa: E402

application = ProtocolTypeRouter({
    # The API's endpoint paths skip the pattern list (same routes: gateway.urls)
    "http": ExactPathRouter([*gateway_patterns(), re_path(r"", django_asgi_app)],
                            exact=gateway_paths()),
    "websocket": URLRouter([
        *gateway_websocket_patterns(),
        re_path(r"", AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter([
            path("ws/portal/live/", LiveConsumer.as_asgi()),
        ])))),
    ]),
})

drain_on_shutdown()  # under daphne: /readyz turns 503 as soon as shutdown begins
tuning.apply()  # last: the heap it freezes is the loaded application
