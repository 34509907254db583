"""``openai-responses``: a Codex-style backend that speaks only streaming /responses and
compacts natively. Its requests get the Codex fixes (``gateway.translate.codex``) and its
output the XML tool-text clean-up, so it is always translated unless the client asks for raw
mode (``X-Codex-Mode: raw``)."""

from __future__ import annotations

from typing import Any

from gateway.providers.protocols import COMPACT, RESPONSES
from gateway.providers.provider import Provider
from gateway.translate import codex


class OpenAIResponses(Provider):
    kind = "openai-responses"
    speaks = {"chat": RESPONSES, "responses": RESPONSES, "compact": COMPACT}
    native_compaction = True
    relays_untouched = False
    always_streams = True
    clean_xml_tools = True

    def fix_request(self, body: dict[str, Any]) -> dict[str, Any]:
        return codex.fix_request(body)
