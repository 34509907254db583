"""OpenAI-protocol upstreams (kinds ``openai`` and ``openai-responses``): same-protocol relay."""

from __future__ import annotations

from gateway.routing import Route

PATHS = {
    "chat": "/chat/completions",
    "responses": "/responses",
    "compact": "/responses/compact",
}

# Client headers worth passing on: they change what an OpenAI or Codex-style backend does.
FORWARDED_HEADERS = (
    b"openai-beta",
    b"session_id",
    b"session-id",
    b"conversation_id",
    b"originator",
    b"x-client-request-id",
    b"user-agent",
)


def build_request(
    route: Route, operation: str, stream: bool, client_headers: dict[bytes, bytes]
) -> tuple[str, dict[str, str]]:
    url = route.upstream.base_url + PATHS[operation]
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream" if stream else "application/json",
    }
    if route.credential is not None:
        headers["Authorization"] = "Bearer " + route.credential.secret
    for name in FORWARDED_HEADERS:
        value = client_headers.get(name)
        if value is not None:
            headers[name.decode()] = value.decode("latin-1")
    return url, headers
