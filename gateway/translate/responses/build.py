"""The canonical request -> a Responses request body for an OpenAI-Responses upstream."""

from __future__ import annotations

from typing import Any

from gateway.translate import canonical as c


def _content_for_responses(role: str, parts: list[c.Part]) -> list[dict[str, Any]]:
    text_type = "output_text" if role == "assistant" else "input_text"
    out: list[dict[str, Any]] = []
    for p in parts:
        if p.type == "text":
            part: dict[str, Any] = {"type": text_type, "text": p.text}
            if text_type == "output_text":
                part["annotations"] = []
            out.append(part)
        elif p.type == "refusal":
            out.append({"type": "refusal", "refusal": p.text})
        elif p.type == "image":
            out.append({"type": "input_image", "image_url": p.url, "detail": p.detail or "auto"})
        elif p.type == "file":
            out.append({k: v for k, v in (("type", "input_file"), ("file_data", p.file_data),
                                          ("file_id", p.file_id), ("filename", p.filename))
                        if v})
    return out


def item_to_responses(item: c.Item) -> dict[str, Any] | None:
    if isinstance(item, c.Message):
        return {"type": "message", "role": item.role,
                "content": _content_for_responses(item.role, item.parts)}
    if isinstance(item, c.ToolCall):
        if item.kind == "custom":
            return {"type": "custom_tool_call", "call_id": item.call_id, "name": item.name,
                    "input": item.arguments}
        call = {"type": "function_call", "call_id": item.call_id, "name": item.name,
                "arguments": item.arguments or "{}"}
        if item.namespace:
            call["namespace"] = item.namespace
        return call
    if isinstance(item, c.ToolResult):
        kind = "custom_tool_call_output" if item.kind == "custom" else "function_call_output"
        return {"type": kind, "call_id": item.call_id, "output": item.output}
    if isinstance(item, c.Reasoning):
        # Only the issuer can read encrypted reasoning; Turnpike's own seal is for other
        # providers, so it is not sent to an OpenAI-protocol upstream.
        if not item.encrypted_content or c.open_reasoning(item.encrypted_content) is not None:
            return None
        out = {"type": "reasoning",
               "summary": [{"type": "summary_text", "text": s} for s in item.summary],
               "encrypted_content": item.encrypted_content}
        if item.item_id:
            out["id"] = item.item_id
        return out
    return item.item


# Over the complexity limit (C901) on purpose: a flat field-by-field mapping, each branch is one
# optional Responses field.
def build_request(req: c.CanonicalRequest, model: str) -> dict[str, Any]:  # noqa: C901
    body: dict[str, Any] = {"model": model, "stream": req.stream}
    instructions = list(req.instructions)
    if instructions:
        body["instructions"] = "\n\n".join(instructions)
    body["input"] = [x for x in (item_to_responses(i) for i in req.items) if x is not None]
    tools: list[dict[str, Any]] = []
    for tool in req.tools:
        if tool.raw is not None:
            tools.append(tool.raw)
        elif tool.kind == "function":
            tools.append({k: v for k, v in (("type", "function"), ("name", tool.name),
                                            ("description", tool.description),
                                            ("parameters", tool.parameters),
                                            ("strict", tool.strict)) if v is not None})
        elif tool.kind == "custom":
            tools.append({k: v for k, v in (("type", "custom"), ("name", tool.name),
                                            ("description", tool.description),
                                            ("format", tool.format)) if v is not None})
    if tools:
        body["tools"] = tools
        if req.tool_choice in ("auto", "none", "required"):
            body["tool_choice"] = req.tool_choice
        elif isinstance(req.tool_choice, dict):
            custom = any(t.kind == "custom" and t.name == req.tool_choice["name"]
                         for t in req.tools)
            body["tool_choice"] = {"type": "custom" if custom else "function",
                                   "name": req.tool_choice["name"]}
    if req.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = req.parallel_tool_calls
    if req.max_output_tokens is not None:
        body["max_output_tokens"] = req.max_output_tokens
    for name in ("temperature", "top_p", "user", "metadata", "store", "prompt_cache_key",
                 "previous_response_id"):
        value = getattr(req, name)
        if value is not None:
            body[name] = value
    if req.include:
        body["include"] = req.include
    if req.reasoning_effort or req.reasoning_summary:
        body["reasoning"] = {k: v for k, v in (("effort", req.reasoning_effort),
                                               ("summary", req.reasoning_summary)) if v}
    text: dict[str, Any] = {}
    fmt = req.response_format
    if fmt and fmt.get("type") == "json_schema":
        text["format"] = {k: v for k, v in (("type", "json_schema"),
                                            ("name", fmt.get("name") or "response"),
                                            ("schema", fmt.get("schema")),
                                            ("strict", fmt.get("strict"))) if v is not None}
    elif fmt:
        text["format"] = {"type": "json_object"}
    if req.verbosity:
        text["verbosity"] = req.verbosity
    if text:
        body["text"] = text
    return body
