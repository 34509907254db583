"""Every upstream kind's provider, in one place: ``Upstream.kind`` -> its ``Provider``.

Adding a kind: write its module (see ``gateway/providers/provider.py`` for the contract and
``azure.py`` for an example), add it to ``PROVIDERS`` below and a choice to
``gateway.models.UpstreamKind``.
"""

from __future__ import annotations

from gateway.providers.anthropic import Anthropic
from gateway.providers.azure import Azure
from gateway.providers.ollama import Ollama
from gateway.providers.openai import OpenAI
from gateway.providers.openai_chat import OpenAIChat
from gateway.providers.openai_responses import OpenAIResponses
from gateway.providers.protocols import PROTOCOLS
from gateway.providers.provider import FORWARDED_HEADERS, Provider

PROVIDERS: dict[str, Provider] = {p.kind: p for p in (
    OpenAI(), OpenAIChat(), OpenAIResponses(), Anthropic(), Ollama(), Azure())}

# Path under the upstream's base URL for each upstream protocol.
PATHS = {name: protocol.path for name, protocol in PROTOCOLS.items()}

__all__ = ["FORWARDED_HEADERS", "PATHS", "PROVIDERS", "get"]


def get(kind: str) -> Provider:
    """The provider of an upstream kind (KeyError for a kind nothing registered)."""
    return PROVIDERS[kind]
