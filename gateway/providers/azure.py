"""``azure``: Azure OpenAI's v1 API (base URL ``https://RESOURCE.openai.azure.com/openai/v1``).
OpenAI-compatible, Chat Completions and Responses relayed as they are; the credential goes
in an ``api-key`` header instead of ``Authorization``.

The worked example of the provider contract (README, "Architecture"): a kind that differs
from ``openai`` only in what it declares and in ``auth_headers``."""

from __future__ import annotations

from gateway.providers.protocols import CHAT, RESPONSES
from gateway.providers.provider import Provider


class Azure(Provider):
    kind = "azure"
    # No native /responses/compact: Turnpike compacts for it.
    speaks = {"chat": CHAT, "responses": RESPONSES, "compact": RESPONSES}

    def auth_headers(self, secret: str) -> dict[str, str]:
        return {"api-key": secret}
