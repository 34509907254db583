"""The canonical request -> an Anthropic ``/v1/messages`` body: the system prompt, alternating
turns with tool results leading their user turn, thinking budgets, tools and tool choice."""

from __future__ import annotations

import logging
from typing import Any

import orjson

from gateway.translate.canonical import (
    CanonicalRequest,
    Message,
    Opaque,
    Part,
    Reasoning,
    ToolCall,
    ToolResult,
    TranslationError,
    open_reasoning,
)

logger = logging.getLogger(__name__)

Json = dict[str, Any]

# Anthropic requires max_tokens; OpenAI clients usually leave it out.
DEFAULT_MAX_TOKENS = 8192
# Thinking needs room for the answer after the budget is spent.
THINKING_HEADROOM = 4096
THINKING_BUDGETS: dict[str, int] = {
    "minimal": 1024,  # Anthropic's minimum budget
    "low": 2048,
    "medium": 8192,
    "high": 16384,
    "xhigh": 32000,
}

_JSON_OBJECT_INSTRUCTION = (
    "Respond with a single valid JSON object and nothing else: no prose, no code fences."
)
_JSON_SCHEMA_INSTRUCTION = (
    "Respond with a single JSON value that conforms to the following JSON schema and nothing "
    "else: no prose, no code fences.\nJSON schema{name}: {schema}"
)



def build_request(req: CanonicalRequest, model: str) -> dict[str, Any]:
    """The ``/v1/messages`` body for ``req``, sent to ``model`` (the upstream's model id).

    Raises ``TranslationError`` for content Anthropic cannot take (e.g. a file by id).
    """
    body: Json = {
        "model": model,
        "max_tokens": req.max_output_tokens or DEFAULT_MAX_TOKENS,
        "stream": req.stream,
    }

    system = list(req.instructions)
    builder = _MessagesBuilder()
    for item in req.items:
        if isinstance(item, Message) and item.role in ("system", "developer"):
            # Anthropic has no mid-conversation system turns: hoist them, keeping their order.
            system.append(item.text)
        else:
            builder.add(item)

    instruction = _response_format_instruction(req.response_format)
    if instruction:
        system.append(instruction)
    system_text = "\n\n".join(text for text in system if text)
    if system_text:
        body["system"] = system_text
    body["messages"] = builder.messages

    tools = _tools(req)
    thinking_budget = _thinking_budget(req.reasoning_effort)
    if thinking_budget and tools and _forces_tool(req.tool_choice):
        # Anthropic rejects forced tool use ("any"/"tool") together with thinking. A forced
        # call is a hard requirement of the client; thinking is not, so thinking gives way.
        logger.debug("anthropic: thinking dropped because tool_choice forces a tool call")
        thinking_budget = None

    if tools:
        body["tools"] = tools
        tool_choice = _tool_choice(req)
        if tool_choice is not None:
            body["tool_choice"] = tool_choice

    if thinking_budget:
        body["thinking"] = {"type": "enabled", "budget_tokens": thinking_budget}
        if body["max_tokens"] <= thinking_budget:
            body["max_tokens"] = thinking_budget + THINKING_HEADROOM
    else:
        # Anthropic rejects temperature/top_p with thinking on, so they only go without it.
        if req.temperature is not None:
            # OpenAI allows 0..2, Anthropic 0..1: clamp rather than fail the request.
            body["temperature"] = min(req.temperature, 1.0)
        if req.top_p is not None and req.temperature is None:
            # Recent Claude models reject temperature and top_p together; OpenAI SDK users
            # often send both (at their defaults), so temperature, the usual knob, wins.
            body["top_p"] = req.top_p
        elif req.top_p is not None:
            logger.debug("anthropic: top_p dropped because temperature is set")

    # Anthropic rejects empty or whitespace-only stop sequences.
    stop = [s for s in req.stop or () if s.strip()]
    if stop:
        body["stop_sequences"] = stop
    if req.user:
        body["metadata"] = {"user_id": req.user}
    # presence/frequency penalties and seed have no Anthropic equivalent: dropped.
    return body


class _MessagesBuilder:
    """Accumulates Anthropic messages, merging same-role neighbours so roles alternate."""

    def __init__(self) -> None:
        self.messages: list[Json] = []
        # Signed thinking waiting for the assistant turn it belongs to.
        self._thinking: list[Json] = []

    def add(self, item: Any) -> None:
        if isinstance(item, Message):
            blocks = [_part_block(part, item.role) for part in item.parts]
            role = "assistant" if item.role == "assistant" else "user"
            self._append(role, [block for block in blocks if block is not None])
        elif isinstance(item, ToolCall):
            # A run of calls lands in the preceding assistant message (or starts one).
            self._append("assistant", [_tool_use_block(item)])
        elif isinstance(item, ToolResult):
            self._append_tool_result(
                {"type": "tool_result", "tool_use_id": item.call_id, "content": item.output}
            )
        elif isinstance(item, Reasoning):
            block = _thinking_block(item)
            if block is not None:
                self._thinking.append(block)
            # Unsigned reasoning (e.g. OpenAI's own encrypted reasoning) cannot be replayed.
        elif isinstance(item, Opaque):
            logger.debug("anthropic: dropped opaque input item of type %r", item.item.get("type"))

    def _append(self, role: str, blocks: list[Json]) -> None:
        if role == "user" and blocks:
            # Thinking is only valid in the assistant turn it came from; reasoning that no
            # assistant output followed must not leak into a later turn.
            self._thinking = []
        if role == "assistant" and self._thinking:
            blocks = [*self._thinking, *blocks]
            self._thinking = []
            if self.messages and self.messages[-1]["role"] == "assistant":
                # Thinking must lead the assistant message: put it after any thinking
                # already there, before text and tool_use.
                content = self.messages[-1]["content"]
                at = _leading(content, "thinking")
                thinking = [b for b in blocks if b["type"] == "thinking"]
                content[at:at] = thinking
                blocks = [b for b in blocks if b["type"] != "thinking"]
        if not blocks:
            # Anthropic rejects messages with empty content.
            return
        if self.messages and self.messages[-1]["role"] == role:
            self.messages[-1]["content"].extend(blocks)
        else:
            self.messages.append({"role": role, "content": blocks})

    def _append_tool_result(self, block: Json) -> None:
        last = self.messages[-1] if self.messages else None
        if last is not None and last["role"] == "user":
            # tool_result blocks must come first in their user message; text sent before
            # the result (unusual) moves after it rather than failing the request.
            content = last["content"]
            content.insert(_leading(content, "tool_result"), block)
        else:
            self._append("user", [block])


def _leading(content: list[Json], block_type: str) -> int:
    """How many blocks of ``block_type`` start ``content``."""
    count = 0
    for block in content:
        if block.get("type") != block_type:
            break
        count += 1
    return count


def _part_block(part: Part, role: str) -> Json | None:
    if part.type in ("text", "refusal"):
        # Anthropic rejects empty text blocks; a refusal is plain assistant text to it.
        return {"type": "text", "text": part.text} if part.text else None
    if part.type == "image":
        return _image_block(part.url)
    if part.type == "file":
        return _file_block(part)
    raise TranslationError(f"unsupported content part type {part.type!r}", param="input")


def _parse_data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) from ``data:<type>;base64,<data>``; None if not base64."""
    if not url.startswith("data:"):
        return None
    header, sep, data = url[5:].partition(",")
    params = header.split(";")
    if not sep or "base64" not in (p.strip().lower() for p in params[1:]):
        return None
    return params[0].strip().lower(), data


def _image_block(url: str) -> Json:
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    parsed = _parse_data_url(url)
    if parsed is None or not parsed[0].startswith("image/"):
        raise TranslationError(
            "images must be http(s) URLs or base64 data URLs (data:image/...;base64,...)",
            param="input",
        )
    media_type, data = parsed
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _file_block(part: Part) -> Json:
    if not part.file_data:
        raise TranslationError(
            "files referenced by file_id cannot be sent to this model; send the file inline "
            "as file_data (a base64 data URL)",
            param="input",
        )
    parsed = _parse_data_url(part.file_data)
    if parsed is None and (part.filename or "").lower().endswith(".pdf"):
        # Some clients send bare base64 and let the file name carry the type.
        parsed = ("application/pdf", part.file_data)
    if parsed is not None and parsed[0].startswith("image/"):
        return _image_block(part.file_data)
    if parsed is None or parsed[0] != "application/pdf":
        raise TranslationError(
            "only PDF and image files can be sent to this model", param="input"
        )
    block: Json = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": parsed[1]},
    }
    if part.filename:
        block["title"] = part.filename  # lets the model refer to the document by name
    return block


def _tool_use_block(call: ToolCall) -> Json:
    tool_input: Any = None
    if call.kind == "function":
        try:
            tool_input = orjson.loads(call.arguments or "{}")
        except orjson.JSONDecodeError:
            tool_input = None
    if not isinstance(tool_input, dict):
        # Anthropic's input must be an object. Custom tools are lowered to a function
        # taking one string ``input``, so raw text (or broken JSON) goes there.
        tool_input = {"input": call.arguments}
    return {"type": "tool_use", "id": call.call_id, "name": call.name, "input": tool_input}


def _thinking_block(item: Reasoning) -> Json | None:
    opened = open_reasoning(item.encrypted_content)
    if opened is not None and opened[1]:
        text, signature = opened
        return {"type": "thinking", "thinking": text, "signature": signature}
    if opened is None and item.signature:
        # A client that carried the signature itself (not sealed in encrypted_content).
        text = item.text if item.text is not None else "".join(item.summary)
        return {"type": "thinking", "thinking": text, "signature": item.signature}
    return None


def _tools(req: CanonicalRequest) -> list[Json]:
    tools = []
    for tool in req.tools:
        if tool.kind != "function":
            # The caller lowers custom/namespace tools to functions; the rest (web_search …)
            # has no Anthropic counterpart here.
            logger.debug("anthropic: dropped %s tool %r", tool.kind, tool.name or tool.raw)
            continue
        spec: Json = {"name": tool.name}
        if tool.description:
            spec["description"] = tool.description
        spec["input_schema"] = tool.parameters or {"type": "object", "properties": {}}
        tools.append(spec)
    return tools


def _forces_tool(choice: Any) -> bool:
    return choice == "required" or isinstance(choice, dict)


def _tool_choice(req: CanonicalRequest) -> Json | None:
    choice = req.tool_choice
    spec: Json | None
    if choice == "auto":
        spec = {"type": "auto"}
    elif choice == "required":
        spec = {"type": "any"}
    elif choice == "none":
        # Anthropic's "none" takes no disable_parallel_tool_use: nothing runs in parallel.
        return {"type": "none"}
    elif isinstance(choice, dict) and choice.get("name"):
        spec = {"type": "tool", "name": choice["name"]}
    else:
        spec = None
    if req.parallel_tool_calls is False:
        spec = spec or {"type": "auto"}
        spec["disable_parallel_tool_use"] = True
    return spec


def _thinking_budget(effort: str | None) -> int | None:
    if effort is None or effort == "none":
        return None
    budget = THINKING_BUDGETS.get(effort)
    if budget is None:
        logger.debug("anthropic: unknown reasoning effort %r, no thinking", effort)
    return budget


def _response_format_instruction(response_format: Json | None) -> str | None:
    # Anthropic has no structured-output switch: ask for JSON in the system prompt.
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return _JSON_OBJECT_INSTRUCTION
    if kind == "json_schema":
        schema = response_format.get("schema")
        if schema is None:
            return _JSON_OBJECT_INSTRUCTION
        name = response_format.get("name")
        return _JSON_SCHEMA_INSTRUCTION.format(
            name=f" ({name})" if name else "", schema=orjson.dumps(schema).decode()
        )
    return None
