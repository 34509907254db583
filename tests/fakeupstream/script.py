"""Directives: what one request asks the fake to do, and how it is parsed.

Directives come from headers ``x-fake-<name>: <value>`` (``-`` and ``_`` are interchangeable in
the name) and from ``[[fake name=value ...]]`` tokens anywhere in the raw request body. Tokens
override headers; with several tokens, later ones in the body win. Values cannot contain
whitespace or ``]``. Unknown names or bad values answer 400.

=================  ========================================================================
chunks=N           number of text deltas, default 3; chunk i is ``f"tok{i} "`` (max 100000)
echo=1             reply with the last user message's text (token removed, stripped), split
                   into ``chunks`` near-equal pieces
delay=S            seconds between streamed frames (events / chunks / lines)
hold=S             seconds to wait before sending status and headers (errors from status=
                   included; 401s for a bad key are not held)
status=CODE        answer this 4xx/5xx with the protocol's error body,
                   message ``fake upstream error CODE``
retry_after=S      with ``status``: add ``Retry-After: S``
cut=K              streams only: stop after the K-th content frame, before any terminal event
                   (with K >= the number of content frames, everything but the terminal events
                   is sent)
cut_mode=M         ``abort`` (default): drop the TCP connection mid-body; ``clean``: end the
                   body normally without the terminal events
tool=NAME          reply with a function call to NAME instead of text (``tool=`` with no
                   name turns it off again, e.g. from a later tool result in the history)
tools=N            N parallel calls named NAME, NAME_1, ... (default 1)
args=JSON          call arguments, a JSON object without spaces (default ``{"city":"Paris"}``);
                   each call's argument string is streamed in max(2, chunks) pieces
reasoning=1        add reasoning: Responses reasoning item (summary "thinking about it",
                   encrypted_content "enc_fake"), chat ``reasoning_content`` deltas, Anthropic
                   thinking block (signature "sig_fake"), Ollama ``message.thinking``
finish=length      truncated ending: chat ``length``, Responses ``incomplete``
                   (max_output_tokens), Anthropic ``max_tokens``, Ollama ``length``
usage=0            omit usage entirely
cached=N           cached input tokens (chat/Responses cached_tokens, Anthropic
                   cache_read_input_tokens)
reasoning_tokens=N reasoning_tokens in the output details (not added to output tokens)
json=1             answer with JSON even when a stream was requested
=================  ========================================================================
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

MAX_CHUNKS = 100_000
DEFAULT_TOOL_ARGS = '{"city":"Paris"}'

TOKEN_RE = re.compile(rb"\[\[fake(?:\s([^\]]*))?\]\]")
TOKEN_TEXT_RE = re.compile(r"\[\[fake(?:\s[^\]]*)?\]\]")
_TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class DirectiveError(ValueError):
    """A directive name or value the fake does not understand (answered with 400)."""


@dataclass(slots=True)
class Script:
    """What one request asked the fake to do; defaults give a plain 3-chunk text reply."""

    chunks: int = 3
    echo: bool = False
    delay: float = 0.0
    hold: float = 0.0
    status: int = 0
    retry_after: str | None = None
    cut: int | None = None
    cut_mode: str = "abort"
    tool: str | None = None
    tools: int = 1
    args: str = DEFAULT_TOOL_ARGS
    reasoning: bool = False
    finish: str = "stop"
    usage: bool = True
    cached: int = 0
    reasoning_tokens: int = 0
    force_json: bool = False


def _number(cast: Callable[[str], Any], low: float, high: float) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        number = cast(value)
        if not low <= number <= high:
            raise ValueError(value)
        return number

    return parse


_count = _number(int, 0, sys.maxsize)
_seconds = _number(float, 0, 86_400)


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _retry_after(value: str) -> str:
    _seconds(value)
    return value


def _tool_name(value: str) -> str | None:
    # An empty value switches a tool call asked for earlier in the history back to text, so a
    # tool round trip can end: put "[[fake tool=]]" in the tool result.
    if not value:
        return None
    if not _TOOL_NAME_RE.match(value):
        raise ValueError(value)
    return value


def _tool_args(value: str) -> str:
    parsed = orjson.loads(value)
    if not isinstance(parsed, dict):
        raise ValueError(value)
    # Re-serialise compactly so every protocol streams the very same argument string.
    return orjson.dumps(parsed).decode()


def _one_of(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in allowed:
            raise ValueError(value)
        return value

    return parse


_DIRECTIVES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "chunks": ("chunks", _number(int, 0, MAX_CHUNKS)),
    "echo": ("echo", _flag),
    "delay": ("delay", _seconds),
    "hold": ("hold", _seconds),
    "status": ("status", _number(int, 400, 599)),
    "retry_after": ("retry_after", _retry_after),
    "cut": ("cut", _count),
    "cut_mode": ("cut_mode", _one_of("abort", "clean")),
    "tool": ("tool", _tool_name),
    "tools": ("tools", _number(int, 1, 128)),
    "args": ("args", _tool_args),
    "reasoning": ("reasoning", _flag),
    "finish": ("finish", _one_of("stop", "length")),
    "usage": ("usage", _flag),
    "cached": ("cached", _count),
    "reasoning_tokens": ("reasoning_tokens", _count),
    "json": ("force_json", _flag),
}


def _token_pairs(raw_token: bytes) -> list[tuple[str, str]]:
    # The token sits inside a JSON string, so quotes in args= arrive escaped (\"): unescape it.
    try:
        text = orjson.loads(b'"' + raw_token + b'"')
    except orjson.JSONDecodeError:
        text = raw_token.decode("utf-8", "replace")
    pairs = []
    for word in text.split():
        name, sep, value = word.partition("=")
        if not sep:
            raise DirectiveError(f"fake directive {word!r} is not name=value")
        pairs.append((name, value))
    return pairs


def parse_script(headers: Mapping[str, str], raw_body: bytes) -> Script:
    """Collect directives from x-fake-* headers, then [[fake ...]] tokens in the body."""
    pairs = [
        (key[7:], value) for key, value in headers.items() if key.lower().startswith("x-fake-")
    ]
    if b"[[fake" in raw_body:
        for match in TOKEN_RE.finditer(raw_body):
            if match.group(1):
                pairs.extend(_token_pairs(match.group(1)))
    script = Script()
    for name, value in pairs:
        key = name.strip().lower().replace("-", "_")
        if key not in _DIRECTIVES:
            raise DirectiveError(f"unknown fake directive {name!r}")
        attr, parse = _DIRECTIVES[key]
        try:
            setattr(script, attr, parse(value.strip()))
        except (ValueError, orjson.JSONDecodeError) as exc:
            raise DirectiveError(f"invalid fake directive {name}={value}") from exc
    return script

