"""OpenAI Responses: client requests in, client answers out (the full event sequence strict
clients and the Codex CLI need), and the same protocol as an upstream."""

from __future__ import annotations

import logging
import time
import uuid
from decimal import Decimal
from typing import Any

import orjson

from gateway.translate import canonical as c
from gateway.translate.xmltools import XmlToolUseFilter
from gateway.wire import usage as usage_wire
from gateway.wire.sse import encode

log = logging.getLogger(__name__)

COMPACTION_PREAMBLE = "Summary of the conversation so far (earlier turns were compacted):\n\n"


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


# --- client request -> canonical ------------------------------------------------------------

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
    if kind == "item_reference":
        raise c.TranslationError("item_reference inputs need stored responses, which this "
                                 "upstream does not keep.", param="input")
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


# --- canonical -> upstream request ----------------------------------------------------------

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


# --- upstream answer -> canonical events ----------------------------------------------------

def _finish_and_usage(response: dict[str, Any], saw_calls: bool) -> list[c.Event]:
    events: list[c.Event] = []
    status = response.get("status")
    if status == "failed":
        error = response.get("error") or {}
        events.append(c.Failure(code=str(error.get("code") or "upstream_error"),
                                message=str(error.get("message") or "The upstream failed.")))
    elif status == "incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        events.append(c.Finish("content_filter" if reason == "content_filter" else "length"))
    else:
        events.append(c.Finish("tool_calls" if saw_calls else "stop"))
    usage = usage_wire.from_responses(response.get("usage"))
    if usage is not None:
        events.append(c.UsageReport(usage))
    return events


def decode_item(item: dict[str, Any], index: int) -> tuple[list[c.Event], int]:
    """Events for one complete output item; returns them and the next tool-call index."""
    kind = item.get("type")
    events: list[c.Event] = []
    if kind == "message":
        for part in item.get("content") or []:
            if part.get("type") == "output_text" and part.get("text"):
                events.append(c.TextDelta(str(part["text"])))
            elif part.get("type") == "refusal":
                events.append(c.RefusalDelta(str(part.get("refusal", ""))))
    elif kind == "reasoning":
        for summary in item.get("summary") or []:
            events.append(c.ReasoningDelta(str(summary.get("text", ""))))
        events.append(c.ReasoningDone(encrypted_content=item.get("encrypted_content")))
    elif kind in ("function_call", "custom_tool_call"):
        custom = kind == "custom_tool_call"
        events.append(c.ToolCallStart(index=index, call_id=str(item.get("call_id")),
                                      name=str(item.get("name")),
                                      kind="custom" if custom else "function",
                                      namespace=item.get("namespace")))
        events.append(c.ToolCallDelta(index=index, arguments=str(
            item.get("input" if custom else "arguments") or "")))
        index += 1
    else:
        events.append(c.OpaqueItem(item))
    return events, index


def decode_response(body: dict[str, Any]) -> list[c.Event]:
    events: list[c.Event] = [c.Start(response_id=body.get("id"), model=body.get("model"),
                                     created=body.get("created_at"))]
    index = 0
    for item in body.get("output") or []:
        if isinstance(item, dict):
            more, index = decode_item(item, index)
            events += more
    return events + _finish_and_usage(body, index > 0)


class StreamDecoder:
    """Responses events -> canonical events. Items that arrive whole (no deltas streamed
    for them) are decoded from their ``output_item.done``."""

    def __init__(self) -> None:
        self._started = False
        self._items: dict[str, dict[str, Any]] = {}  # item id -> {"index", "streamed"}
        self._next_call = 0

    def feed(self, data: dict[str, Any]) -> list[c.Event]:
        kind = data.get("type")
        events: list[c.Event] = []
        if not self._started:
            self._started = True
            started = data.get("response")
            response: dict[str, Any] = started if isinstance(started, dict) else {}
            events.append(c.Start(response_id=response.get("id"), model=response.get("model"),
                                  created=response.get("created_at")))
        if kind == "response.output_item.added":
            item = data.get("item") or {}
            state: dict[str, Any] = {"streamed": False}
            if item.get("type") in ("function_call", "custom_tool_call"):
                state["index"] = self._next_call
                self._next_call += 1
                custom = item.get("type") == "custom_tool_call"
                events.append(c.ToolCallStart(index=state["index"],
                                              call_id=str(item.get("call_id")),
                                              name=str(item.get("name")),
                                              kind="custom" if custom else "function",
                                              namespace=item.get("namespace")))
            self._items[str(item.get("id"))] = state
        elif kind == "response.output_text.delta":
            self._mark(data)
            events.append(c.TextDelta(str(data.get("delta", ""))))
        elif kind == "response.refusal.delta":
            self._mark(data)
            events.append(c.RefusalDelta(str(data.get("delta", ""))))
        elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            self._mark(data)
            events.append(c.ReasoningDelta(str(data.get("delta", "")),
                                           kind="raw" if "reasoning_text" in kind
                                           else "summary"))
        elif kind in ("response.function_call_arguments.delta",
                      "response.custom_tool_call_input.delta"):
            streaming = self._items.get(str(data.get("item_id")))
            if streaming is not None and "index" in streaming:
                streaming["streamed"] = True
                events.append(c.ToolCallDelta(index=streaming["index"],
                                              arguments=str(data.get("delta", ""))))
        elif kind == "response.output_item.done":
            events += self._item_done(data.get("item") or {})
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            response = data.get("response") or {}
            events += _finish_and_usage(response, self._next_call > 0)
        elif kind == "error":
            events.append(c.Failure(code=str(data.get("code") or "upstream_error"),
                                    message=str(data.get("message") or "upstream error")))
        return events

    def _mark(self, data: dict[str, Any]) -> None:
        state = self._items.setdefault(str(data.get("item_id")), {})
        state["streamed"] = True

    def _item_done(self, item: dict[str, Any]) -> list[c.Event]:
        state = self._items.get(str(item.get("id")), {})
        kind = item.get("type")
        if kind == "reasoning":
            events: list[c.Event] = []
            if not state.get("streamed"):
                events += [c.ReasoningDelta(str(s.get("text", "")))
                           for s in item.get("summary") or [] if s.get("text")]
            return [*events, c.ReasoningDone(encrypted_content=item.get("encrypted_content"))]
        if kind in ("function_call", "custom_tool_call"):
            if "index" not in state:  # never announced: decode it whole
                events, self._next_call = decode_item(item, self._next_call)
                return events
            if not state.get("streamed"):
                field = "input" if kind == "custom_tool_call" else "arguments"
                return [c.ToolCallDelta(index=state["index"],
                                        arguments=str(item.get(field) or ""))]
            return []
        if kind == "message":
            if state.get("streamed"):
                return []
            return decode_item(item, self._next_call)[0]
        return [c.OpaqueItem(item)]


# --- canonical events -> client answer ------------------------------------------------------

class ResponsesEncoder:
    """Events -> the Responses event sequence (``feed``/``close``) or the Response object
    (``final``). Items are emitted strictly one after another, each closed by
    ``response.output_item.done`` with the complete item (the Codex CLI reads only those)."""

    def __init__(self, model: str, echo: dict[str, Any] | None = None,
                 clean_xml_tools: bool = False) -> None:
        self.id = new_id("resp")
        self.model = model
        self.created = int(time.time())
        self.echo = echo or {}
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.current: dict[str, Any] | None = None  # the open item
        self.calls: dict[int, dict[str, Any]] = {}
        self.pending_deltas: dict[int, list[str]] = {}
        self.finish: c.FinishReason | None = None
        self.usage: usage_wire.Usage | None = None
        self.cost: Decimal | None = None  # set: the final usage carries it (usage.cost)
        self.failure: c.Failure | None = None
        self.started = False
        self.xml = XmlToolUseFilter() if clean_xml_tools else None
        self._reasoning_text: list[str] = []

    # framing
    def _event(self, kind: str, payload: dict[str, Any]) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **payload}
        self.seq += 1
        return encode(data, event=kind)

    def response(self, status: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id, "object": "response", "created_at": self.created, "status": status,
            "model": self.model, "output": self.output if status != "in_progress" else [],
            "parallel_tool_calls": self.echo.get("parallel_tool_calls", True),
            "tool_choice": self.echo.get("tool_choice", "auto"),
            "tools": self.echo.get("tools", []),
            "error": None, "incomplete_details": None,
            "instructions": self.echo.get("instructions"),
            "max_output_tokens": self.echo.get("max_output_tokens"),
            "previous_response_id": self.echo.get("previous_response_id"),
            "reasoning": self.echo.get("reasoning") or {"effort": None, "summary": None},
            "store": self.echo.get("store", False),
            "temperature": self.echo.get("temperature", 1.0),
            "top_p": self.echo.get("top_p", 1.0),
            "text": self.echo.get("text") or {"format": {"type": "text"}},
            "truncation": "disabled", "metadata": self.echo.get("metadata") or {},
            "user": self.echo.get("user"),
            "usage": None,
        }
        if status in ("completed", "incomplete", "failed"):
            body["usage"] = usage_wire.to_responses(self.usage or usage_wire.Usage())
            if self.cost is not None:
                usage_wire.with_cost(body["usage"], self.cost)
        if status == "incomplete":
            body["incomplete_details"] = {
                "reason": "content_filter" if self.finish == "content_filter"
                else "max_output_tokens"}
        if status == "failed" and self.failure is not None:
            body["error"] = {"code": self.failure.code, "message": self.failure.message}
        return body

    def _start(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        snapshot = self.response("in_progress")
        return (self._event("response.created", {"response": snapshot})
                + self._event("response.in_progress", {"response": snapshot}))

    # items
    def _close_current(self, status: str = "completed") -> bytes:
        """Close the open item; ``status`` is "incomplete" for the item the answer ended in
        when it was cut or truncated (a client must not act on a half-streamed call)."""
        item = self.current
        if item is None:
            return b""
        self.current = None
        index = item["_index"]
        out = b""
        kind = item["type"]
        if kind == "message":
            if self.xml is not None:
                tail = self.xml.flush()
                if tail:
                    out += self._text_delta(item, tail)
            part = item["content"][-1]
            key = "refusal" if part["type"] == "refusal" else "text"
            done = "response.refusal.done" if key == "refusal" else "response.output_text.done"
            payload: dict[str, Any] = {"item_id": item["id"], "output_index": index,
                                       "content_index": 0, key: part[key]}
            if key == "text":
                payload["logprobs"] = []
            out += self._event(done, payload)
            out += self._event("response.content_part.done", {
                "item_id": item["id"], "output_index": index, "content_index": 0,
                "part": part})
        elif kind == "reasoning":
            if item["summary"]:
                text = item["summary"][0]["text"]
                out += self._event("response.reasoning_summary_text.done", {
                    "item_id": item["id"], "output_index": index, "summary_index": 0,
                    "text": text})
                out += self._event("response.reasoning_summary_part.done", {
                    "item_id": item["id"], "output_index": index, "summary_index": 0,
                    "part": {"type": "summary_text", "text": text}})
        elif kind == "function_call":
            out += self._event("response.function_call_arguments.done", {
                "item_id": item["id"], "output_index": index, "arguments": item["arguments"]})
        elif kind == "custom_tool_call":
            out += self._event("response.custom_tool_call_input.done", {
                "item_id": item["id"], "output_index": index, "input": item["input"]})
        if kind != "reasoning":
            item["status"] = status
        clean = {k: v for k, v in item.items() if not k.startswith("_")}
        self.output[index] = clean
        return out + self._event("response.output_item.done",
                                 {"output_index": index, "item": clean})

    def _open(self, item: dict[str, Any]) -> bytes:
        out = self._close_current()
        item["_index"] = len(self.output)
        self.output.append({})
        self.current = item
        announced = {k: (v if k != "content" else []) for k, v in item.items()
                     if not k.startswith("_")}
        if item["type"] == "reasoning":
            announced = {"id": item["id"], "type": "reasoning", "summary": []}
        out += self._event("response.output_item.added",
                           {"output_index": item["_index"], "item": announced})
        return out

    def _message(self, part_type: str) -> bytes:
        item = self.current
        if item is not None and item["type"] == "message" and \
                item["content"][-1]["type"] == part_type:
            return b""
        part: dict[str, Any] = ({"type": "output_text", "text": "", "annotations": [],
                                 "logprobs": []} if part_type == "output_text"
                                else {"type": "refusal", "refusal": ""})
        out = self._open({"id": new_id("msg"), "type": "message", "status": "in_progress",
                          "role": "assistant", "content": [part]})
        out += self._event("response.content_part.added", {
            "item_id": self.current["id"], "output_index": self.current["_index"],  # type: ignore[index]
            "content_index": 0, "part": dict(part)})
        return out

    def _text_delta(self, item: dict[str, Any], text: str) -> bytes:
        item["content"][-1]["text"] += text
        return self._event("response.output_text.delta", {
            "item_id": item["id"], "output_index": item["_index"], "content_index": 0,
            "delta": text, "logprobs": []})

    # Over the complexity limit (C901) on purpose: one branch per canonical event type,
    # each a few lines of framing.
    def feed(self, event: c.Event) -> bytes:  # noqa: C901
        out = self._start()
        if isinstance(event, c.TextDelta):
            text = self.xml.feed(event.text) if self.xml is not None else event.text
            if not text:
                return out
            out += self._message("output_text")
            return out + self._text_delta(self.current, text)  # type: ignore[arg-type]
        if isinstance(event, c.RefusalDelta):
            out += self._message("refusal")
            item = self.current
            item["content"][-1]["refusal"] += event.text  # type: ignore[index]
            return out + self._event("response.refusal.delta", {
                "item_id": item["id"], "output_index": item["_index"],  # type: ignore[index]
                "content_index": 0, "delta": event.text})
        if isinstance(event, c.ReasoningDelta):
            item = self.current
            if item is None or item["type"] != "reasoning":
                out += self._open({"id": new_id("rs"), "type": "reasoning", "summary": []})
                item = self.current
                self._reasoning_text = []
            assert item is not None
            if not item["summary"]:
                item["summary"].append({"type": "summary_text", "text": ""})
                out += self._event("response.reasoning_summary_part.added", {
                    "item_id": item["id"], "output_index": item["_index"], "summary_index": 0,
                    "part": {"type": "summary_text", "text": ""}})
            item["summary"][0]["text"] += event.text
            self._reasoning_text.append(event.text)
            return out + self._event("response.reasoning_summary_text.delta", {
                "item_id": item["id"], "output_index": item["_index"], "summary_index": 0,
                "delta": event.text})
        if isinstance(event, c.ReasoningDone):
            item = self.current
            if item is None or item["type"] != "reasoning":
                if not (event.encrypted_content or event.signature):
                    return out
                out += self._open({"id": new_id("rs"), "type": "reasoning", "summary": []})
                item = self.current
                assert item is not None
            token = event.encrypted_content or (
                c.seal_reasoning("".join(self._reasoning_text), event.signature)
                if event.signature else None)
            if token:
                item["encrypted_content"] = token
            return out + self._close_current()
        if isinstance(event, c.ToolCallStart):
            if event.kind == "custom":
                item = {"id": new_id("ctc"), "type": "custom_tool_call", "status": "in_progress",
                        "call_id": event.call_id, "name": event.name, "input": ""}
            else:
                item = {"id": new_id("fc"), "type": "function_call", "status": "in_progress",
                        "call_id": event.call_id, "name": event.name, "arguments": ""}
                if event.namespace:
                    item["namespace"] = event.namespace
            self.calls[event.index] = item
            out += self._open(item)
            for piece in self.pending_deltas.pop(event.index, []):
                out += self._tool_delta(item, piece)
            return out
        if isinstance(event, c.ToolCallDelta):
            item = self.calls.get(event.index)
            if item is None or item is not self.current:
                # Not the open item (interleaved calls): kept until that call is open.
                if item is None:
                    self.pending_deltas.setdefault(event.index, []).append(event.arguments)
                else:
                    key = "input" if item["type"] == "custom_tool_call" else "arguments"
                    item[key] += event.arguments
                return out
            return out + self._tool_delta(item, event.arguments)
        if isinstance(event, c.OpaqueItem):
            out += self._close_current()
            item = dict(event.item)
            item.setdefault("id", new_id(str(item.get("type", "item"))[:4]))
            index = len(self.output)
            self.output.append(item)
            return (out + self._event("response.output_item.added",
                                      {"output_index": index, "item": item})
                    + self._event("response.output_item.done",
                                  {"output_index": index, "item": item}))
        if isinstance(event, c.Finish):
            self.finish = event.reason
        elif isinstance(event, c.UsageReport):
            self.usage = event.usage
        elif isinstance(event, c.Failure):
            self.failure = event
        return out

    def _tool_delta(self, item: dict[str, Any], piece: str) -> bytes:
        if item["type"] == "custom_tool_call":
            item["input"] += piece
            return self._event("response.custom_tool_call_input.delta", {
                "item_id": item["id"], "output_index": item["_index"], "delta": piece})
        item["arguments"] += piece
        return self._event("response.function_call_arguments.delta", {
            "item_id": item["id"], "output_index": item["_index"], "delta": piece})

    def relayed_text(self) -> str:
        out: list[str] = []
        items = [*self.output, *([self.current] if self.current is not None else [])]
        for item in items:
            for part in item.get("content") or []:
                out.append(part.get("text") or part.get("refusal") or "")
            for summary in item.get("summary") or []:
                out.append(summary.get("text", ""))
            out.append(item.get("arguments") or item.get("input") or "")
        return "".join(out)

    def status(self) -> str:
        if self.failure is not None:
            return "failed"
        if self.finish in ("length", "content_filter"):
            return "incomplete"
        return "completed"

    def close(self) -> bytes:
        status = self.status()
        out = self._start() + self._close_current(
            "completed" if status == "completed" else "incomplete")
        kind = {"failed": "response.failed", "incomplete": "response.incomplete"}.get(
            status, "response.completed")
        return out + self._event(kind, {"response": self.response(status)})

    def keepalive(self) -> bytes:
        """A data-bearing event: the Codex CLI's idle timer ignores SSE comments."""
        return encode({"type": "keepalive", "sequence_number": self.seq}, event="keepalive")

    def final(self) -> dict[str, Any]:
        self.close()
        return self.response(self.status())
