"""What a client may send, checked before anything is reserved: field types and ranges,
how deep the JSON nests, and the header values Turnpike forwards upstream.

Every rule is here, so that one place answers "what does Turnpike accept". Each failure is
a 400 ``invalid_request_error`` whose ``param`` names the field (``reasoning.effort``) or
header (``header:user-agent``) and whose message says what is allowed.

Why the gateway checks at all, when upstreams validate too: the limiter reserves money and
tokens from these numbers before any upstream sees them (``{"max_tokens": -1000000000}``
once locked a whole tenant), translation iterates these fields (``"include": 5`` was a
500), and a forwarded header with a control byte made aiohttp raise.

Cost on the hot path: one dict lookup per top-level field the client sent (the rules are
keyed by field name; fields without a rule are not looked at), plus, only for fields that
are themselves small lists or objects (``include``, ``stop``, ``metadata``,
``logit_bias``), one type check per element. Message and item lists are not walked here:
the translators iterate them anyway and raise ``TranslationError`` (a 400) for a bad
element; a passthrough upstream judges them itself. The depth check is a C-speed byte count
for ordinary bodies, and an orjson serialisation only for bodies that could be deep.
Measured (fields + depth, one core): ~1.5 us for a small chat body, ~5 us for a 2 KB
Codex-style body, ~60 us for a 42 KB one (whose orjson.loads alone takes ~220 us); the
header check ~1 us.

A JSON ``null`` is treated as an absent field everywhere (the OpenAI SDKs send nulls for
unset optional fields).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from gateway.errors import InvalidRequest

# --- limits ---------------------------------------------------------------------------------

# The largest output cap a request may ask for. Upstreams parse these as 32-bit integers;
# no model produces anywhere near this many tokens, so a larger value can only be a mistake
# or an attack on the reservation arithmetic.
MAX_TOKENS_CAP = 2**31 - 1
MAX_N = 128  # OpenAI's bound on chat choices
MAX_TOP_LOGPROBS = 20
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# How deep a request body may nest (the body object itself is level 1). orjson parses up to
# 1,024 levels but serialises at most 254; Turnpike re-serialises client values one or two
# levels deeper than they arrived (echoed into response objects, wrapped into upstream
# bodies and SSE events), so a body is held well below that. Real requests nest a few
# levels, JSON schemas in tool definitions a few dozen at most.
MAX_DEPTH = 128
_ORJSON_MAX_DEPTH = 254  # orjson.dumps raises "Recursion limit reached" beyond this


class Invalid(InvalidRequest):
    """A client field or header outside what Turnpike accepts."""


# --- what a value looks like in a message ---------------------------------------------------

_KINDS: dict[type, str] = {dict: "an object", list: "a list", str: "a string",
                           bool: "a boolean", type(None): "null"}


def _shown(value: Any) -> str:
    """A short description of what the client sent, for the error message."""
    kind = type(value)
    if kind is bool:
        return "true" if value else "false"
    if kind in (int, float):
        text = repr(value)
        return text if len(text) <= 24 else text[:21] + "..."
    return _KINDS.get(kind, kind.__name__)


def _fail(param: str, wanted: str, value: Any) -> Invalid:
    return Invalid(f"'{param}' must be {wanted}; got {_shown(value)}.", param=param)


# --- rules ----------------------------------------------------------------------------------

Rule = Callable[[str, Any], None]  # (param path, value) -> raises Invalid


def integer(low: int, high: int) -> Rule:
    """An integer (not a boolean, not 1.0) in [low, high]."""
    wanted = f"an integer from {low} to {high}"

    def check(param: str, value: Any) -> None:
        if type(value) is not int or not low <= value <= high:
            raise _fail(param, wanted, value)

    return check


def number(low: float, high: float) -> Rule:
    """An integer or a float (not a boolean) in [low, high]. JSON cannot carry NaN or
    infinity, and orjson refuses literals that overflow a double, so the range check is
    all that finite-ness needs; huge integers (10**30) arrive as floats and fail it."""
    wanted = f"a number from {low:g} to {high:g}"

    def check(param: str, value: Any) -> None:
        if type(value) not in (int, float) or not low <= value <= high:
            raise _fail(param, wanted, value)

    return check


def boolean(param: str, value: Any) -> None:
    if type(value) is not bool:
        raise _fail(param, "true or false", value)


def string(param: str, value: Any) -> None:
    if type(value) is not str:
        raise _fail(param, "a string", value)


def a_list(param: str, value: Any) -> None:
    if type(value) is not list:
        raise _fail(param, "a list", value)


def list_of_strings(param: str, value: Any) -> None:
    if type(value) is not list or any(type(v) is not str for v in value):
        raise _fail(param, "a list of strings", value)


def string_or_list(param: str, value: Any) -> None:
    if type(value) not in (str, list):
        raise _fail(param, "a string or a list", value)


def string_or_object(param: str, value: Any) -> None:
    if type(value) not in (str, dict):
        raise _fail(param, "a string or an object", value)


def string_or_list_of_strings(param: str, value: Any) -> None:
    if type(value) is not str:
        list_of_strings(param, value)


def obj(fields: Mapping[str, Rule] | None = None) -> Rule:
    """An object; the listed fields inside it, when present and not null, obey their rules
    (their param is ``outer.inner``). Other fields are left to the upstream."""
    inner = dict(fields or {})

    def check(param: str, value: Any) -> None:
        if type(value) is not dict:
            raise _fail(param, "an object", value)
        for name, rule in inner.items():
            item = value.get(name)
            if item is not None:
                rule(f"{param}.{name}", item)

    return check


def string_map(param: str, value: Any) -> None:
    """``metadata``: an object whose values are strings (OpenAI's shape)."""
    if type(value) is not dict:
        raise _fail(param, "an object of strings", value)
    for name, item in value.items():
        if type(item) is not str:
            raise _fail(f"{param}.{name}", "a string", item)


def logit_bias(param: str, value: Any) -> None:
    """Token id -> bias from -100 to 100."""
    if type(value) is not dict:
        raise _fail(param, "an object mapping token ids to numbers", value)
    for name, item in value.items():
        if type(item) not in (int, float) or not -100 <= item <= 100:
            raise _fail(f"{param}.{name}", "a number from -100 to 100", item)


# --- the tables -----------------------------------------------------------------------------

_TOKEN_CAP = integer(1, MAX_TOKENS_CAP)

# Every endpoint: the limiter reserves from the largest of these, whichever endpoint they
# were sent to (gateway.policy.requested_max_tokens).
COMMON: dict[str, Rule] = {
    "max_tokens": _TOKEN_CAP,
    "max_output_tokens": _TOKEN_CAP,
    "max_completion_tokens": _TOKEN_CAP,
}

# Fields both generation protocols share, with the same meaning.
_SHARED: dict[str, Rule] = {
    **COMMON,
    "temperature": number(0, 2),
    "top_p": number(0, 1),
    "top_logprobs": integer(0, MAX_TOP_LOGPROBS),
    "user": string,
    "safety_identifier": string,
    "metadata": string_map,
    "store": boolean,
    "parallel_tool_calls": boolean,
    "prompt_cache_key": string,
    "service_tier": string,
    "tools": a_list,
    "tool_choice": string_or_object,
}

RESPONSES: dict[str, Rule] = {
    **_SHARED,
    "input": string_or_list,
    "instructions": string,
    "include": list_of_strings,
    "previous_response_id": string,
    "session_id": string,  # Turnpike's alias of prompt_cache_key
    "reasoning": obj({"effort": string, "summary": string, "generate_summary": string}),
    "text": obj({"format": obj({"type": string}), "verbosity": string}),
    "truncation": string,
    "background": boolean,
    "max_tool_calls": integer(1, MAX_TOKENS_CAP),
    "stream_options": obj({"include_obfuscation": boolean}),
}

CHAT: dict[str, Rule] = {
    **_SHARED,
    "messages": a_list,
    "n": integer(1, MAX_N),
    "presence_penalty": number(-2, 2),
    "frequency_penalty": number(-2, 2),
    "logprobs": boolean,
    "seed": integer(INT64_MIN, INT64_MAX),
    "stop": string_or_list_of_strings,
    "logit_bias": logit_bias,
    "response_format": obj({"type": string}),
    "stream_options": obj({"include_usage": boolean, "include_obfuscation": boolean}),
    "reasoning_effort": string,
    "verbosity": string,
    "modalities": list_of_strings,
    "functions": a_list,
    "function_call": string_or_object,
}

RULES: dict[str, dict[str, Rule]] = {
    "responses": RESPONSES,
    "compact": RESPONSES,  # a subset of the fields; the same names mean the same things
    "chat": CHAT,
}


def check_fields(operation: str, payload: dict[str, Any]) -> None:
    """Raise ``Invalid`` for the first field of ``payload`` that breaks its rule."""
    rules = RULES[operation]
    for name, value in payload.items():
        rule = rules.get(name)
        if rule is not None and value is not None:
            rule(name, value)


# --- depth ----------------------------------------------------------------------------------

_probe = threading.local()


def _probe_chain() -> tuple[list[Any], list[Any]]:
    """(outer, innermost) of a chain of nested one-element lists, one per thread, so that
    serialising ``outer`` with a body in ``innermost`` fails exactly when the body nests
    deeper than MAX_DEPTH."""
    chain = getattr(_probe, "chain", None)
    if chain is None:
        outer: list[Any] = [None]
        inner = outer
        for _ in range(_ORJSON_MAX_DEPTH - MAX_DEPTH - 1):
            nxt: list[Any] = [None]
            inner[0] = nxt
            inner = nxt
        chain = _probe.chain = (outer, inner)
    return chain


def check_depth(body: bytes, payload: Any) -> None:
    """Refuse a body nested deeper than MAX_DEPTH.

    A body cannot nest deeper than it has ``{`` and ``[`` bytes, so a byte count (C speed)
    clears ordinary bodies. Bodies with more brackets get the exact answer from orjson
    itself (also C speed, and cheaper than the count for large bodies, which is why bodies
    over 4 KiB skip the count): serialise the body inside a chain of lists so that the
    whole nests past orjson's limit exactly when the body is over ours."""
    if len(body) <= 4096 and body.count(b"{") + body.count(b"[") <= MAX_DEPTH:
        return
    if _nests_too_deep(payload):
        # Only now, on the way to a 400: name the top-level field that is too deep.
        param = next((name for name, value in payload.items()
                      if _nests_too_deep({name: value})), None) \
            if isinstance(payload, dict) else None
        raise Invalid(f"The request body nests JSON more than {MAX_DEPTH} levels deep"
                      + (f" (in '{param}')" if param else "") + "; Turnpike accepts "
                      f"at most {MAX_DEPTH}.", param=param)


def _nests_too_deep(value: Any) -> bool:
    outer, inner = _probe_chain()
    inner[0] = value
    try:
        orjson.dumps(outer)
    except orjson.JSONEncodeError:
        return True
    finally:
        inner[0] = None
    return False


# --- headers --------------------------------------------------------------------------------

# Control bytes other than tab: aiohttp refuses to send them ("Forbidden control
# character"), and CR/LF in a forwarded value would be header injection.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_CONTROL_TEXT = re.compile("[\x00-\x08\x0a-\x1f\x7f]")


def check_headers(headers: Mapping[bytes, bytes], names: tuple[bytes, ...]) -> None:
    """Refuse a request whose header ``names`` (the ones forwarded upstream) carry a control
    byte: a 400 naming the header is clearer than dropping it silently."""
    for name in names:
        value = headers.get(name)
        if value is not None and _CONTROL.search(value) is not None:
            header = name.decode("latin-1")
            raise Invalid(f"The {header} header contains a control character; header "
                          "values may hold printable characters and tabs only.",
                          param=f"header:{header}")


def printable(text: str) -> str:
    """``text`` without control characters, for values Turnpike stores (a NUL cannot go
    into a PostgreSQL text column: one such row would fail its whole usage batch)."""
    if _CONTROL_TEXT.search(text) is None:
        return text
    return _CONTROL_TEXT.sub("\N{REPLACEMENT CHARACTER}", text)
