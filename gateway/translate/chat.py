"""OpenAI Chat Completions: client requests in, client answers out, and the same protocol
as an upstream (requests built, answers decoded)."""

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

FINISH_FROM_CHAT: dict[str, c.FinishReason] = {
    "stop": "stop", "length": "length", "tool_calls": "tool_calls",
    "function_call": "tool_calls", "content_filter": "content_filter",
}


# --- client request -> canonical -----------------------------------------------------------

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


# --- canonical -> upstream request ---------------------------------------------------------

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


# --- upstream answer -> canonical events --------------------------------------------------

def decode_response(body: dict[str, Any]) -> list[c.Event]:
    events: list[c.Event] = [c.Start(response_id=body.get("id"), model=body.get("model"),
                                     created=body.get("created"))]
    choices = body.get("choices") or []
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        events += [c.ReasoningDelta(reasoning, kind="raw"), c.ReasoningDone()]
    if isinstance(message.get("content"), str) and message["content"]:
        events.append(c.TextDelta(message["content"]))
    if message.get("refusal"):
        events.append(c.RefusalDelta(str(message["refusal"])))
    for index, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") or {}
        events.append(c.ToolCallStart(index=index, call_id=str(call.get("id")),
                                      name=str(function.get("name"))))
        events.append(c.ToolCallDelta(index=index, arguments=str(function.get("arguments")
                                                                  or "")))
    events.append(c.Finish(FINISH_FROM_CHAT.get(str(choice.get("finish_reason")), "stop")))
    usage = usage_wire.from_chat(body.get("usage"))
    if usage is not None:
        events.append(c.UsageReport(usage))
    return events


class StreamDecoder:
    """Chat chunks -> events. Tool-call fragments are keyed by their ``index``."""

    def __init__(self) -> None:
        self._started = False
        self._calls: dict[int, int] = {}  # chat tool index -> canonical index
        self._reasoning = False

    def feed(self, chunk: dict[str, Any]) -> list[c.Event]:
        events: list[c.Event] = []
        if not self._started:
            self._started = True
            events.append(c.Start(response_id=chunk.get("id"), model=chunk.get("model"),
                                  created=chunk.get("created")))
        if isinstance(chunk.get("error"), dict):
            err = chunk["error"]
            events.append(c.Failure(code=str(err.get("code") or err.get("type") or "error"),
                                    message=str(err.get("message") or "upstream error")))
            return events
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                self._reasoning = True
                events.append(c.ReasoningDelta(reasoning, kind="raw"))
            content = delta.get("content")
            if (content or delta.get("tool_calls")) and self._reasoning:
                self._reasoning = False
                events.append(c.ReasoningDone())
            if isinstance(content, str) and content:
                events.append(c.TextDelta(content))
            if delta.get("refusal"):
                events.append(c.RefusalDelta(str(delta["refusal"])))
            for call in delta.get("tool_calls") or []:
                position = call.get("index", 0)
                function = call.get("function") or {}
                if position not in self._calls:
                    self._calls[position] = len(self._calls)
                    events.append(c.ToolCallStart(index=self._calls[position],
                                                  call_id=str(call.get("id") or
                                                              f"call_{uuid.uuid4().hex[:24]}"),
                                                  name=str(function.get("name"))))
                if function.get("arguments"):
                    events.append(c.ToolCallDelta(index=self._calls[position],
                                                  arguments=str(function["arguments"])))
            if choice.get("finish_reason"):
                if self._reasoning:
                    self._reasoning = False
                    events.append(c.ReasoningDone())
                events.append(c.Finish(FINISH_FROM_CHAT.get(choice["finish_reason"], "stop")))
        usage = usage_wire.from_chat(chunk.get("usage"))
        if usage is not None:
            events.append(c.UsageReport(usage))
        return events


# --- canonical events -> client answer -----------------------------------------------------

class ChatEncoder:
    """Events -> Chat Completions chunks (``feed``/``close``) or one completion (``final``)."""

    def __init__(self, model: str, include_usage: bool, clean_xml_tools: bool = False) -> None:
        self.xml = XmlToolUseFilter() if clean_xml_tools else None
        self.id = "chatcmpl-" + uuid.uuid4().hex[:24]
        self.model = model
        self.created = int(time.time())
        self.include_usage = include_usage
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.refusal: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish: c.FinishReason | None = None
        self.usage: usage_wire.Usage | None = None
        self.cost: Decimal | None = None  # set: the usage chunk carries it (usage.cost)
        self.failure: c.Failure | None = None
        self._opened = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return encode({"id": self.id, "object": "chat.completion.chunk",
                       "created": self.created, "model": self.model,
                       "system_fingerprint": None,
                       "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                    "finish_reason": finish}]})

    def _open(self) -> bytes:
        if self._opened:
            return b""
        self._opened = True
        return self._chunk({"role": "assistant", "content": ""})

    def feed(self, event: c.Event) -> bytes:
        if isinstance(event, c.Start):
            return self._open()
        if isinstance(event, c.TextDelta):
            text = self.xml.feed(event.text) if self.xml is not None else event.text
            if not text:
                return self._open()
            self.text.append(text)
            return self._open() + self._chunk({"content": text})
        if isinstance(event, c.ReasoningDelta):
            self.reasoning.append(event.text)
            return self._open() + self._chunk({"reasoning_content": event.text})
        if isinstance(event, c.RefusalDelta):
            self.refusal.append(event.text)
            return self._open() + self._chunk({"refusal": event.text})
        if isinstance(event, c.ToolCallStart):
            call: dict[str, Any] = {"id": event.call_id, "name": event.name, "arguments": [],
                                    "kind": event.kind}
            self.calls[event.index] = call
            if event.kind == "custom":
                fragment: dict[str, Any] = {"index": event.index, "id": event.call_id,
                                            "type": "custom",
                                            "custom": {"name": event.name, "input": ""}}
            else:
                fragment = {"index": event.index, "id": event.call_id, "type": "function",
                            "function": {"name": event.name, "arguments": ""}}
            return self._open() + self._chunk({"tool_calls": [fragment]})
        if isinstance(event, c.ToolCallDelta):
            open_call = self.calls.get(event.index)
            if open_call is None:
                return b""
            open_call["arguments"].append(event.arguments)
            key = "custom" if open_call["kind"] == "custom" else "function"
            field = "input" if key == "custom" else "arguments"
            return self._chunk({"tool_calls": [{"index": event.index,
                                                key: {field: event.arguments}}]})
        if isinstance(event, c.Finish):
            self.finish = event.reason
        elif isinstance(event, c.UsageReport):
            self.usage = event.usage
        elif isinstance(event, c.Failure):
            self.failure = event
        return b""

    def relayed_text(self) -> str:
        args = ["".join(call["arguments"]) for _, call in sorted(self.calls.items())]
        return "".join([*self.reasoning, *self.text, *self.refusal, *args])

    def finish_reason(self) -> str:
        if self.finish in (None, "stop") and self.calls:
            return "tool_calls"
        return self.finish or "stop"

    def _flush_xml(self) -> bytes:
        tail = self.xml.flush() if self.xml is not None else ""
        if not tail:
            return b""
        self.text.append(tail)
        return self._chunk({"content": tail})

    def close(self) -> bytes:
        out = self._open() + self._flush_xml()
        if self.failure is not None:
            return out + encode({"error": {"message": self.failure.message,
                                           "type": "upstream_error", "param": None,
                                           "code": self.failure.code}})
        out += self._chunk({}, self.finish_reason())
        if self.include_usage:
            usage = usage_wire.to_chat(self.usage or usage_wire.Usage())
            if self.cost is not None:
                usage_wire.with_cost(usage, self.cost)
            out += encode({"id": self.id, "object": "chat.completion.chunk",
                           "created": self.created, "model": self.model,
                           "system_fingerprint": None, "choices": [], "usage": usage})
        return out + b"data: [DONE]\n\n"

    def final(self) -> dict[str, Any]:
        self._flush_xml()
        message: dict[str, Any] = {"role": "assistant",
                                   "content": "".join(self.text) if self.text or not self.calls
                                   else None,
                                   "refusal": "".join(self.refusal) or None,
                                   "annotations": []}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.calls:
            message["tool_calls"] = [
                {"id": call["id"], "type": "custom",
                 "custom": {"name": call["name"], "input": "".join(call["arguments"])}}
                if call["kind"] == "custom" else
                {"id": call["id"], "type": "function",
                 "function": {"name": call["name"], "arguments": "".join(call["arguments"])}}
                for _, call in sorted(self.calls.items())
            ]
        return {"id": self.id, "object": "chat.completion", "created": self.created,
                "model": self.model, "system_fingerprint": None,
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": self.finish_reason()}],
                "usage": usage_wire.to_chat(self.usage or usage_wire.Usage())}
