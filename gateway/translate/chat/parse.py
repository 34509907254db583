"""Chat Completions client request -> canonical request."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.translate import canonical as c


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content
                       if isinstance(p, dict) and p.get("type") in ("text", "input_text",
                                                                   "output_text"))
    return "" if content is None else orjson.dumps(content).decode()


def _parts(content: Any) -> list[c.Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [c.Part("text", text=content)]
    if not isinstance(content, list):
        raise c.TranslationError("Message content must be a string or a list of parts.",
                                 param="messages")
    parts: list[c.Part] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in ("text", "input_text", "output_text"):
            parts.append(c.Part("text", text=c.opt_str(part, "text", "messages") or ""))
        elif kind == "image_url":
            image = part.get("image_url")
            if isinstance(image, dict):
                url = c.opt_str(image, "url", "messages")
                detail = c.opt_str(image, "detail", "messages")
            else:
                url, detail = c.opt_str(part, "image_url", "messages"), None
            parts.append(c.Part("image", url=url or "", detail=detail))
        elif kind == "file":
            file = c.opt_dict(part, "file", "messages")
            parts.append(c.Part("file", file_data=c.opt_str(file, "file_data", "messages"),
                                file_id=c.opt_str(file, "file_id", "messages"),
                                filename=c.opt_str(file, "filename", "messages")))
        elif kind == "refusal":
            parts.append(c.Part("refusal", text=c.opt_str(part, "refusal", "messages") or ""))
        else:
            raise c.TranslationError(f"Content parts of type {kind!r} are not supported.",
                                     param="messages")
    return parts


# Over the complexity limit (C901) on purpose: a flat field-by-field mapping, each branch is one
# optional Chat field.
def parse_request(body: dict[str, Any]) -> c.CanonicalRequest:  # noqa: C901
    req = c.CanonicalRequest(model=str(body.get("model")))
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise c.TranslationError("'messages' must be a list.", param="messages")
    for message in messages:
        if not isinstance(message, dict):
            raise c.TranslationError("Each message must be an object.", param="messages")
        role = message.get("role")
        if role in ("system", "developer", "user"):
            req.items.append(c.Message(role=role, parts=_parts(message.get("content"))))
        elif role == "assistant":
            parts = _parts(message.get("content"))
            if message.get("refusal"):
                parts.append(c.Part("refusal", text=str(message["refusal"])))
            if parts:
                req.items.append(c.Message(role="assistant", parts=parts))
            # Names and ids are matched and hashed later (tool maps): strings only.
            for call in c.opt_list(message, "tool_calls", "messages"):
                if not isinstance(call, dict):
                    continue
                call_id = str(c.opt_str(call, "id", "messages"))
                if call.get("type") == "custom":
                    custom = c.opt_dict(call, "custom", "messages")
                    req.items.append(c.ToolCall(call_id=call_id,
                                                name=str(c.opt_str(custom, "name", "messages")),
                                                arguments=c.opt_str(custom, "input",
                                                                    "messages") or "",
                                                kind="custom"))
                    continue
                function = c.opt_dict(call, "function", "messages")
                req.items.append(c.ToolCall(call_id=call_id,
                                            name=str(c.opt_str(function, "name", "messages")),
                                            arguments=c.opt_str(function, "arguments",
                                                                "messages") or ""))
            legacy = message.get("function_call")
            if isinstance(legacy, dict):
                name = c.opt_str(legacy, "name", "messages")
                req.items.append(c.ToolCall(call_id=f"call_{name}", name=str(name),
                                            arguments=c.opt_str(legacy, "arguments",
                                                                "messages") or ""))
        elif role == "tool":
            req.items.append(c.ToolResult(
                call_id=str(c.opt_str(message, "tool_call_id", "messages")),
                output=_text_of(message.get("content"))))
        elif role == "function":
            name = c.opt_str(message, "name", "messages")
            req.items.append(c.ToolResult(call_id=f"call_{name}",
                                          output=_text_of(message.get("content")),
                                          name=name))
        else:
            raise c.TranslationError(f"Unknown message role {role!r}.", param="messages")
    for tool in body.get("tools") or []:
        if not isinstance(tool, dict):
            continue
        if tool.get("type", "function") == "function":
            fn = c.opt_dict(tool, "function", "tools")
            req.tools.append(c.Tool(kind="function", name=str(c.opt_str(fn, "name", "tools")),
                                    description=c.opt_str(fn, "description", "tools"),
                                    parameters=fn.get("parameters"), strict=fn.get("strict")))
        elif tool.get("type") == "custom":
            custom = c.opt_dict(tool, "custom", "tools")
            req.tools.append(c.Tool(kind="custom", name=str(c.opt_str(custom, "name", "tools")),
                                    description=c.opt_str(custom, "description", "tools"),
                                    format=custom.get("format")))
        else:
            req.tools.append(c.Tool(kind="other", raw=tool))
    choice = body.get("tool_choice")
    if choice in ("auto", "none", "required"):
        req.tool_choice = choice
    elif isinstance(choice, dict):
        named = c.opt_dict(choice, "function", "tool_choice") or \
            c.opt_dict(choice, "custom", "tool_choice")
        name = c.opt_str(named, "name", "tool_choice")
        req.tool_choice = {"name": name} if name else "auto"
    caps = [v for v in (body.get("max_tokens"), body.get("max_completion_tokens"))
            if isinstance(v, int) and not isinstance(v, bool)]
    req.max_output_tokens = max(caps) if caps else None
    req.temperature = body.get("temperature")
    req.top_p = body.get("top_p")
    stop = body.get("stop")
    req.stop = [stop] if isinstance(stop, str) else (stop if isinstance(stop, list) else None)
    req.presence_penalty = body.get("presence_penalty")
    req.frequency_penalty = body.get("frequency_penalty")
    req.seed = body.get("seed")
    req.reasoning_effort = body.get("reasoning_effort")
    fmt = body.get("response_format")
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_schema":
            schema = c.opt_dict(fmt, "json_schema", "response_format")
            req.response_format = {"type": "json_schema", "name": schema.get("name"),
                                   "schema": schema.get("schema"),
                                   "strict": schema.get("strict")}
        elif fmt.get("type") == "json_object":
            req.response_format = {"type": "json_object"}
    req.verbosity = body.get("verbosity")
    req.stream = bool(body.get("stream"))
    options = body.get("stream_options")
    req.include_usage = isinstance(options, dict) and options.get("include_usage") is True
    req.user = body.get("user")
    req.metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else None
    req.store = body.get("store")
    req.parallel_tool_calls = body.get("parallel_tool_calls")
    req.prompt_cache_key = body.get("prompt_cache_key")
    return req
