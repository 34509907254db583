"""Where and how to call an upstream, by kind: URL, auth headers, forwarded headers."""

from __future__ import annotations

from gateway.routing import Route

# Path under the upstream's base URL for each upstream protocol.
PATHS = {
    "chat": "/chat/completions",
    "responses": "/responses",
    "compact": "/responses/compact",
    "anthropic": "/v1/messages",
    "ollama": "/api/chat",
}
ANTHROPIC_VERSION = "2023-06-01"

# Client headers worth passing to OpenAI-protocol upstreams: they change what an OpenAI or
# Codex-style backend does (Codex sends originator, session ids and its user agent).
FORWARDED_HEADERS = (
    b"openai-beta",
    b"session_id",
    b"session-id",
    b"conversation_id",
    b"originator",
    b"x-client-request-id",
    b"user-agent",
)


def target(route: Route, protocol: str, stream: bool,
           client_headers: dict[bytes, bytes]) -> tuple[str, dict[str, str]]:
    """(URL, headers) for one upstream call in ``protocol``."""
    url = route.upstream.base_url + PATHS[protocol]
    headers = {"Content-Type": "application/json",
               "Accept": "text/event-stream" if stream else "application/json"}
    secret = route.credential.secret if route.credential else None
    if protocol == "anthropic":
        headers["anthropic-version"] = ANTHROPIC_VERSION
        if secret:
            headers["x-api-key"] = secret
        return url, headers
    if secret:
        headers["Authorization"] = "Bearer " + secret
    if protocol != "ollama":
        for name in FORWARDED_HEADERS:
            value = client_headers.get(name)
            if value is not None:
                headers[name.decode()] = value.decode("latin-1")
    return url, headers
