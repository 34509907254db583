"""Responses client requests -> the canonical request: ``input`` items, tools, tool choice,
reasoning and text options. Errors in the client's body raise ``TranslationError``."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.translate import canonical as c

COMPACTION_PREAMBLE = "Summary of the conversation so far (earlier turns were compacted):\n\n"


def _parts(content: Any) -> list[c.Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [c.Part("text", text=content)]
    if not isinstance(content, list):
        raise c.TranslationError("Message content must be a string or a list of parts.",
                                 param="input")
    parts: list[c.Part] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text", "summary_text"):
            parts.append(c.Part("text", text=c.opt_str(part, "text", "input") or ""))
        elif kind == "input_image":
            image = part.get("image_url")
            url = c.opt_str(image, "url", "input") if isinstance(image, dict) \
                else c.opt_str(part, "image_url", "input")
            if not url and part.get("file_id"):
                raise c.TranslationError("Images by file_id are not supported; send the image "
                                         "as a URL or a data URL.", param="input")
            parts.append(c.Part("image", url=url or "",
                                detail=c.opt_str(part, "detail", "input")))
        elif kind == "input_file":
            parts.append(c.Part("file", file_data=c.opt_str(part, "file_data", "input"),
                                file_id=c.opt_str(part, "file_id", "input"),
                                filename=c.opt_str(part, "filename", "input")))
        elif kind == "refusal":
            parts.append(c.Part("refusal", text=c.opt_str(part, "refusal", "input") or ""))
        else:
            raise c.TranslationError(f"Content parts of type {kind!r} are not supported.",
                                     param="input")
    return parts


def _output_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        texts = [str(p.get("text", "")) for p in output
                 if isinstance(p, dict) and p.get("type") in ("input_text", "output_text",
                                                              "text")]
        if texts:
            return "".join(texts)
    return orjson.dumps(output).decode()


def parse_item(item: Any) -> c.Item | None:
    if not isinstance(item, dict):
        raise c.TranslationError("Each input item must be an object.", param="input")
    kind = item.get("type") or ("message" if "role" in item else None)
    if kind == "message":
        role = item.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise c.TranslationError(f"Unknown message role {role!r}.", param="input")
        return c.Message(role=role, parts=_parts(item.get("content")),
                         item_id=c.opt_str(item, "id", "input"))
    # Names and ids are matched and hashed later (tool maps, the Codex fixes): strings only.
    if kind == "function_call":
        return c.ToolCall(call_id=str(c.opt_str(item, "call_id", "input")),
                          name=str(c.opt_str(item, "name", "input")),
                          arguments=c.opt_str(item, "arguments", "input") or "",
                          namespace=c.opt_str(item, "namespace", "input"),
                          item_id=c.opt_str(item, "id", "input"))
    if kind == "custom_tool_call":
        return c.ToolCall(call_id=str(c.opt_str(item, "call_id", "input")),
                          name=str(c.opt_str(item, "name", "input")),
                          arguments=c.opt_str(item, "input", "input") or "", kind="custom",
                          item_id=c.opt_str(item, "id", "input"))
    if kind in ("function_call_output", "custom_tool_call_output"):
        return c.ToolResult(call_id=str(c.opt_str(item, "call_id", "input")),
                            output=_output_text(item.get("output")),
                            kind="custom" if kind == "custom_tool_call_output" else "function")
    if kind == "reasoning":
        summary = [c.opt_str(s, "text", "input") or "" for s in c.opt_list(item, "summary",
                                                                              "input")
                   if isinstance(s, dict)]
        content = item.get("content")
        text = "".join(c.opt_str(p, "text", "input") or "" for p in content
                       if isinstance(p, dict)) if isinstance(content, list) else None
        return c.Reasoning(summary=summary, text=text or None,
                           encrypted_content=c.opt_str(item, "encrypted_content", "input"),
                           item_id=c.opt_str(item, "id", "input"))
    if kind == "compaction":
        compacted = c.open_compaction(c.opt_str(item, "encrypted_content", "input"))
        if compacted is not None:  # one of Turnpike's own: expand it for any upstream
            return c.Message(role="user",
                             parts=[c.Part("text", COMPACTION_PREAMBLE + compacted)])
        return c.Opaque(item)
    if kind == "item_reference":  # one the store does not hold (gateway.stored.chain)
        raise c.TranslationError(
            f"Item with id '{item.get('id')}' not found: no stored response of this "
            "tenant holds it (deleted, expired, stored with store=false, or never stored "
            "here), and this upstream keeps no responses. Send the item itself instead.",
            param="input")
    return c.Opaque(item)


# Over the complexity limit (C901) on purpose: a flat field-by-field mapping, each branch is one
# optional Responses field.
def parse_request(body: dict[str, Any]) -> c.CanonicalRequest:  # noqa: C901
    req = c.CanonicalRequest(model=str(body.get("model")))
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        req.instructions.append(instructions)
    data = body.get("input")
    if isinstance(data, str):
        req.items.append(c.Message(role="user", parts=[c.Part("text", text=data)]))
    elif isinstance(data, list):
        for raw in data:
            item = parse_item(raw)
            if item is not None:
                req.items.append(item)
    elif data is not None:
        raise c.TranslationError("'input' must be a string or a list of items.", param="input")
    for tool in body.get("tools") or []:
        if not isinstance(tool, dict):
            continue
        kind = tool.get("type")
        name = c.opt_str(tool, "name", "tools")
        if kind == "function":
            req.tools.append(c.Tool(kind="function", name=str(name),
                                    description=c.opt_str(tool, "description", "tools"),
                                    parameters=tool.get("parameters"),
                                    strict=tool.get("strict"), raw=tool))
        elif kind == "custom":
            req.tools.append(c.Tool(kind="custom", name=str(name),
                                    description=c.opt_str(tool, "description", "tools"),
                                    format=tool.get("format"), raw=tool))
        else:
            if kind == "namespace":
                for inner in c.opt_list(tool, "tools", "tools"):
                    if isinstance(inner, dict):
                        c.opt_str(inner, "name", "tools")
                        c.opt_str(inner, "description", "tools")
            req.tools.append(c.Tool(kind="other", name=str(name or kind), raw=tool))
    choice = body.get("tool_choice")
    if choice in ("auto", "none", "required"):
        req.tool_choice = choice
    elif isinstance(choice, dict) and choice.get("type") in ("function", "custom"):
        req.tool_choice = {"name": str(c.opt_str(choice, "name", "tool_choice"))}
    elif choice is not None:
        req.tool_choice = "auto"
    cap = body.get("max_output_tokens")
    req.max_output_tokens = cap if isinstance(cap, int) and not isinstance(cap, bool) else None
    req.temperature = body.get("temperature")
    req.top_p = body.get("top_p")
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict):
        req.reasoning_effort = reasoning.get("effort")
        req.reasoning_summary = reasoning.get("summary")
    text = body.get("text")
    if isinstance(text, dict):
        fmt = text.get("format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            req.response_format = {"type": "json_schema", "name": fmt.get("name"),
                                   "schema": fmt.get("schema"), "strict": fmt.get("strict")}
        elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
            req.response_format = {"type": "json_object"}
        req.verbosity = text.get("verbosity")
    req.stream = bool(body.get("stream"))
    req.user = body.get("user")
    req.metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else None
    req.store = body.get("store")
    req.parallel_tool_calls = body.get("parallel_tool_calls")
    req.prompt_cache_key = body.get("prompt_cache_key") or body.get("session_id")
    req.include = [str(i) for i in body.get("include") or []]
    req.previous_response_id = body.get("previous_response_id")
    return req
