"""``anthropic``: the Anthropic Messages API, every operation translated. The base URL is the
server root (``/v1/messages`` carries its version); the credential goes in ``x-api-key``."""

from __future__ import annotations

from gateway.providers.protocols import ANTHROPIC
from gateway.providers.provider import Provider

ANTHROPIC_VERSION = "2023-06-01"


class Anthropic(Provider):
    kind = "anthropic"
    speaks = {"chat": ANTHROPIC, "responses": ANTHROPIC, "compact": ANTHROPIC}
    server_root = True
    forwards_client_headers = False
    fixed_headers = {"anthropic-version": ANTHROPIC_VERSION}
    probe_path = "/v1/models"

    def auth_headers(self, secret: str) -> dict[str, str]:
        return {"x-api-key": secret}
