"""Protocol translation through one canonical form.

    client body ──parse──> CanonicalRequest ──build──> upstream body
    upstream JSON/SSE ──decode──> canonical events ──encode──> client JSON/SSE

``canonical.py`` defines the request and the events; ``chat.py`` and ``responses.py`` parse
client requests and encode client answers (both directions of the OpenAI protocols, as
they can also be upstreams); ``anthropic.py`` and ``ollama.py`` build upstream requests and
decode upstream answers. Everything here is pure: no I/O, no Django.
"""
