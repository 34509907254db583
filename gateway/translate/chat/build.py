"""Canonical request -> Chat Completions upstream request."""

from __future__ import annotations

import logging
from typing import Any

from gateway.translate import canonical as c

log = logging.getLogger(__name__)


def _content_for_chat(parts: list[c.Part]) -> str | list[dict[str, Any]]:
    if all(p.type in ("text", "refusal") for p in parts):
        return "".join(p.text for p in parts)
    out: list[dict[str, Any]] = []
    for p in parts:
        if p.type in ("text", "refusal"):
            out.append({"type": "text", "text": p.text})
        elif p.type == "image":
            image: dict[str, Any] = {"url": p.url}
            if p.detail:
                image["detail"] = p.detail
            out.append({"type": "image_url", "image_url": image})
        elif p.type == "file":
            file = {k: v for k, v in (("file_data", p.file_data), ("file_id", p.file_id),
                                      ("filename", p.filename)) if v}
            out.append({"type": "file", "file": file})
    return out


# Over the complexity limit (C901) on purpose: a flat field-by-field mapping, each branch is one
# optional Chat field.
def build_request(req: c.CanonicalRequest, model: str) -> dict[str, Any]:  # noqa: C901
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": "\n\n".join(req.instructions)})
    for item in req.items:
        if isinstance(item, c.Message):
            if item.role == "assistant":
                text = "".join(p.text for p in item.parts if p.type == "text")
                messages.append({"role": "assistant", "content": text})
            else:
                messages.append({"role": item.role, "content": _content_for_chat(item.parts)})
        elif isinstance(item, c.ToolCall):
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments or "{}"}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                if last.get("content") == "":
                    last["content"] = None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, c.ToolResult):
            messages.append({"role": "tool", "tool_call_id": item.call_id,
                             "content": item.output})
        elif isinstance(item, c.Reasoning):
            continue  # chat has no way to send reasoning back
        else:
            log.debug("dropping a %s item the chat protocol cannot carry",
                      item.item.get("type"))
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": req.stream}
    if req.stream:
        body["stream_options"] = {"include_usage": True}
    tools = [{"type": "function", "function": {
        k: v for k, v in (("name", t.name), ("description", t.description),
                          ("parameters", t.parameters), ("strict", t.strict)) if v is not None}}
        for t in req.tools if t.kind == "function"]
    if tools:
        body["tools"] = tools
        if req.tool_choice in ("auto", "none", "required"):
            body["tool_choice"] = req.tool_choice
        elif isinstance(req.tool_choice, dict):
            body["tool_choice"] = {"type": "function",
                                   "function": {"name": req.tool_choice["name"]}}
        if req.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = req.parallel_tool_calls
    if req.max_output_tokens is not None:
        body["max_tokens"] = req.max_output_tokens
    for name in ("temperature", "top_p", "stop", "presence_penalty", "frequency_penalty",
                 "seed", "user", "metadata", "verbosity", "prompt_cache_key"):
        value = getattr(req, name)
        if value is not None:
            body[name] = value
    if req.reasoning_effort:
        body["reasoning_effort"] = req.reasoning_effort
    fmt = req.response_format
    if fmt and fmt.get("type") == "json_schema":
        body["response_format"] = {"type": "json_schema", "json_schema": {
            k: v for k, v in (("name", fmt.get("name") or "response"),
                              ("schema", fmt.get("schema")),
                              ("strict", fmt.get("strict"))) if v is not None}}
    elif fmt:
        body["response_format"] = {"type": "json_object"}
    return body
