"""The provider contract: one object per upstream kind (``Upstream.kind``), in its own module
under ``gateway/providers/``, registered in ``gateway/providers/registry.py``.

A provider says, and nothing else in the gateway decides by kind:

    kind                      the ``Upstream.kind`` value it serves (a choice of
                              ``gateway.models.UpstreamKind``)
    speaks                    the wire protocol (``gateway.providers.protocols``) it is called
                              in for each client operation: chat, responses, compact
    url(), headers()          where a call goes and its headers: auth (``auth_headers``),
                              fixed ones (``fixed_headers``), the client's forwarded ones
    server_root               whether its base URL is the server root (its paths carry their
                              own version, ``/v1/messages``) rather than ``…/v1``
    needs_secret              whether a credential must have a secret (Ollama: no)
    native_compaction         /responses/compact is its own (else Turnpike compacts)
    stores_responses          it keeps the responses it serves (unless asked store: false),
                              so a previous_response_id it made is passed through to it
                              (``gateway.stored.chain``); else Turnpike expands the chain
    relays_untouched          when it speaks the client's protocol, the client's bytes go up
                              and its events come back byte for byte (passthrough); False for
                              backends whose requests need fixing (Codex-style)
    always_streams            it answers only streams (a non-stream client gets them
                              aggregated)
    fix_request(), clean_xml_tools
                              its request fixes and the XML tool-text clean-up of its output
                              (both off in raw mode)
    probe()                   its health check: a cheap authenticated GET

Request building and event decoding belong to the protocol it speaks (``WireProtocol.build``,
``decode_body``, ``stream_decoder``), shared by every provider speaking it.

Adding an upstream kind: a module with a ``Provider`` subclass, one line in
``registry.PROVIDERS``, one choice in ``UpstreamKind`` (and its migration). See
``gateway/providers/azure.py`` for the smallest example, an OpenAI-compatible kind with its
own auth header.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from gateway.providers.protocols import WireProtocol

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


class Provider:
    kind: ClassVar[str]
    speaks: ClassVar[Mapping[str, WireProtocol]]  # client operation -> upstream protocol
    server_root: ClassVar[bool] = False
    needs_secret: ClassVar[bool] = True
    native_compaction: ClassVar[bool] = False
    stores_responses: ClassVar[bool] = False
    relays_untouched: ClassVar[bool] = True
    always_streams: ClassVar[bool] = False
    clean_xml_tools: ClassVar[bool] = False  # clean <tool_use> text from its output
    forwards_client_headers: ClassVar[bool] = True  # FORWARDED_HEADERS
    fixed_headers: ClassVar[Mapping[str, str]] = {}
    probe_path: ClassVar[str] = "/models"

    # --- calling it ---------------------------------------------------------------------

    def protocol(self, operation: str) -> WireProtocol:
        return self.speaks[operation]

    def auth_headers(self, secret: str) -> dict[str, str]:
        """How a credential is presented (only called with a secret)."""
        return {"Authorization": "Bearer " + secret}

    def url(self, base_url: str, protocol: WireProtocol) -> str:
        return base_url + protocol.path

    def headers(self, secret: str | None, stream: bool,
                client_headers: Mapping[bytes, bytes]) -> dict[str, str]:
        """The headers of one call: JSON in, a stream or JSON out, the fixed ones, the
        credential, and the client's headers this kind takes."""
        headers = {"Content-Type": "application/json",
                   "Accept": "text/event-stream" if stream else "application/json",
                   **self.fixed_headers}
        if secret:
            headers.update(self.auth_headers(secret))
        if self.forwards_client_headers:
            for name in FORWARDED_HEADERS:
                value = client_headers.get(name)
                if value is not None:
                    headers[name.decode()] = value.decode("latin-1")
        return headers

    # --- what it needs done to requests and answers ---------------------------------------

    def fix_request(self, body: dict[str, Any]) -> dict[str, Any]:
        """This kind's fixes of a built request body (not applied in raw mode)."""
        return body

    # --- health -------------------------------------------------------------------------

    def probe(self, base_url: str, secret: str | None) -> tuple[str, dict[str, str]]:
        """(URL, headers) of the health probe: a cheap authenticated GET (its model list)."""
        headers = {**self.fixed_headers, **(self.auth_headers(secret) if secret else {})}
        return base_url + self.probe_path, headers
