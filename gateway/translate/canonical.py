"""The canonical request and stream events every protocol translates to and from.

The request keeps the meaning of a conversation (instructions, messages with text, image
and file parts, tool calls and their results, reasoning carried between turns, tools and
sampling settings) and nothing of any protocol's spelling. Items that only a Responses
upstream can use (``Opaque``: compaction items, web search calls …) ride along untouched
and are dropped, with a log line, by builders for other protocols.

Answers, streamed or not, are a sequence of ``Event``s. A decoder turns an upstream's
JSON body or SSE/NDJSON stream into events; an encoder turns events into the client's
protocol, as SSE frames or, at the end, one JSON object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.wire.usage import Usage

Role = Literal["system", "developer", "user", "assistant"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


# --- request ------------------------------------------------------------------------------

@dataclass(slots=True)
class Part:
    """One piece of message content.

    text:    ``text``
    image:   ``url`` (http(s) URL or ``data:image/...;base64,...``), ``detail``
    file:    ``file_data`` (``data:application/pdf;base64,...``) or ``file_id``, ``filename``
    refusal: ``text`` (assistant only)
    """

    type: Literal["text", "image", "file", "refusal"]
    text: str = ""
    url: str = ""
    detail: str | None = None
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


@dataclass(slots=True)
class Message:
    role: Role
    parts: list[Part]
    item_id: str | None = None  # the Responses item id, kept for echoing back

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if p.type == "text")


@dataclass(slots=True)
class ToolCall:
    """A call the assistant made earlier in the conversation."""

    call_id: str
    name: str
    arguments: str  # function: JSON text; custom: raw text input
    kind: Literal["function", "custom"] = "function"
    namespace: str | None = None
    item_id: str | None = None


@dataclass(slots=True)
class ToolResult:
    call_id: str
    output: str  # text; structured outputs are serialised to JSON text
    kind: Literal["function", "custom"] = "function"
    name: str | None = None  # when known (Anthropic does not need it; Ollama can use it)


@dataclass(slots=True)
class Reasoning:
    """Reasoning from an earlier turn, replayed by the client (Codex always does)."""

    summary: list[str] = field(default_factory=list)
    text: str | None = None  # raw reasoning text (open models), when the client sent it
    encrypted_content: str | None = None  # opaque; only meaningful to its issuer
    item_id: str | None = None
    signature: str | None = None  # Anthropic thinking signature, when known


@dataclass(slots=True)
class Opaque:
    """A Responses input item with no canonical meaning, passed through to Responses
    upstreams only (e.g. ``compaction``, ``web_search_call``)."""

    item: dict[str, Any]


Item = Message | ToolCall | ToolResult | Reasoning | Opaque


@dataclass(slots=True)
class Tool:
    """A tool the model may call.

    function: ``name``, ``description``, ``parameters`` (JSON schema), ``strict``
    custom:   ``name``, ``description``, ``format`` (Codex's freeform tools, e.g. apply_patch
              with a Lark grammar): upstreams without custom tools get a function taking
              one string parameter ``input`` instead, and its calls come back as custom
    other:    ``raw`` only (web_search, namespace, tool_search …): passed to Responses
              upstreams as-is, dropped elsewhere; ``namespace`` tools are flattened into
              their function tools by builders that cannot nest
    """

    kind: Literal["function", "custom", "other"]
    name: str = ""
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    format: dict[str, Any] | None = None
    raw: dict[str, Any] | None = None


ToolChoice = Literal["auto", "none", "required"] | dict[str, str] | None  # {"name": N}


@dataclass(slots=True)
class CanonicalRequest:
    model: str
    instructions: list[str] = field(default_factory=list)  # system/developer preamble
    items: list[Item] = field(default_factory=list)
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    reasoning_effort: str | None = None  # minimal | low | medium | high | xhigh
    reasoning_summary: str | None = None  # auto | concise | detailed
    response_format: dict[str, Any] | None = None
    # {"type": "json_schema", "name", "schema", "strict"} | {"type": "json_object"}
    verbosity: str | None = None
    stream: bool = False
    include_usage: bool = False  # chat clients: stream_options.include_usage
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    prompt_cache_key: str | None = None
    include: list[str] = field(default_factory=list)
    previous_response_id: str | None = None


# --- answer events ------------------------------------------------------------------------

@dataclass(slots=True)
class Start:
    """First event: the upstream's ids when it gave any."""

    response_id: str | None = None
    model: str | None = None
    created: int | None = None


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class RefusalDelta:
    text: str


@dataclass(slots=True)
class ReasoningDelta:
    text: str
    kind: Literal["summary", "raw"] = "summary"


@dataclass(slots=True)
class ReasoningDone:
    """Closes the current reasoning part; carries what the client must replay."""

    encrypted_content: str | None = None
    signature: str | None = None


@dataclass(slots=True)
class ToolCallStart:
    index: int  # 0, 1 … per response, in the order calls start
    call_id: str
    name: str
    kind: Literal["function", "custom"] = "function"
    namespace: str | None = None


@dataclass(slots=True)
class ToolCallDelta:
    index: int
    arguments: str


@dataclass(slots=True)
class OpaqueItem:
    """A complete Responses output item with no canonical meaning (compaction, web search
    call …): Responses clients get it as is; Chat clients never see it."""

    item: dict[str, Any]


@dataclass(slots=True)
class Finish:
    reason: FinishReason


@dataclass(slots=True)
class UsageReport:
    usage: Usage


@dataclass(slots=True)
class Failure:
    """The upstream reported an error in the middle of its answer."""

    code: str
    message: str


Event = (Start | TextDelta | RefusalDelta | ReasoningDelta | ReasoningDone | ToolCallStart
         | ToolCallDelta | OpaqueItem | Finish | UsageReport | Failure)


class TranslationError(ValueError):
    """The request cannot be expressed for this upstream (e.g. a PDF to a text-only
    model). The message is shown to the client with a 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


# --- shapes of client fields inside lists (checked where the parsers iterate them) --------
#
# ``gateway.validate`` checks top-level fields; the items of ``input``/``messages``/``tools``
# are checked here, while they are read anyway. A field of the wrong type is the client's
# error (a 400 naming the list it is in), never a crash further down: these values are
# hashed, matched with ``startswith`` and iterated by builders and the Codex fixes.


def opt_str(obj: dict[str, Any], key: str, param: str) -> str | None:
    """``obj[key]`` when it is a string, None when absent or null, else a client error."""
    value = obj.get(key)
    if value is None or type(value) is str:
        return value
    raise TranslationError(f"'{key}' in '{param}' must be a string.", param=param)


def opt_dict(obj: dict[str, Any], key: str, param: str) -> dict[str, Any]:
    """``obj[key]`` when it is an object, {} when absent or null, else a client error."""
    value = obj.get(key)
    if value is None:
        return {}
    if type(value) is dict:
        return value
    raise TranslationError(f"'{key}' in '{param}' must be an object.", param=param)


def opt_list(obj: dict[str, Any], key: str, param: str) -> list[Any]:
    """``obj[key]`` when it is a list, [] when absent or null, else a client error."""
    value = obj.get(key)
    if value is None:
        return []
    if type(value) is list:
        return value
    raise TranslationError(f"'{key}' in '{param}' must be a list.", param=param)


# --- reasoning carried through a client that only knows Responses items --------------------

_SEAL = "tpr1."


def seal_reasoning(text: str, signature: str | None) -> str:
    """Pack reasoning that a non-OpenAI upstream needs back next turn (Anthropic requires
    its signed thinking blocks to be replayed after tool use) into an opaque
    ``encrypted_content`` string that Responses clients replay verbatim."""
    import base64

    import orjson

    payload = orjson.dumps({"text": text, "signature": signature})
    return _SEAL + base64.urlsafe_b64encode(payload).decode()


def open_reasoning(token: str | None) -> tuple[str, str | None] | None:
    """(text, signature) from a token made by ``seal_reasoning``; None for anything else
    (e.g. OpenAI's own encrypted reasoning, which only OpenAI can read)."""
    import base64
    import binascii

    import orjson

    if not token or not token.startswith(_SEAL):
        return None
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token[len(_SEAL):]))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        return None
    signature = data.get("signature")
    return data["text"], signature if isinstance(signature, str) else None


# --- tools for upstreams that only know plain functions ----------------------------------

CUSTOM_INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"input": {"type": "string", "description": "The raw input for the tool."}},
    "required": ["input"],
}
NAMESPACE_SEPARATOR = "__"


@dataclass(slots=True)
class ToolMap:
    """How lowered tool names map back: flat name -> (kind, name, namespace)."""

    names: dict[str, tuple[str, str, str | None]] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)


def lower_tools(req: CanonicalRequest) -> ToolMap:
    """Rewrite ``req`` in place for an upstream that has only function tools.

    custom tools become functions taking one string ``input``; the functions inside a
    ``namespace`` tool become top-level functions named ``<namespace>__<name>``; tools with
    no function form (web_search, tool_search …) are dropped and named in the map. Earlier
    calls and results in the history are rewritten to match.
    """
    tool_map = ToolMap()
    lowered: list[Tool] = []
    for tool in req.tools:
        if tool.kind == "function":
            lowered.append(tool)
        elif tool.kind == "custom":
            lowered.append(Tool(kind="function", name=tool.name, description=tool.description,
                                parameters=CUSTOM_INPUT_SCHEMA))
            tool_map.names[tool.name] = ("custom", tool.name, None)
        elif tool.raw and tool.raw.get("type") == "namespace":
            namespace = str(tool.raw.get("name") or "")
            for inner in tool.raw.get("tools") or []:
                if not isinstance(inner, dict) or inner.get("type", "function") != "function":
                    continue
                flat = f"{namespace}{NAMESPACE_SEPARATOR}{inner.get('name')}"
                lowered.append(Tool(kind="function", name=flat,
                                    description=inner.get("description"),
                                    parameters=inner.get("parameters"),
                                    strict=inner.get("strict")))
                tool_map.names[flat] = ("function", str(inner.get("name")), namespace)
        else:
            tool_map.dropped.append(str((tool.raw or {}).get("type") or tool.name or "?"))
    req.tools = lowered
    for item in req.items:
        if isinstance(item, ToolCall):
            if item.kind == "custom":
                item.arguments = _dumps({"input": item.arguments})
                item.kind = "function"
            if item.namespace:
                item.name = f"{item.namespace}{NAMESPACE_SEPARATOR}{item.name}"
                item.namespace = None
        elif isinstance(item, ToolResult):
            item.kind = "function"
    return tool_map


def _dumps(value: Any) -> str:
    import orjson

    return orjson.dumps(value).decode()


class ToolCallRestorer:
    """Turns calls of lowered tools back into what the client declared: custom tool calls
    get their raw ``input`` (unwrapped from the function arguments once the call is
    complete), namespaced functions their short name and ``namespace``."""

    def __init__(self, tool_map: ToolMap) -> None:
        self.map = tool_map
        self._custom: dict[int, list[str]] = {}

    def feed(self, event: Event) -> list[Event]:
        if not self.map.names:
            return [event]
        if isinstance(event, ToolCallStart):
            out = self._flush()
            target = self.map.names.get(event.name)
            if target is not None:
                kind, name, namespace = target
                event = ToolCallStart(index=event.index, call_id=event.call_id, name=name,
                                      kind="custom" if kind == "custom" else "function",
                                      namespace=namespace)
                if kind == "custom":
                    self._custom[event.index] = []
            return [*out, event]
        if isinstance(event, ToolCallDelta) and event.index in self._custom:
            self._custom[event.index].append(event.arguments)
            return []
        if isinstance(event, (Finish, UsageReport, Failure, TextDelta, OpaqueItem)):
            return [*self._flush(), event]
        return [event]

    def close(self) -> list[Event]:
        return self._flush()

    def _flush(self) -> list[Event]:
        import orjson

        out: list[Event] = []
        for index, pieces in self._custom.items():
            raw = "".join(pieces)
            try:
                parsed = orjson.loads(raw) if raw else {}
            except orjson.JSONDecodeError:
                parsed = None
            text = parsed.get("input") if isinstance(parsed, dict) else None
            out.append(ToolCallDelta(index=index, arguments=text if isinstance(text, str)
                                     else raw))
        self._custom.clear()
        return out


# --- compaction made by Turnpike ----------------------------------------------------------

_COMPACTION_SEAL = "tpc1."


def seal_compaction(summary: str) -> str:
    """The ``encrypted_content`` of a compaction item Turnpike wrote itself (for upstreams
    without native compaction); the client replays it and ``open_compaction`` reads it."""
    import base64

    import orjson

    return _COMPACTION_SEAL + base64.urlsafe_b64encode(orjson.dumps({"summary": summary})).decode()


def open_compaction(token: str | None) -> str | None:
    import base64
    import binascii

    import orjson

    if not token or not token.startswith(_COMPACTION_SEAL):
        return None
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token[len(_COMPACTION_SEAL):]))
    except (binascii.Error, ValueError):
        return None
    summary = data.get("summary") if isinstance(data, dict) else None
    return summary if isinstance(summary, str) else None


SEAL_MARKERS = (_SEAL.encode(), _COMPACTION_SEAL.encode())
