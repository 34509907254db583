"""Fixes for Codex-style Responses upstreams (kind ``openai-responses``), on unless the
client asks for raw mode. Where a fix prevents an upstream error, its comment quotes the
error."""

from __future__ import annotations

import re
from typing import Any

DEFAULT_INSTRUCTIONS = "You are a helpful assistant."
EFFORTS = ("minimal", "low", "medium", "high", "xhigh")
_SUFFIX = re.compile(r"^(?P<base>.+)-(?P<effort>" + "|".join(EFFORTS) + r")$")


def split_effort_suffix(model: str) -> tuple[str, str] | None:
    """``gpt-5-high`` -> (``gpt-5``, ``high``); None when the name has no effort suffix."""
    match = _SUFFIX.match(model)
    return (match["base"], match["effort"]) if match else None


def _normalise_message(item: dict[str, Any]) -> dict[str, Any]:
    role = item.get("role")
    if role == "system":  # "Invalid value: 'system'": these backends take developer
        role = "developer"
    text_type = "output_text" if role == "assistant" else "input_text"
    content = item.get("content")
    if isinstance(content, str):
        content = [{"type": text_type, "text": content}]
    elif isinstance(content, list):
        fixed = []
        for part in content:
            if isinstance(part, dict) and part.get("type") in ("input_text", "output_text",
                                                                "text"):
                # "Invalid value: 'input_text'": assistant history must be output_text
                part = {**part, "type": text_type}
                if text_type == "input_text":
                    part.pop("annotations", None)
                    part.pop("logprobs", None)
            fixed.append(part)
        content = fixed
    return {**item, "type": "message", "role": role, "content": content}


def fix_request(body: dict[str, Any]) -> dict[str, Any]:
    """A Responses body made acceptable to a Codex-style backend."""
    body = dict(body)
    body["stream"] = True  # "Stream must be set to true"
    body["store"] = False
    if not body.get("instructions"):
        body["instructions"] = DEFAULT_INSTRUCTIONS
    data = body.get("input")
    if isinstance(data, str):
        data = [{"type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": data}]}]
    items = []
    for item in data or []:
        if isinstance(item, dict) and (item.get("type") == "message"
                                       or ("role" in item and "type" not in item)):
            item = _normalise_message(item)
        items.append(item)
    body["input"] = items
    include = list(body.get("include") or [])
    if "reasoning.encrypted_content" not in include:
        include.append("reasoning.encrypted_content")
    body["include"] = include
    body["tools"] = complete_tools_from_history(body.get("tools") or [], items)
    if not body["tools"]:
        body.pop("tools")
        body.pop("tool_choice", None)
    if "session_id" in body:
        session = body.pop("session_id")
        body.setdefault("prompt_cache_key", session)
    for unsupported in ("max_output_tokens", "temperature", "top_p"):
        # Codex backends reject sampling overrides ("Unsupported parameter").
        body.pop(unsupported, None)
    return body


def complete_tools_from_history(tools: list[Any], items: list[Any]) -> list[Any]:
    """Add a permissive function definition for every tool the history calls but the
    request does not declare: these backends reject a function_call for an unknown tool."""
    declared = {t.get("name") for t in tools if isinstance(t, dict)}
    for t in tools:
        if isinstance(t, dict) and t.get("type") == "namespace":
            declared.update(f.get("name") for f in t.get("tools") or [] if isinstance(f, dict))
    added = []
    for item in items:
        if not isinstance(item, dict) or item.get("type") not in ("function_call",
                                                                  "custom_tool_call"):
            continue
        name = item.get("name")
        if not name or name in declared or item.get("namespace"):
            continue
        declared.add(name)
        if item["type"] == "custom_tool_call":
            added.append({"type": "custom", "name": name,
                          "description": "Tool used earlier in this conversation."})
        else:
            added.append({"type": "function", "name": name,
                          "description": "Tool used earlier in this conversation.",
                          "parameters": {"type": "object", "properties": {},
                                         "additionalProperties": True},
                          "strict": False})
    return [*tools, *added]
