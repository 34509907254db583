"""``openai-chat``: an OpenAI-compatible server that speaks only /chat/completions (vLLM,
llama.cpp, most compatible servers). Chat is relayed; Responses is translated to Chat."""

from __future__ import annotations

from gateway.providers.protocols import CHAT
from gateway.providers.provider import Provider


class OpenAIChat(Provider):
    kind = "openai-chat"
    speaks = {"chat": CHAT, "responses": CHAT, "compact": CHAT}
