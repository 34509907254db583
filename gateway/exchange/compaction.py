"""The compaction path: Turnpike compacts for an upstream that cannot.

For /v1/responses/compact, or a Responses input ending in ``compaction_trigger``, when the
route's upstream has no native compaction: the history is summarised by the routed model
(one non-streamed call through the translated path's request builder) and the answer is
Turnpike's own compaction item, its summary sealed (``canonical.seal_compaction``).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.charging import Settlement
from gateway.context import RelayContext
from gateway.errors import UpstreamError
from gateway.exchange.translated import announce_cost, build_upstream_body, parse_client
from gateway.exchange.upstream import call_upstream, parse_answer, read_answer
from gateway.outcome import Outcome
from gateway.providers.decoding import EventDecoder
from gateway.respond import Send, end_stream, send_json, start_stream
from gateway.routing import Route
from gateway.translate import canonical as c
from gateway.translate import responses
from gateway.wire import usage as usage_wire

COMPACT_PROMPT = (
    "You are compacting a conversation so it can continue in a fresh context window. Write a "
    "handoff summary for another model: the user's goals and constraints, decisions made, work "
    "done so far (files, commands, results), open questions and the next steps. Be complete but "
    "concise; plain text."
)


def has_compaction_trigger(payload: dict[str, Any]) -> bool:
    """Whether a Responses input asks for compaction: its last item is a compaction_trigger."""
    items = payload.get("input")
    return (isinstance(items, list) and bool(items) and isinstance(items[-1], dict)
            and items[-1].get("type") == "compaction_trigger")


async def compact(ctx: RelayContext, out: Outcome, operation: str, route: Route,
                  payload: dict[str, Any], send: Send, settle: Settlement) -> None:
    """Summarise the history with the routed model and answer with a compaction item."""
    protocol = route.upstream.provider.protocol(operation)
    history = dict(payload)
    items = payload.get("input")
    if isinstance(items, list) and items and isinstance(items[-1], dict) and \
            items[-1].get("type") == "compaction_trigger":
        history["input"] = items[:-1]
    req = parse_client("responses", history)
    req.instructions = [COMPACT_PROMPT]
    req.items.append(c.Message(role="user", parts=[c.Part(
        "text", text="Write the handoff summary of the conversation above now.")]))
    req.tools, req.tool_choice, req.stream = [], None, False
    req.reasoning_effort = None
    body, _ = await build_upstream_body(ctx, operation, protocol, route, {}, req, raw=True,
                                        sealed=True)
    body["stream"] = False
    resp = await call_upstream(ctx, out, route, protocol, False, orjson.dumps(body))
    async with resp:
        events = EventDecoder(protocol).decode_body(
            parse_answer(out, resp, await read_answer(out, resp)))
    summary = "".join(e.text for e in events if isinstance(e, c.TextDelta))
    usage = next((e.usage for e in events if isinstance(e, c.UsageReport)), usage_wire.Usage())
    failure = next((e for e in events if isinstance(e, c.Failure)), None)
    if failure is not None or not summary:
        raise UpstreamError(failure.message if failure else "The model returned no summary.",
                            code=failure.code if failure else "compaction_failed")
    out.usage = usage
    out.served = True
    item = {"type": "compaction", "id": responses.new_id("cmp"),
            "encrypted_content": c.seal_compaction(summary)}
    if operation == "compact":
        # The user's messages, in the typed form the Responses output uses (clients such as
        # Codex deserialise the output as items).
        kept = [responses.item_to_responses(m) for m in parse_client(
            "responses", {"input": items}).items
            if isinstance(m, c.Message) and m.role == "user"] if items else []
        answer = {"id": item["id"], "object": "response.compaction",
                  "created_at": int(time.time()), "output": [*kept, item],
                  "usage": usage_wire.to_responses(usage)}
        await send_json(ctx, send, 200, orjson.dumps(answer), settle=settle)
        return
    encoder = responses.ResponsesEncoder(ctx.model)
    stream = b"".join(encoder.feed(e) for e in (c.Start(), c.OpaqueItem(item), c.Finish("stop"),
                                                  c.UsageReport(usage)))
    if ctx.stream:
        await announce_cost(out, encoder, settle)
        await start_stream(ctx, send)
        await end_stream(ctx, send, stream + encoder.close(), settle)
    else:
        await send_json(ctx, send, 200, orjson.dumps(encoder.final()), settle=settle)
