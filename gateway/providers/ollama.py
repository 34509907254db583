"""``ollama``: Ollama's native /api/chat (NDJSON streams), every operation translated. The
base URL is the server root; a credential is optional (sent as a Bearer token when set, for
Ollama behind an authenticating proxy)."""

from __future__ import annotations

from gateway.providers.protocols import OLLAMA
from gateway.providers.provider import Provider


class Ollama(Provider):
    kind = "ollama"
    speaks = {"chat": OLLAMA, "responses": OLLAMA, "compact": OLLAMA}
    server_root = True
    needs_secret = False
    forwards_client_headers = False
    probe_path = "/api/tags"
