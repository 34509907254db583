"""``StoredRecord``: one stored /v1/responses answer as a document, the shape it has in Redis
(staged), in the writer's journal and, field for field, in ``gateway.models.StoredResponse``;
and the id helpers (input items get ids where the client sent none, as OpenAI's do).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import orjson

# Id prefixes of the input items Turnpike names, by item type (OpenAI's own spelling).
ITEM_PREFIXES = {
    "message": "msg",
    "function_call": "fc",
    "function_call_output": "fco",
    "custom_tool_call": "ctc",
    "custom_tool_call_output": "ctco",
    "reasoning": "rs",
    "compaction": "cmp",
}
# Roles whose string content OpenAI lists as input text, and the assistant's as output text.
INPUT_ROLES = ("user", "system", "developer")


def new_id(prefix: str) -> str:
    """An item id: 128 random bits from the process's generator (ids are names, not
    secrets; uuid4 reads the kernel's random source, a system call each, which showed in
    profiles of busy processes)."""
    return f"{prefix}_{random.getrandbits(128):032x}"


def _content_parts(role: str, content: Any) -> Any:
    """A message's string content as the typed parts OpenAI lists it with."""
    if not isinstance(content, str):
        return content
    kind = "output_text" if role == "assistant" else "input_text"
    part: dict[str, Any] = {"type": kind, "text": content}
    if kind == "output_text":
        part["annotations"] = []
    return [part]


def input_items(value: Any) -> list[dict[str, Any]]:
    """This turn's input as stored: a list of typed items, each with an id (the client's,
    or a new one). A bare string is one user message; an "easy" message without a type is a
    message; string content becomes typed parts. Anything else is kept as sent."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    if not isinstance(value, list):
        return []
    items: list[dict[str, Any]] = []
    for raw in value:
        if not isinstance(raw, dict):
            continue
        item = dict(raw)
        kind = item.get("type")
        if kind is None and "role" in item:
            kind = item["type"] = "message"
        if kind == "message":
            item["content"] = _content_parts(str(item.get("role", "user")), item.get("content"))
            item.setdefault("status", "completed")
        if not isinstance(item.get("id"), str) or not item["id"]:
            item = {"id": new_id(ITEM_PREFIXES.get(str(kind), "item")), **item}
        items.append(item)
    return items


def history_item(item: dict[str, Any]) -> dict[str, Any]:
    """An item as a later turn replays it: without its id, but for a reference (to an item
    Turnpike did not hold when it came: only its id says which)."""
    if item.get("type") == "item_reference":
        return item
    return {k: v for k, v in item.items() if k != "id"}


def keep_output(item: dict[str, Any]) -> bool:
    """Output items worth replaying: everything but a reasoning item without its encrypted
    content (nothing an upstream can take back)."""
    return item.get("type") != "reasoning" or bool(item.get("encrypted_content"))


def splice(arrays: list[bytes]) -> bytes:
    """JSON arrays joined into one, without parsing them."""
    inner = [a.strip()[1:-1].strip() for a in arrays]
    return b"[" + b",".join(part for part in inner if part) + b"]"


def epoch(when: datetime) -> float:
    return when.timestamp()


def from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@dataclass(slots=True)
class StoredRecord:
    """One response: what ``GET /v1/responses/{id}``, ``/input_items`` and
    ``previous_response_id`` read. Times are unix seconds (JSON-safe, cheap to compare)."""

    id: str
    tenant_id: int
    key_id: int | None
    created_at: float
    expires_at: float
    status: str
    model: str = ""
    background: bool = False
    previous_response_id: str | None = None
    ancestors: list[str] = field(default_factory=list)  # the chain before it, oldest first
    context_bytes: int = 0  # the whole conversation's items up to and including this one
    upstream_id: int | None = None
    credential_id: int | None = None
    request: dict[str, Any] = field(default_factory=dict)  # create parameters minus input
    input_items: list[dict[str, Any]] = field(default_factory=list)  # this turn's new input
    response: dict[str, Any] = field(default_factory=dict)  # the final response object
    events: list[Any] | None = None  # background runs only

    def expired(self, now: float) -> bool:
        return self.expires_at <= now

    def encode(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def decode(cls, raw: bytes | str) -> StoredRecord:
        return cls(**orjson.loads(raw))

    def history(self) -> list[dict[str, Any]]:
        """This turn as a later turn sends it upstream again: its input items, then the
        output items worth replaying, without ids (an upstream that does not keep responses
        would look them up and refuse: "Item with id … not found")."""
        output = self.response.get("output") or ()
        return [*(history_item(i) for i in self.input_items),
                *(history_item(i) for i in output if isinstance(i, dict) and keep_output(i))]

    def items(self) -> list[dict[str, Any]]:
        """Every item of this turn with its id: the input items, then the output items (what
        an ``item_reference`` may name). An input ``item_reference`` is not an item of its
        own: its id is the item it names, held by an earlier response."""
        output = self.response.get("output") or ()
        return [i for i in (*self.input_items, *output)
                if isinstance(i, dict) and isinstance(i.get("id"), str) and i["id"]
                and i.get("type") != "item_reference"]

    def history_json(self) -> bytes:
        """``history()`` as a JSON array: what the staged ``resp:{id}:items`` holds, so a
        conversation is expanded by splicing bytes, with one parse for the whole of it."""
        return orjson.dumps(self.history())

    # --- the database row ------------------------------------------------------------

    def row_values(self) -> dict[str, Any]:
        """Keyword arguments of ``StoredResponse`` (the model's field names)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["created_at"] = from_epoch(self.created_at)
        values["expires_at"] = from_epoch(self.expires_at)
        return values

    @classmethod
    def from_row(cls, row: Any) -> StoredRecord:
        return cls(**{f.name: getattr(row, f.name) for f in fields(cls)
                      if f.name not in ("created_at", "expires_at")},
                   created_at=epoch(row.created_at), expires_at=epoch(row.expires_at))


ROW_FIELDS = tuple(f.name for f in fields(StoredRecord))
