"""Credentials out of captured bodies and headers, before they are stored anywhere.

Pure and best effort: a captured body is text a person reads while debugging, so anything
that looks like a credential becomes ``[redacted]``:

- the key the request presented, wherever it appears (exact match);
- Turnpike keys (``sk-tp-…``) and access tokens (``tp_pat_…``), upstream keys (``sk-…``,
  ``sk-proj-…``, ``sk-ant-…``), AWS access key ids, Google API keys, GitHub and Slack
  tokens, JSON Web Tokens, ``Bearer`` credentials;
- the string value of any JSON field named like a credential (``api_key``, ``apiKey``,
  ``authorization``, ``password``, ``secret``, ``client_secret``, ``access_token``,
  ``token``, ``cookie``, ``credential``, ``private_key``…), also in JSON carried inside a
  JSON string (a tool call's ``arguments``), and such parameters in a URL or form body
  (``?api_key=…``).

Headers: the ones that carry credentials (``Authorization``, ``api-key``, ``x-api-key``,
``cookie``, and any whose name says key, token, secret, password or auth) are dropped; the
rest keep their value, redacted like a body.

Nothing here can know every secret format; what it cannot recognise is kept, which is why
capture is off by default, ends by itself and is deleted after a short retention.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable

REDACTED = "[redacted]"

# Request headers never kept, whatever their value.
DROPPED_HEADERS = frozenset({
    "authorization", "proxy-authorization", "api-key", "x-api-key", "cookie", "set-cookie",
    "x-goog-api-key", "x-amz-security-token",
})
# Any other header whose name says it carries a credential.
_SECRET_HEADER = re.compile(r"key|token|secret|passw|auth|cookie|credential|signature", re.I)

# A field whose name (lower-cased) contains one of these words, and matches
# ``_SECRET_NAME``, holds a credential: a JSON key with a string value, or a URL or form
# parameter. Found with str.find and checked in place: one regex of names tried at every
# character cost ten times as much.
_NAME_WORDS = ("key", "secret", "passw", "pwd", "token", "authorization", "cookie",
               "credential")
_SECRET_NAME = re.compile(r"api[_\-]?key|apikey|access[_\-]?key|private[_\-]?key|secret"
                          r"|passw(?:or)?d|pwd|token|authorization|cookie|credential")
_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "_.-")
_LONGEST_NAME = 100
_JSON_COLON = re.compile(r'(\\?)"\s*:\s*')
_JSON_VALUE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_ESCAPED_VALUE = re.compile(r'\\"(?:[^"\\]|\\[^"])*\\"')  # \"…\" inside a JSON string
_PARAM_VALUE = re.compile(r"[^&\s\"'<>]+")
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)

# Keys and tokens by their shape (each alternative starts with a literal, so the regex
# engine skips ahead to the few places one could begin).
_SHAPES = re.compile(
    r"sk-(?<![A-Za-z0-9_]sk-)[A-Za-z0-9_\-]{16,}"  # OpenAI, Anthropic, Turnpike keys
    r"|tp_pat_[A-Za-z0-9]{16,}"  # Turnpike access tokens
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key ids
    r"|AIza[0-9A-Za-z_\-]{35}"  # Google API keys
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}"  # GitHub tokens
    r"|xox[abprs]-[A-Za-z0-9\-]{10,}"  # Slack tokens
    r"|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}")  # JSON Web Tokens
# A bearer credential (16 characters at least: "Bearer bonds" in prose is no token).
_BEARER = re.compile(r"((?i:bearer)\s+)[A-Za-z0-9._~+/\-]{16,}=*")


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every credential it shows replaced by ``[redacted]``; ``secrets``:
    exact strings to replace too (the key the request presented)."""
    for secret in secrets:
        if secret and len(secret) >= 8:  # never a stray short word
            text = text.replace(secret, REDACTED)
    lowered = text.lower()
    if len(lowered) != len(text):  # a character whose lower case is longer (İ)
        lowered = text.translate(_ASCII_LOWER)
    spans = _named_values(text, lowered)
    if spans:
        parts: list[str] = []
        at = 0
        for start, end, replacement in spans:
            parts += (text[at:start], replacement)
            at = end
        parts.append(text[at:])
        text = "".join(parts)
    text = _SHAPES.sub(REDACTED, text)
    if "bearer" in lowered:
        text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def _named_values(text: str, lowered: str) -> list[tuple[int, int, str]]:
    """(start, end, replacement) of each value of a field named like a credential, in
    order, not overlapping."""
    found: dict[int, tuple[int, int, str]] = {}
    for word in _NAME_WORDS:
        at = lowered.find(word)
        while at != -1:
            span = _value_of(text, lowered, at, at + len(word))
            if span is not None:
                found[span[0]] = span
            at = lowered.find(word, at + len(word))
    spans, end = [], 0
    for span in sorted(found.values()):
        if span[0] >= end:
            spans.append(span)
            end = span[1]
    return spans


def _value_of(text: str, lowered: str, at: int, end: int) -> tuple[int, int, str] | None:
    """The value of the field whose name holds ``lowered[at:end]``, if it is a JSON key
    (plain, or escaped inside a JSON string) or a URL parameter named like a credential."""
    start = at
    while start > 0 and at - start < _LONGEST_NAME and text[start - 1] in _NAME_CHARS:
        start -= 1
    while end < len(text) and end - at < _LONGEST_NAME and text[end] in _NAME_CHARS:
        end += 1
    if not _SECRET_NAME.search(lowered, start, end):
        return None
    before = text[start - 1] if start else ""
    if before == '"':
        colon = _JSON_COLON.match(text, end)
        if colon is None:
            return None
        escaped = bool(colon.group(1))
        if escaped != (start >= 2 and text[start - 2] == "\\"):
            return None
        quote = '\\"' if escaped else '"'
        value = (_ESCAPED_VALUE if escaped else _JSON_VALUE).match(text, colon.end())
        if value is not None:
            return value.start(), value.end(), f"{quote}{REDACTED}{quote}"
        if text.startswith(quote, colon.end()):  # a string cut off by the size cap
            return colon.end(), len(text), quote + REDACTED
        return None  # not a string: a number, an object
    if before in ("?", "&") and text.startswith("=", end):
        param = _PARAM_VALUE.match(text, end + 1)
        return (end + 1, param.end(), REDACTED) if param is not None else None
    return None


def safe_headers(headers: Iterable[tuple[str, str]],
                 secrets: Iterable[str] = ()) -> dict[str, str]:
    """The headers worth keeping for debugging: those that carry credentials dropped, the
    others' values redacted. Names in lower case."""
    kept = {name.lower(): value for name, value in headers}
    kept = {name: value for name, value in kept.items()
            if name not in DROPPED_HEADERS and not _SECRET_HEADER.search(name)}
    # Redacted in one pass, one value a line: a header value holds no line break (HTTP
    # forbids it; the server would have refused the request).
    values = redact_text("\n".join(kept.values()), secrets).split("\n")
    if len(values) != len(kept):  # a line break after all: one by one
        values = [redact_text(value, secrets) for value in kept.values()]
    return dict(zip(kept, values, strict=True))
