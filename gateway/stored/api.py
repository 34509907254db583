"""The stored-response endpoints of /v1 (in the lean ASGI app; the pipeline authenticates
the key and renders errors and the usage row):

    GET    /v1/responses/{id}               the response (``include[]`` as OpenAI documents)
    DELETE /v1/responses/{id}               ``{"id", "object": "response.deleted", "deleted"}``
    GET    /v1/responses/{id}/input_items   OpenAI's list: ``object``, ``data``, ``first_id``,
                                            ``last_id``, ``has_more``; ``after``, ``before``,
                                            ``limit`` (1-100, 20), ``order`` (asc|desc, desc)
    POST   /v1/responses/{id}/cancel        background responses (gateway.stored.background)

A response id is visible to its own tenant only: anyone else gets the 404 an id that never
existed gets, word for word. ``GET ?stream=true`` replays a background response's events
(gateway.stored.background); for any other response it is a 400, as is a cancel.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson

from gateway.errors import InvalidRequest, MethodNotAllowed, NotFound
from gateway.respond import Receive, Send, send_json
from gateway.stored import store
from gateway.stored.records import StoredRecord

# OpenAI's ResponseIncludable values; anything else is a 400.
INCLUDABLE = frozenset({
    "file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
    "message.input_image.image_url", "computer_call_output.output.image_url",
    "code_interpreter_call.outputs", "reasoning.encrypted_content",
    "message.output_text.logprobs",
})
LIMIT_DEFAULT, LIMIT_MAX = 20, 100
TRUE = ("true", "1", "yes")


def not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.")


def query_of(scope: dict[str, Any]) -> list[tuple[str, str]]:
    return parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)


def include_of(query: list[tuple[str, str]]) -> frozenset[str]:
    """``include[]=a&include[]=b`` (the SDKs' form), ``include=a`` or ``include=a,b``."""
    asked: set[str] = set()
    for name, value in query:
        if name in ("include", "include[]"):
            asked.update(v.strip() for v in value.split(",") if v.strip())
    unknown = sorted(asked - INCLUDABLE)
    if unknown:
        raise InvalidRequest(
            f"Invalid value for 'include': {', '.join(repr(u) for u in unknown)}. Supported "
            f"values are: {', '.join(sorted(INCLUDABLE))}.", param="include")
    return frozenset(asked)


def one(query: list[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in query if k == name]
    return values[-1] if values else None


def shown(item: Any, include: frozenset[str]) -> Any:
    """An item as the client reads it back: a reasoning item's ``encrypted_content`` only
    when ``include`` asks for it (as OpenAI does)."""
    if isinstance(item, dict) and item.get("type") == "reasoning" and \
            "encrypted_content" in item and "reasoning.encrypted_content" not in include:
        return {k: v for k, v in item.items() if k != "encrypted_content"}
    return item


def response_body(record: StoredRecord, include: frozenset[str]) -> dict[str, Any]:
    response = dict(record.response)
    output = response.get("output")
    if isinstance(output, list):
        response["output"] = [shown(i, include) for i in output]
    return response


async def serve(ctx: Any, key: Any, scope: dict[str, Any], kwargs: dict[str, Any],
                receive: Receive, send: Send) -> None:
    """Answer one stored-response request (the key is authenticated)."""
    response_id = str(kwargs.get("response_id") or "")
    sub = kwargs.get("sub")
    method = scope["method"]
    query = query_of(scope)
    if sub is None:
        ctx.endpoint = "responses/retrieve" if method != "DELETE" else "responses/delete"
        if method == "GET":
            await retrieve(ctx, key, response_id, query, send, receive)
        elif method == "DELETE":
            await remove(ctx, key, response_id, send)
        else:
            raise MethodNotAllowed(f"Use GET or DELETE for this path, not {method}.")
    elif sub == "input_items":
        ctx.endpoint = "responses/input_items"
        if method != "GET":
            raise MethodNotAllowed(f"Use GET for this path, not {method}.")
        await list_input_items(ctx, key, response_id, query, send)
    else:
        ctx.endpoint = "responses/cancel"
        if method != "POST":
            raise MethodNotAllowed(f"Use POST for this path, not {method}.")
        await cancel(ctx, key, response_id, scope, receive, send)


async def found(key: Any, response_id: str) -> StoredRecord:
    record = await store.get(response_id, key.tenant_id) if response_id else None
    if record is None:
        raise not_found(response_id)
    return record


async def retrieve(ctx: Any, key: Any, response_id: str, query: list[tuple[str, str]],
                   send: Send, receive: Receive | None = None) -> None:
    include = include_of(query)
    record = await found(key, response_id)
    if (one(query, "stream") or "").lower() in TRUE:
        if not record.background:
            raise InvalidRequest(
                "Only a background response (created with background=true) can be "
                "streamed again; read this one without stream=true.", param="stream")
        from gateway.stored import background

        await background.replay(ctx, key, record, query, send, receive)
        return
    await send_json(ctx, send, 200, orjson.dumps(response_body(record, include)))


async def remove(ctx: Any, key: Any, response_id: str, send: Send) -> None:
    record = await found(key, response_id)
    await store.delete(record)
    await send_json(ctx, send, 200, orjson.dumps(
        {"id": record.id, "object": "response.deleted", "deleted": True}))


async def cancel(ctx: Any, key: Any, response_id: str, scope: dict[str, Any],
                 receive: Receive, send: Send) -> None:
    record = await found(key, response_id)
    if not record.background:
        raise InvalidRequest("Only responses created with background=true can be "
                             "cancelled.")
    from gateway.stored import background

    await background.cancel(ctx, key, record, send)


def page_limit(query: list[tuple[str, str]]) -> int:
    raw = one(query, "limit")
    if raw is None or raw == "":
        return LIMIT_DEFAULT
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= LIMIT_MAX:
        raise InvalidRequest(f"Invalid 'limit': {raw!r}. It must be a whole number from 1 to "
                             f"{LIMIT_MAX}.", param="limit")
    return limit


async def input_items_of(record: StoredRecord) -> list[dict[str, Any]]:
    """Every item the response had as input, oldest first: the earlier turns' input and
    output items (as OpenAI lists a response continued with previous_response_id), then
    its own input."""
    items: list[dict[str, Any]] = []
    if record.ancestors:
        for turn in await store.chain(record):
            items.extend(turn.input_items)
            items.extend(i for i in turn.response.get("output") or () if isinstance(i, dict))
    items.extend(record.input_items)
    return items


async def list_input_items(ctx: Any, key: Any, response_id: str,
                           query: list[tuple[str, str]], send: Send) -> None:
    include = include_of(query)
    limit = page_limit(query)
    order = one(query, "order") or "desc"
    if order not in ("asc", "desc"):
        raise InvalidRequest(f"Invalid 'order': {order!r}. It must be 'asc' or 'desc'.",
                             param="order")
    after, before = one(query, "after") or None, one(query, "before") or None
    record = await found(key, response_id)
    items = await input_items_of(record)
    if order == "desc":
        items.reverse()
    ids = [i.get("id") for i in items]
    window = items
    if after is not None:
        if after not in ids:
            raise InvalidRequest(f"No input item with id '{after}' in this response.",
                                 param="after")
        window = items[ids.index(after) + 1:]
    if before is not None:
        if before not in ids:
            raise InvalidRequest(f"No input item with id '{before}' in this response.",
                                 param="before")
        cut = [i.get("id") for i in window]
        window = window[:cut.index(before)] if before in cut else []
        page = window[-limit:]
    else:
        page = window[:limit]
    data = [shown(i, include) for i in page]
    await send_json(ctx, send, 200, orjson.dumps({
        "object": "list", "data": data,
        "first_id": data[0].get("id") if data else None,
        "last_id": data[-1].get("id") if data else None,
        "has_more": len(window) > len(page),
    }))
