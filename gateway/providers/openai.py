"""``openai``: OpenAI itself. Speaks every client operation natively, so both protocols and
compaction are relayed byte for byte; keeps the responses it serves, so a
``previous_response_id`` it made goes back to it as is."""

from __future__ import annotations

from gateway.providers.protocols import CHAT, COMPACT, RESPONSES
from gateway.providers.provider import Provider


class OpenAI(Provider):
    kind = "openai"
    speaks = {"chat": CHAT, "responses": RESPONSES, "compact": COMPACT}
    native_compaction = True
    stores_responses = True
