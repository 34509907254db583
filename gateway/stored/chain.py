"""``previous_response_id`` and the capture of a /v1/responses answer for the store.

``prepare()`` runs in the pipeline before routing, for every POST /v1/responses whose key
stores responses or that names a previous response, and leaves a ``Turn`` on the context:

    previous_response_id  looked up for the key's tenant (another tenant's, an unknown, a
                          deleted or an expired id: 404 ``previous_response_not_found``;
                          storage off for the key: 400). When the response was served by an
                          upstream that keeps responses itself (a provider with
                          ``stores_responses``) and that route is still routable, the
                          request goes there first, passed through as is (``run_pinned``);
                          otherwise, and for the other routes of a pinned request, the
                          conversation is expanded from Turnpike's store: every earlier
                          turn's input items and output items (reasoning with its
                          ``encrypted_content``; ids dropped), then the new input.
                          ``instructions`` are not carried over. The reservation estimate
                          counts the whole conversation.
    item_reference        every input item that names an earlier item by its id (the Vercel
                          AI SDK sends one for each answered assistant item while ``store`` is
                          on) is looked up in the tenant's stored responses
                          (``store.find_items``). A route gets the stored item in its place
                          (``body_for``; reasoning without its encrypted content is dropped, as
                          in an expansion), except a route to the upstream that served that
                          item's response when that upstream keeps responses itself: it gets
                          the reference. An id Turnpike does not hold stays a reference: an
                          upstream that keeps responses may know it, a translated route
                          answers 400. The turn is stored with the items it named.
    capture               the exchange hands the final response object over where it passes
                          (``capture``): a passthrough JSON body, a passthrough stream's
                          terminal event, the translated encoder's final response.
    stage                 run by the settlement, just before the answer's last bytes: the
                          record (this turn's input only, its ancestors, the route) goes to
                          ``gateway.stored.store.stage``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from gateway.errors import InvalidRequest, NotFound
from gateway.stored import store
from gateway.stored.records import StoredRecord, history_item, input_items, keep_output

if TYPE_CHECKING:
    from gateway.charging import Settlement
    from gateway.context import RelayContext
    from gateway.outcome import Outcome
    from gateway.respond import Send
    from gateway.routing import Route, UpstreamRef
    from keys.snapshots import KeySnapshot

DAY = 86400
# The status OpenAI-style clients get for an unknown previous_response_id (the issue asks
# for 404; OpenAI itself has been seen answering 400 with the same code).
PREVIOUS_NOT_FOUND_STATUS = 404


class PreviousResponseNotFound(NotFound):
    code = "previous_response_not_found"
    param = "previous_response_id"


def not_found(response_id: str) -> PreviousResponseNotFound:
    return PreviousResponseNotFound(f"Previous response with id '{response_id}' not found.",
                                    status=PREVIOUS_NOT_FOUND_STATUS)


def storage_off() -> InvalidRequest:
    return InvalidRequest(
        "Response storage is off for this API key (zero data retention), so "
        "previous_response_id cannot be used: send the whole conversation in 'input' "
        "instead.", code="response_storage_disabled", param="previous_response_id")


@dataclass(slots=True)
class Turn:
    """One /v1/responses request as the store sees it."""

    tenant_id: int
    key_id: int
    store_days: int  # 0: nothing is stored (the record is still built, for a caller's own use)
    storing: bool  # the key stores and the client did not send store: false
    payload: dict[str, Any]  # the client's body as sent
    body: bytes
    items: list[dict[str, Any]]  # this turn's input, as stored (with ids)
    previous: StoredRecord | None = None
    pin: str | None = None  # the route binding ("upstream:credential") to pass through on
    expanded: tuple[dict[str, Any], bytes] | None = None
    response: dict[str, Any] | None = None  # the final response object, once captured
    passthrough: bool = False  # captured on a passthrough path (the upstream's own id)
    route: Route | None = None  # where it was served
    history: bytes | None = None  # the record's history_json(), once built
    # The items the input's item_references name that the store holds, by id, each with
    # the response it belongs to (``store.find_items``); None: the input names none.
    references: dict[str, tuple[dict[str, Any], StoredRecord]] | None = None

    # --- the upstream body -------------------------------------------------------------

    async def expand(self) -> tuple[dict[str, Any], bytes]:
        """The body with the whole conversation in ``input`` and no previous_response_id."""
        if self.expanded is None:
            prev = self.previous
            assert prev is not None
            self.expanded = expanded_body(self.payload, await store.history(prev))
        return self.expanded

    def body_for(self, upstream: UpstreamRef, payload: dict[str, Any],
                 body: bytes) -> tuple[dict[str, Any], bytes]:
        """The body ``upstream`` gets: each item_reference the store resolved replaced by
        its item, but for an upstream that keeps responses and served that item's response
        (it knows the id)."""
        refs = self.references
        if not refs:
            return payload, body
        keeps = upstream.provider.stores_responses
        swap = {i: item for i, (item, record) in refs.items()
                if not (keeps and record.upstream_id == upstream.id)}
        new = resolved_input(payload.get("input"), swap)
        if new is None:
            return payload, body
        out = {**payload, "input": new}
        return out, orjson.dumps(out)

    def references_bytes(self) -> int:
        """What the resolved items add to the body at most (the reservation estimate)."""
        return sum(len(orjson.dumps(item)) for item, _ in (self.references or {}).values())

    # --- the record --------------------------------------------------------------------

    def record(self, now: float | None = None) -> StoredRecord | None:
        """The record of the captured response (None when nothing was captured)."""
        import time

        response = self.response
        if not isinstance(response, dict):
            return None
        rid = response.get("id")
        if not isinstance(rid, str) or not rid or len(rid) > 100:
            return None
        created = response.get("created_at")
        created_at = float(created) if isinstance(created, (int, float)) and \
            not isinstance(created, bool) else (now or time.time())
        prev = self.previous
        if prev is not None and response.get("previous_response_id") is None:
            response = {**response, "previous_response_id": prev.id}
        route = self.route
        # Kept for the retention from now (an upstream's clock says nothing about when it
        # was stored).
        record = StoredRecord(
            id=rid, tenant_id=self.tenant_id, key_id=self.key_id, created_at=created_at,
            expires_at=(now or time.time()) + max(self.store_days, 1) * DAY,
            status=str(response.get("status") or "completed"),
            model=str(response.get("model") or self.payload.get("model") or "")[:200],
            background=bool(self.payload.get("background")),
            previous_response_id=prev.id if prev is not None else None,
            ancestors=[*prev.ancestors, prev.id] if prev is not None else [],
            upstream_id=route.upstream.id if route is not None else None,
            credential_id=route.credential.id if route is not None and route.credential
            else None,
            request={k: v for k, v in self.payload.items() if k != "input"},
            input_items=self.items, response=response)
        self.history = record.history_json()
        record.context_bytes = (prev.context_bytes if prev is not None else 0) + \
            len(self.history)
        return record

    def pin_for(self, record: StoredRecord) -> str | None:
        """The pin to keep: the route, when its upstream keeps the response itself."""
        route = self.route
        if not self.passthrough or route is None or \
                not route.upstream.provider.stores_responses:
            return None
        return f"{self.tenant_id}:{route.binding}"

    async def stage(self) -> None:
        """Store the captured response (the settlement's companion; never raises)."""
        if not self.storing:
            return
        try:
            record = self.record()
        except Exception:  # a malformed answer must not break the settlement
            import logging

            logging.getLogger(__name__).exception("could not build the stored response")
            return
        if record is not None:
            await store.stage(record, self.pin_for(record), self.history)


def expanded_body(payload: dict[str, Any],
                  history: list[dict[str, Any]]) -> tuple[dict[str, Any], bytes]:
    """``payload`` with ``history`` (the earlier turns' items, oldest first) before its own
    input, and without previous_response_id."""
    new = payload.get("input")
    if isinstance(new, str):
        new = [{"role": "user", "content": new}]
    elif not isinstance(new, list):
        new = []
    body = {k: v for k, v in payload.items() if k != "previous_response_id"}
    body["input"] = [*history, *new]
    return body, orjson.dumps(body)


def item_references(value: Any) -> list[str]:
    """The ids the input's ``item_reference`` items name, in order, once each."""
    if not isinstance(value, list):
        return []
    return list(dict.fromkeys(
        i["id"] for i in value if isinstance(i, dict) and i.get("type") == "item_reference"
        and isinstance(i.get("id"), str) and i["id"]))


def resolved_input(value: Any, swap: dict[str, dict[str, Any]]) -> list[Any] | None:
    """``value`` with each item_reference to an id of ``swap`` replaced by that item as an
    expansion replays it (no id; a reasoning item without its encrypted content left out);
    None when it names none of them."""
    if not swap or not isinstance(value, list):
        return None
    out: list[Any] = []
    changed = False
    for item in value:
        if isinstance(item, dict) and item.get("type") == "item_reference" and \
                item.get("id") in swap:
            changed = True
            found = swap[item["id"]]
            if keep_output(found):
                out.append(history_item(found))
        else:
            out.append(item)
    return out if changed else None


# --- the pipeline's step -------------------------------------------------------------------

async def prepare(ctx: RelayContext, key: KeySnapshot, payload: dict[str, Any], body: bytes,
                  candidates: list[UpstreamRef]) -> tuple[dict[str, Any], bytes, int]:
    """(the body to route and admit, its bytes, its size for the reservation estimate)."""
    prev_id = payload.get("previous_response_id")
    storing = key.store_days > 0 and payload.get("store") is not False
    # (Looked for in the bytes first: most requests name none, and an agent's input holds
    # hundreds of items.)
    refs = item_references(payload.get("input")) if b"item_reference" in body else []
    if prev_id is None and not storing and not refs:
        return payload, body, len(body)
    turn = Turn(tenant_id=key.tenant_id, key_id=key.key_id, store_days=key.store_days,
                storing=storing, payload=payload, body=body,
                items=input_items(payload.get("input")))
    ctx.turn = turn
    if refs:
        found = turn.references = await store.find_items(refs, key.tenant_id)
        # Stored as the items named, so the turn stands on its own (its input items, a
        # later expansion of it); a reference Turnpike did not hold stays one.
        turn.items = [found[i["id"]][0] if i.get("type") == "item_reference"
                      and i.get("id") in found else i for i in turn.items]
    if prev_id is None:
        return payload, body, len(body) + turn.references_bytes()
    assert isinstance(prev_id, str)  # gateway.validate checked the type
    if key.store_days <= 0:
        raise storage_off()
    prev, pin = await store.lookup(prev_id, key.tenant_id)
    if prev is None or prev.tenant_id != key.tenant_id:
        raise not_found(prev_id)
    turn.previous = prev
    turn.pin = pinned_route(pin, key.tenant_id, candidates)
    if turn.pin is not None:
        # Passed through as is; the upstream counts the whole conversation it keeps.
        return payload, body, len(body) + prev.context_bytes + turn.references_bytes()
    expanded, raw = await turn.expand()
    return expanded, raw, len(raw) + turn.references_bytes()


def pinned_route(pin: str | None, tenant_id: int,
                 candidates: list[UpstreamRef]) -> str | None:
    """The pin's route binding if it is this tenant's and still routable for the model."""
    if not pin:
        return None
    owner, _, binding = pin.partition(":")
    if owner != str(tenant_id):
        return None
    upstream_id, _, credential_id = binding.partition(":")
    for upstream in candidates:
        if str(upstream.id) != upstream_id or not upstream.provider.stores_responses:
            continue
        if credential_id == "0" and not upstream.credentials:
            return binding
        if any(str(c.id) == credential_id for c in upstream.credentials):
            return binding
    return None


async def run_pinned(ctx: RelayContext, operation: str, routes: list[Route],
                     payload: dict[str, Any], body: bytes, out: Outcome, send: Send,
                     settle: Settlement) -> Outcome:
    """The exchange of a pinned request: its route first with the body as sent (the
    upstream holds the conversation). Should that route fail before the answer starts, the
    other routes get the conversation expanded; should the upstream no longer know the
    response (``previous_response_not_found``: it expired or was deleted there), every
    route does, that one included."""
    from gateway import exchange
    from gateway.errors import UpstreamUnavailable
    from gateway.providers.failures import UpstreamFailed

    turn = ctx.turn
    assert turn is not None and turn.pin is not None
    first = [r for r in routes if r.binding == turn.pin]
    rest = [r for r in routes if r.binding != turn.pin]
    if first:
        try:
            return await exchange.run(ctx, operation, first, payload, body, out, send,
                                      settle)
        except (UpstreamFailed, UpstreamUnavailable) as exc:
            if ctx.status:
                raise
            if isinstance(exc, UpstreamFailed) and \
                    exc.error.code == "previous_response_not_found":
                rest = [*first, *rest]
            elif not rest or (isinstance(exc, UpstreamFailed) and exc.failure.retry is None):
                raise
    expanded, raw = await turn.expand()
    turn.pin = None
    return await exchange.run(ctx, operation, rest, expanded, raw, out, send, settle)


# --- the exchange's hooks --------------------------------------------------------------------

def capture(ctx: RelayContext, response: Any, *, passthrough: bool) -> None:
    """The exchange's hook: the final response object of a /v1/responses answer."""
    turn = ctx.turn
    if turn is not None and isinstance(response, dict):
        turn.response = response
        turn.passthrough = passthrough
        turn.route = ctx.outcome.route


def echo(ctx: RelayContext) -> dict[str, Any]:
    """What a translated Response object says of the store: its previous_response_id (gone
    from the expanded body) and whether it is stored."""
    turn = ctx.turn
    if turn is None:  # nothing is stored (storage off for the key, or store: false)
        return {"store": False}
    out: dict[str, Any] = {"store": turn.storing}
    if turn.previous is not None:
        out["previous_response_id"] = turn.previous.id
    return out
