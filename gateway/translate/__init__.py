"""Protocol translation through one canonical form.

    client body ──parse──> CanonicalRequest ──build──> upstream body
    upstream JSON/SSE ──decode──> canonical events ──encode──> client JSON/SSE

``canonical.py`` defines the request and the events; ``chat/`` and ``responses/`` parse
client requests and encode client answers, and build and decode too (the OpenAI protocols
can also be upstreams); ``anthropic/`` and ``ollama.py`` build upstream requests and
decode upstream answers. The packages keep one module per arrow above (``parse``,
``build``, ``decode``, ``encode``) and re-export their public names. Everything here is
pure: no I/O, no Django.
"""
