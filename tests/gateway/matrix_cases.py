"""Shared pieces of the translation matrix (``test_translation_matrix.py``).

* A conversation written once, protocol-neutrally (``Turn``s, ``Tool``s and neutral
  options), and its spelling for each client protocol (``chat_body``, ``responses_body``).
* One helper per client protocol that sends a body through the official ``openai`` SDK —
  its typed stream helpers in stream mode — and normalises the answer into an ``Answer``
  (text, tool calls, finish, usage, reasoning).
* Readers for what the fake upstream received: which protocol, the body, and the
  conversation in it written back as neutral tuples (``upstream_turns``), so one expected
  history can be checked against a Chat, Responses, Anthropic or Ollama body.
* A raw SSE reader (httpx) for the checks the SDK would hide or refuse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai

KINDS = ("openai", "openai-chat", "openai-responses", "anthropic", "ollama")
CLIENTS = ("chat", "responses")
MODES = ("json", "stream")

UPSTREAM_PATHS = {
    "/v1/chat/completions": "chat",
    "/v1/responses": "responses",
    "/v1/responses/compact": "compact",
    "/v1/messages": "anthropic",
    "/api/chat": "ollama",
}
# The protocol Turnpike speaks to each upstream kind (an ``openai`` upstream: the client's).
KIND_PROTOCOL = {"openai-chat": "chat", "openai-responses": "responses",
                 "anthropic": "anthropic", "ollama": "ollama"}

DEFAULT_TEXT = "tok0 tok1 tok2 "  # the fake's answer without directives
CODEX_DEFAULT_INSTRUCTIONS = "You are a helpful assistant."
PNG_DATA = "iVBORw0KGgo="
PNG_DATA_URL = f"data:image/png;base64,{PNG_DATA}"
ABSENT = object()  # an expected value: "this key is not in the body"


def model_for(kind: str) -> str:
    """Each upstream serves its own model, so a request picks its upstream by model."""
    return f"m-{kind}"


def upstream_protocol(client: str, kind: str) -> str:
    return client if kind == "openai" else KIND_PROTOCOL[kind]


def pick(table: dict[str, Any], client: str, kind: str) -> Any:
    """The entry of an expectation table for this client and upstream kind.

    Keys, most specific first: ``"<client>><kind>"`` (e.g. ``"chat>openai-responses"``),
    ``"<kind>"``, ``"@<protocol Turnpike spoke upstream>"`` (``@chat``, ``@responses``,
    ``@anthropic``, ``@ollama``) and ``"*"``.
    """
    for key in (f"{client}>{kind}", kind, "@" + upstream_protocol(client, kind), "*"):
        if key in table:
            return table[key]
    raise KeyError(f"no expectation for {client} -> {kind} in {sorted(table)}")


# --- the neutral conversation ------------------------------------------------------------

@dataclass(frozen=True)
class Turn:
    role: str  # system | developer | user | assistant | tool_call | tool_result
    text: str = ""
    image: str | None = None
    call_id: str = ""
    name: str = ""
    arguments: str = ""


def system(text: str) -> Turn:
    return Turn("system", text)


def developer(text: str) -> Turn:
    return Turn("developer", text)


def user(text: str, image: str | None = None) -> Turn:
    return Turn("user", text, image=image)


def assistant(text: str) -> Turn:
    return Turn("assistant", text)


def tool_call(call_id: str, name: str, arguments: str) -> Turn:
    return Turn("tool_call", call_id=call_id, name=name, arguments=arguments)


def tool_result(call_id: str, output: str) -> Turn:
    return Turn("tool_result", output, call_id=call_id)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]


CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
GET_WEATHER = Tool("get_weather", "Current weather in a city.", CITY)
GET_WEATHER_1 = Tool("get_weather_1", "Current weather in a city (second source).", CITY)


# --- spelled for each client protocol ----------------------------------------------------

def chat_body(model: str, turns: tuple[Turn, ...], *, tools: tuple[Tool, ...] = (),
              options: dict[str, Any] | None = None, stream: bool = False) -> dict[str, Any]:
    """A Chat Completions request (the keyword arguments of ``chat.completions.create``)."""
    messages: list[dict[str, Any]] = []
    for turn in turns:
        if turn.role in ("system", "developer", "assistant"):
            messages.append({"role": turn.role, "content": turn.text})
        elif turn.role == "user":
            content: Any = turn.text
            if turn.image:
                content = [{"type": "text", "text": turn.text},
                           {"type": "image_url",
                            "image_url": {"url": turn.image, "detail": "auto"}}]
            messages.append({"role": "user", "content": content})
        elif turn.role == "tool_call":
            call = {"id": turn.call_id, "type": "function",
                    "function": {"name": turn.name, "arguments": turn.arguments}}
            if messages and messages[-1]["role"] == "assistant" and "tool_calls" in messages[-1]:
                messages[-1]["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif turn.role == "tool_result":
            messages.append({"role": "tool", "tool_call_id": turn.call_id, "content": turn.text})
    body: dict[str, Any] = {"model": model, "messages": messages}
    if tools:
        body["tools"] = [{"type": "function", "function": {
            "name": t.name, "description": t.description, "parameters": t.parameters}}
            for t in tools]
    opts = options or {}
    choice = opts.get("tool_choice")
    if isinstance(choice, str) and choice.startswith("function:"):
        body["tool_choice"] = {"type": "function", "function": {"name": choice[9:]}}
    elif choice is not None:
        body["tool_choice"] = choice
    for neutral, name in (("max_tokens", "max_tokens"), ("temperature", "temperature"),
                          ("top_p", "top_p"), ("stop", "stop"), ("effort", "reasoning_effort"),
                          ("max_completion_tokens", "max_completion_tokens"),
                          ("parallel_tool_calls", "parallel_tool_calls")):
        if neutral in opts:
            body[name] = opts[neutral]
    if "json_schema" in opts:
        body["response_format"] = {"type": "json_schema", "json_schema": opts["json_schema"]}
    if stream:
        body["stream"] = True
        if opts.get("include_usage"):
            body["stream_options"] = {"include_usage": True}
    return body


def responses_body(model: str, turns: tuple[Turn, ...], *, tools: tuple[Tool, ...] = (),
                   options: dict[str, Any] | None = None,
                   stream: bool = False) -> dict[str, Any]:
    """A Responses request (the keyword arguments of ``responses.create``). A ``system``
    turn becomes ``instructions``, a Responses client's own place for it."""
    items: list[dict[str, Any]] = []
    instructions = None
    for turn in turns:
        if turn.role == "system":
            instructions = turn.text
        elif turn.role in ("developer", "assistant"):
            items.append({"role": turn.role, "content": turn.text})
        elif turn.role == "user":
            content: Any = turn.text
            if turn.image:
                content = [{"type": "input_text", "text": turn.text},
                           {"type": "input_image", "image_url": turn.image, "detail": "auto"}]
            items.append({"role": "user", "content": content})
        elif turn.role == "tool_call":
            items.append({"type": "function_call", "call_id": turn.call_id, "name": turn.name,
                          "arguments": turn.arguments})
        elif turn.role == "tool_result":
            items.append({"type": "function_call_output", "call_id": turn.call_id,
                          "output": turn.text})
    body: dict[str, Any] = {"model": model, "input": items}
    if instructions is not None:
        body["instructions"] = instructions
    if tools:
        body["tools"] = [{"type": "function", "name": t.name, "description": t.description,
                          "parameters": t.parameters} for t in tools]
    opts = options or {}
    choice = opts.get("tool_choice")
    if isinstance(choice, str) and choice.startswith("function:"):
        body["tool_choice"] = {"type": "function", "name": choice[9:]}
    elif choice is not None:
        body["tool_choice"] = choice
    for neutral, name in (("max_tokens", "max_output_tokens"), ("temperature", "temperature"),
                          ("top_p", "top_p")):
        if neutral in opts:
            body[name] = opts[neutral]
    if "effort" in opts:
        body["reasoning"] = {"effort": opts["effort"]}
    if "json_schema" in opts:
        body["text"] = {"format": {"type": "json_schema", **opts["json_schema"]}}
    if "parallel_tool_calls" in opts:
        body["parallel_tool_calls"] = opts["parallel_tool_calls"]
    if opts.get("string_input"):  # the plain-string form of a one-message input
        [only] = items
        body["input"] = only["content"]
    if stream:
        body["stream"] = True
    return body


def client_body(client: str, model: str, turns: tuple[Turn, ...], **kwargs: Any) -> dict[str, Any]:
    return (chat_body if client == "chat" else responses_body)(model, turns, **kwargs)


def client_path(client: str) -> str:
    return "/chat/completions" if client == "chat" else "/responses"


# --- sending through the SDK and normalising the answer ----------------------------------

@dataclass(frozen=True)
class Call:
    call_id: str
    name: str
    arguments: str
    item_id: str | None = None  # Responses only: the function_call item's id


@dataclass
class Answer:
    """A client-visible answer, normalised. ``finish`` stays in the client's own words:
    the chat ``finish_reason`` or the Responses ``status``."""

    text: str
    tool_calls: list[Call]
    finish: str
    usage: dict[str, Any] | None  # the client protocol's usage object, as JSON
    reasoning: str | None = None
    incomplete_reason: str | None = None  # Responses: incomplete_details.reason
    argument_deltas: int = 0  # stream mode: argument fragments streamed
    chunk_ids: set[str] = field(default_factory=set)  # chat streams: ids of all chunks
    events: list[str] = field(default_factory=list)  # Responses streams: event types
    model: str = ""
    output: list[dict[str, Any]] = field(default_factory=list)  # Responses output items
    instructions: str | None = None  # Responses: the response's echo of its instructions

    @property
    def calls(self) -> list[tuple[str, Any]]:
        """(name, parsed arguments) of each tool call, in order."""
        return [(call.name, json.loads(call.arguments)) for call in self.tool_calls]


def send_chat(sdk: openai.OpenAI, body: dict[str, Any]) -> Answer:
    if not body.get("stream"):
        completion = sdk.chat.completions.create(**body)
        choice = completion.choices[0]
        message = choice.message
        return Answer(
            text=message.content or "",
            tool_calls=[Call(c.id, c.function.name, c.function.arguments)
                        for c in message.tool_calls or []],
            finish=choice.finish_reason,
            usage=completion.usage.model_dump() if completion.usage else None,
            reasoning=(message.model_extra or {}).get("reasoning_content"),
            model=completion.model,
        )
    kwargs = {k: v for k, v in body.items() if k != "stream"}
    reasoning: list[str] = []
    deltas = 0
    ids: set[str] = set()
    with sdk.chat.completions.stream(**kwargs) as stream:
        for event in stream:
            if event.type != "chunk":
                continue
            ids.add(event.chunk.id)
            for choice in event.chunk.choices:
                piece = (choice.delta.model_extra or {}).get("reasoning_content")
                if piece:
                    reasoning.append(piece)
                deltas += sum(1 for c in choice.delta.tool_calls or []
                              if c.function is not None and c.function.arguments)
        try:
            completion = stream.get_final_completion()
        except openai.LengthFinishReasonError as exc:  # the helper refuses finish=length
            completion = exc.completion
    choice = completion.choices[0]
    return Answer(
        text=choice.message.content or "",
        tool_calls=[Call(c.id, c.function.name, c.function.arguments)
                    for c in choice.message.tool_calls or []],
        finish=choice.finish_reason,
        usage=completion.usage.model_dump() if completion.usage else None,
        reasoning="".join(reasoning) or None,
        argument_deltas=deltas,
        chunk_ids=ids,
        model=completion.model,
    )


def _from_response(response: Any) -> Answer:
    calls = [Call(item.call_id, item.name, item.arguments, item.id)
             for item in response.output if item.type == "function_call"]
    summaries = [part.text for item in response.output if item.type == "reasoning"
                 for part in item.summary or []]
    details = response.incomplete_details
    return Answer(
        text=response.output_text,
        tool_calls=calls,
        finish=response.status,
        usage=response.usage.model_dump() if response.usage else None,
        reasoning="".join(summaries) if summaries else None,
        incomplete_reason=details.reason if details else None,
        model=response.model,
        output=[item.model_dump(exclude_none=True) for item in response.output],
        instructions=response.instructions,
    )


def send_responses(sdk: openai.OpenAI, body: dict[str, Any]) -> Answer:
    if not body.get("stream"):
        return _from_response(sdk.responses.create(**body))
    kwargs = {k: v for k, v in body.items() if k != "stream"}
    events: list[Any] = []
    with sdk.responses.stream(**kwargs) as stream:
        events = list(stream)
        if events and events[-1].type == "response.completed":
            response = stream.get_final_response()
        else:  # incomplete/failed: the helper has no final response, the event carries it
            response = events[-1].response
    answer = _from_response(response)
    answer.events = [e.type for e in events]
    answer.argument_deltas = answer.events.count("response.function_call_arguments.delta")
    return answer


def send(sdk: openai.OpenAI, client: str, body: dict[str, Any]) -> Answer:
    return (send_chat if client == "chat" else send_responses)(sdk, body)


def usage_in_client_format(client: str, tokens: tuple[int, int, int]) -> dict[str, Any]:
    """(input, output, cached) as the client protocol spells usage."""
    given, produced, cached = tokens
    if client == "chat":
        return {"prompt_tokens": given, "completion_tokens": produced,
                "total_tokens": given + produced,
                "prompt_tokens_details": {"cached_tokens": cached}}
    return {"input_tokens": given, "output_tokens": produced, "total_tokens": given + produced,
            "input_tokens_details": {"cached_tokens": cached}}


def subset(actual: Any, expected: Any) -> Any:
    """``actual`` cut down to the keys ``expected`` names (recursively), to compare exactly
    on those keys and ignore the rest."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        return {k: subset(actual.get(k, ABSENT), v) for k, v in expected.items()}
    return actual


# --- what the upstream received ----------------------------------------------------------

@dataclass
class Sent:
    protocol: str
    body: dict[str, Any]
    headers: dict[str, str]


def sent_requests(fake_upstream: Any) -> list[Sent]:
    return [Sent(UPSTREAM_PATHS[r["path"]], r["body"], r["headers"])
            for r in fake_upstream.requests() if r["path"] in UPSTREAM_PATHS]


def last_sent(fake_upstream: Any) -> Sent:
    sent = sent_requests(fake_upstream)
    assert sent, "the upstream received nothing"
    return sent[-1]


def dig(body: Any, path: str) -> Any:
    """``dig(body, "messages.-1.content.0")``; ABSENT where the path does not exist."""
    node = body
    for step in path.split("."):
        if isinstance(node, list):
            try:
                node = node[int(step)]
            except (ValueError, IndexError):
                return ABSENT
        elif isinstance(node, dict):
            if step not in node:
                return ABSENT
            node = node[step]
        else:
            return ABSENT
    return node


def assert_paths(body: dict[str, Any], expected: dict[str, Any]) -> None:
    actual = {path: dig(body, path) for path in expected}
    shown = {p: ("<absent>" if v is ABSENT else v) for p, v in actual.items()}
    wanted = {p: ("<absent>" if v is ABSENT else v) for p, v in expected.items()}
    assert shown == wanted, f"upstream body: {json.dumps(body)[:3000]}"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content
                       if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _arguments(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def upstream_turns(sent: Sent) -> list[tuple[Any, ...]]:
    """The conversation in an upstream body as neutral tuples: ``(role, text)`` for
    messages (``("instructions", …)`` for Responses ``instructions``, ``("system", …)`` for
    Anthropic's top-level ``system``), ``("tool_call", id, name, arguments)`` and
    ``("tool_result", id, output)``."""
    body, out = sent.body, []
    if sent.protocol == "chat":
        for m in body["messages"]:
            if m["role"] == "tool":
                out.append(("tool_result", m["tool_call_id"], _text(m["content"])))
                continue
            if _text(m.get("content")) or not m.get("tool_calls"):
                out.append((m["role"], _text(m.get("content"))))
            out += [("tool_call", c["id"], c["function"]["name"],
                     _arguments(c["function"]["arguments"])) for c in m.get("tool_calls") or []]
    elif sent.protocol == "responses":
        if body.get("instructions"):
            out.append(("instructions", body["instructions"]))
        items = body["input"]
        for item in [{"role": "user", "content": items}] if isinstance(items, str) else items:
            kind = item.get("type", "message")
            if kind == "message":
                out.append((item["role"], _text(item["content"])))
            elif kind == "function_call":
                out.append(("tool_call", item["call_id"], item["name"],
                            _arguments(item["arguments"])))
            elif kind == "function_call_output":
                out.append(("tool_result", item["call_id"], item["output"]))
            else:
                out.append((kind,))
    elif sent.protocol == "anthropic":
        if body.get("system"):
            out.append(("system", _text(body["system"])))
        for m in body["messages"]:
            blocks = m["content"]
            if isinstance(blocks, str):
                blocks = [{"type": "text", "text": blocks}]
            for b in blocks:
                if b["type"] == "text":
                    out.append((m["role"], b["text"]))
                elif b["type"] == "tool_use":
                    out.append(("tool_call", b["id"], b["name"], b["input"]))
                elif b["type"] == "tool_result":
                    out.append(("tool_result", b["tool_use_id"], _text(b["content"])))
    elif sent.protocol == "ollama":
        for m in body["messages"]:
            if m["role"] == "tool":
                out.append(("tool_result", m.get("tool_call_id"), m["content"]))
                continue
            if m["content"] or not m.get("tool_calls"):
                out.append((m["role"], m["content"]))
            out += [("tool_call", c.get("id"), c["function"]["name"], c["function"]["arguments"])
                    for c in m.get("tool_calls") or []]
    return out


# --- raw SSE -------------------------------------------------------------------------------

@dataclass
class SseEvent:
    event: str | None
    data: str

    @property
    def json(self) -> Any:
        return json.loads(self.data)


def raw_post(gateway: Any, secret: str, path: str, body: dict[str, Any],
             headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(gateway.base_url + path, json=body, timeout=15,
                      headers={"Authorization": f"Bearer {secret}", **(headers or {})})


def sse_events(text: str) -> list[SseEvent]:
    """Every event with data in an SSE body (comments and keep-alive lines skipped)."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
        if data:
            events.append(SseEvent(name, "\n".join(data)))
    return events
