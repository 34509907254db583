"""Every Redis key Turnpike writes: its name is built here, and parsed back here.

A name is settings.GATEWAY_REDIS_PREFIX (``gw:``) followed by ``:``-joined parts, the
tenant-scoped ones with a hash tag ``{<group>}`` right after the prefix. These strings are
what running deployments hold in Redis (balances, the journal of usage rows not yet
written), so a name changed here strands its data under the old one (see ``legacy_*``).

Hash tags (Redis Cluster, REDIS_CLUSTER): a Lua script or a MULTI may only touch keys of one
hash slot, so every script Turnpike runs gets keys sharing one tag. A tenant belongs to one
of GROUPS groups (``tenant_id % GROUPS``); every key of the tenant and of its API keys is
tagged with its group's tag (``group_tag``), and so are the structures the admit and settle
scripts touch besides the tenant's own: the usage journal and the credential cool-downs
exist once per group (the journal's writers drain every group; a cool-down is written to
every group, so each admit reads the cool-downs in its own slot and stays one round trip).
The tags are chosen so the GROUPS slots are spread evenly over the slot range (a cluster's
masters own contiguous ranges). The stored responses and background runs share one fixed
tag (their scripts touch a response's keys and the store's journal, leases and deletions
together), and the captured bodies' journal another: each lives in one slot. Without a
cluster the same names are used.

    {G}rpm:<key>                  zset  the key's requests of the last 60 s (the limiter)
    {G}rpd:<key>:<YYYYMMDD>       str   the key's requests that local day
    {G}tpm:<key>                  hash  the key's tokens per 10 s bucket
    {G}conc:<key>                 zset  the key's concurrency leases
    {G}sticky:<key>:<session|->   str   a session's route binding
    {G}cool                       hash  credential id -> when its cool-down ends (ms), per group
    crpm:<credential>:<minute>    str   a credential's requests that minute
    {G}acct:<tenant|key>:<id>     hash  ``avail``: the account's micro-units
    {G}resv:<tenant>              zset  the tenant's reservations in flight
    {G}reclaimed:<tenant>         zset  reservations given back after their lease ran out
    {G}unposted:<tenant|key>:<id> hash  costs settled whose usage rows are not yet written
    {G}usage:spool                list  the usage journal of the group (billing.usage)
    {G}usage:claims               zset  batches claimed by a writer, by claim time
    {G}usage:claim:<id>           list  one claimed batch
    usage:dead                    list  rows the database refused, for an operator
    opsalert:spool                hash  the usage journal's oldest row and since when (alerts)
    {store}resp:<id>[:items|:deleted]  str  a stored response staged for its writer
                                        (gateway.stored)
    {store}rpin:<id>              str   the route of a response its upstream stores itself
    {store}store:journal, {store}store:claims…  list  the stored responses' journal
                                        (portal.infra.journal)
    {store}store:deleted          ...   deletions waiting for the store's writer
    {capture}capture:journal, …   list  captured bodies waiting for their writer
                                        (gateway.capture.store)
    {store}bg:<id>, …:events      hash, stream  a background response's run
                                        (gateway.stored.runs)
    {store}bg:leases              zset  running background responses by lease end
    snap:<cache>:<ident>          str   a LayeredCache snapshot (portal.infra.snapshots)
    cache…, chan…                       Django's cache and the channel layer (their prefixes)

``{G}`` is the tenant's group tag (``group_tag(tenant_id)``); a key's names carry its
tenant's. Names of releases before the tags (``usage:spool``, ``unposted:…``) are built by
the ``legacy_*`` builders: the usage writers still drain a journal left under them.

Lua scripts get their keys in KEYS[], built here. Where a script can only learn a name
while it runs (the key account of a reservation it gives back, a claim list named in the
claims zset), it gets the name's prefix from here in ARGV (``account_prefix("key")``,
``claim_prefix()``) and appends the id.

Every builder takes ``prefix=`` for a tool that reads another process's keys without this
process's settings (the soak's driver); everything else uses the settings' prefix.
"""

from __future__ import annotations

import re

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from portal.infra.hotsettings import hot

Ident = int | str

# How many groups the tenants are spread over (their keys' hash tags). Changing it renames
# every tenant-scoped key: a constant, not a setting.
GROUPS = 16


def _balanced_tags(count: int) -> tuple[str, ...]:
    """One tag per group, group i's in the i-th of ``count`` equal slot ranges: a cluster's
    masters own contiguous ranges, so the groups spread over them evenly. Deterministic
    (CRC16), the same in every process and release."""
    tags = []
    for group in range(count):
        low = group * REDIS_CLUSTER_HASH_SLOTS // count
        high = (group + 1) * REDIS_CLUSTER_HASH_SLOTS // count
        n = 0
        while not low <= key_slot(f"g{group}.{n}".encode()) < high:
            n += 1
        tags.append(f"{{g{group}.{n}}}")
    return tuple(tags)


TAGS = _balanced_tags(GROUPS)
STORE_TAG = "{store}"
CAPTURE_TAG = "{capture}"


def group_of(tenant_id: Ident) -> int:
    return int(tenant_id) % GROUPS


def group_tag(tenant_id: Ident) -> str:
    """The hash tag of every key of the tenant (and of its API keys)."""
    return TAGS[group_of(tenant_id)]


def slot(name: str | bytes) -> int:
    """The cluster hash slot of a key name (CRC16 of its hash tag, as Redis computes it)."""
    return int(key_slot(name.encode() if isinstance(name, str) else name))


def _p(prefix: str | None) -> str:
    """``prefix``, or the settings' (read once, through ``hot``: a request builds ~20 names,
    and each read of ``settings`` goes through Django's lazy settings object)."""
    return prefix if prefix is not None else hot.GATEWAY_REDIS_PREFIX


def prefix() -> str:
    """The prefix every name starts with (settings.GATEWAY_REDIS_PREFIX, read once)."""
    return hot.GATEWAY_REDIS_PREFIX


def _t(tenant: Ident, prefix: str | None) -> str:
    """The prefix and the tenant group's tag."""
    return f"{_p(prefix)}{group_tag(tenant)}"


# --- the limiter (keys/limits.py, keys/lua/) -------------------------------------------------

# A key's names take its tenant (``tenant=``): they carry the tenant group's hash tag.

def rpm(key_id: Ident, *, tenant: Ident, prefix: str | None = None) -> str:
    return f"{_t(tenant, prefix)}rpm:{key_id}"


def rpd(key_id: Ident, day: str, *, tenant: Ident, prefix: str | None = None) -> str:
    """``day``: the local calendar day, ``YYYYMMDD``."""
    return f"{_t(tenant, prefix)}rpd:{key_id}:{day}"


def tpm(key_id: Ident, *, tenant: Ident, prefix: str | None = None) -> str:
    return f"{_t(tenant, prefix)}tpm:{key_id}"


def concurrency(key_id: Ident, *, tenant: Ident, prefix: str | None = None) -> str:
    return f"{_t(tenant, prefix)}conc:{key_id}"


def sticky(key_id: Ident, session: str | None, *, tenant: Ident,
           prefix: str | None = None) -> str:
    """Sessions are per key, so two tenants' equal session ids never share a binding."""
    return f"{_t(tenant, prefix)}sticky:{key_id}:{session or '-'}"


def cooldowns(group: int, *, prefix: str | None = None) -> str:
    """The credential cool-downs as group ``group``'s admit scripts read them (every group
    holds every cool-down: ``all_cooldowns``)."""
    return f"{_p(prefix)}{TAGS[group]}cool"


def all_cooldowns(*, prefix: str | None = None) -> list[str]:
    return [cooldowns(g, prefix=prefix) for g in range(GROUPS)]


def credential_rpm(credential_id: Ident, minute: int, *, prefix: str | None = None) -> str:
    return f"{_p(prefix)}crpm:{credential_id}:{minute}"


def account_prefix(kind: str, *, tenant: Ident, prefix: str | None = None) -> str:
    """``kind``: "tenant" or "key"; ``tenant``: the account's tenant (a key's tenant)."""
    return f"{_t(tenant, prefix)}acct:{kind}:"


def account(kind: str, ident: Ident, *, tenant: Ident | None = None,
            prefix: str | None = None) -> str:
    """``tenant``: a key account's tenant (a tenant account's is its own id)."""
    owner = ident if kind == "tenant" else tenant
    if owner is None:
        raise ValueError("a key account's name needs its tenant")
    return f"{account_prefix(kind, tenant=owner, prefix=prefix)}{ident}"


def reservations(tenant_id: Ident, *, prefix: str | None = None) -> str:
    """A zset of ``keys.limits.reservation_member`` strings scored by lease expiry."""
    return f"{_t(tenant_id, prefix)}resv:{tenant_id}"


def reclaimed(tenant_id: Ident, *, prefix: str | None = None) -> str:
    """Request id -> when its reservation was given back: a settle that still comes knows
    to charge its whole cost."""
    return f"{_t(tenant_id, prefix)}reclaimed:{tenant_id}"


def unposted(kind: str, ident: Ident, *, tenant: Ident | None = None,
             prefix: str | None = None) -> str:
    """Request id -> micro-units: the settle script adds, the row's writer removes."""
    owner = ident if kind == "tenant" else tenant
    if owner is None:
        raise ValueError("a key's unposted costs' name needs its tenant")
    return f"{_t(owner, prefix)}unposted:{kind}:{ident}"


# --- the usage journal (billing/usage.py) ---------------------------------------------------

def journal(group: int, *, prefix: str | None = None) -> str:
    """Group ``group``'s usage journal (its tenants' settle scripts append to it). Named
    "spool" for the rows it held before it was a journal."""
    return f"{_p(prefix)}{TAGS[group]}usage:spool"


def _journal_head(journal: str, group: int | None, prefix: str | None) -> str:
    if journal == "usage":
        if group is None:
            raise ValueError("the usage journal's claims are per group")
        return f"{_p(prefix)}{TAGS[group]}usage"
    tag = {"store": STORE_TAG, "capture": CAPTURE_TAG}.get(journal, "")
    return f"{_p(prefix)}{tag}{journal}"


def claims(*, journal: str = "usage", group: int | None = None,
           prefix: str | None = None) -> str:
    """``journal``: whose claims (``usage`` with its ``group``, ``store`` for stored
    responses, ``capture`` for captured bodies); in the journal's slot."""
    return f"{_journal_head(journal, group, prefix)}:claims"


def claim_prefix(*, journal: str = "usage", group: int | None = None,
                 prefix: str | None = None) -> str:
    return f"{_journal_head(journal, group, prefix)}:claim:"


def claim(claim_id: str, *, journal: str = "usage", group: int | None = None,
          prefix: str | None = None) -> str:
    return f"{claim_prefix(journal=journal, group=group, prefix=prefix)}{claim_id}"


def usage_journals(*, prefix: str | None = None) -> list[tuple[str, str, str]]:
    """(journal, claims zset, claim prefix) of every usage journal: each group's, then the
    one of the names before the tags (tools that count what waits)."""
    out = [(journal(g, prefix=prefix), claims(group=g, prefix=prefix),
            claim_prefix(group=g, prefix=prefix)) for g in range(GROUPS)]
    out.append((legacy_journal(prefix=prefix), legacy_claims(prefix=prefix),
                legacy_claim_prefix(prefix=prefix)))
    return out


# Names before the hash tags: a deployment upgrading holds its journal of unwritten rows
# (and their unposted costs) under these; the usage writers drain it (never with a cluster:
# a cluster starts with the tagged names).

def legacy_journal(*, prefix: str | None = None) -> str:
    return f"{_p(prefix)}usage:spool"


def legacy_claims(*, prefix: str | None = None) -> str:
    return f"{_p(prefix)}usage:claims"


def legacy_claim_prefix(*, prefix: str | None = None) -> str:
    return f"{_p(prefix)}usage:claim:"


def legacy_unposted(kind: str, ident: Ident, *, prefix: str | None = None) -> str:
    return f"{_p(prefix)}unposted:{kind}:{ident}"


def legacy_store_journal(journal: str, *, prefix: str | None = None) -> tuple[str, str, str]:
    """(list, claims zset, claim prefix) of the stored responses' (``store``) or captured
    bodies' (``capture``) journal under the names before the hash tags."""
    head = f"{_p(prefix)}{journal}"
    return f"{head}:journal", f"{head}:claims", f"{head}:claim:"


def dead_rows(*, prefix: str | None = None) -> str:
    return f"{_p(prefix)}usage:dead"


def opsalert_spool(*, prefix: str | None = None) -> str:
    """The usage journal's oldest row when first seen there (gateway.opsalerts)."""
    return f"{_p(prefix)}opsalert:spool"


# --- stored responses (gateway/stored/) ------------------------------------------------------

def stored_response(response_id: str, *, prefix: str | None = None) -> str:
    """A staged response document, until the store's writer has put it in the database."""
    return f"{_p(prefix)}{STORE_TAG}resp:{response_id}"


def stored_items(response_id: str, *, prefix: str | None = None) -> str:
    return f"{_p(prefix)}{STORE_TAG}resp:{response_id}:items"


def stored_item(tenant_id: int, item_id: str, *, prefix: str | None = None) -> str:
    """The response of a tenant's that an item (input or output, by its id) belongs to,
    while that response is staged: what an ``item_reference`` is resolved by before the
    database has the row. Per tenant: a client chooses its input items' ids."""
    return f"{_p(prefix)}{STORE_TAG}item:{tenant_id}:{item_id}"


def stored_deleted(response_id: str, *, prefix: str | None = None) -> str:
    return f"{_p(prefix)}{STORE_TAG}resp:{response_id}:deleted"


def response_pin(response_id: str, *, prefix: str | None = None) -> str:
    """The route (upstream, credential) of a response an upstream stores itself."""
    return f"{_p(prefix)}{STORE_TAG}rpin:{response_id}"


def store_journal(*, prefix: str | None = None) -> str:
    return f"{_p(prefix)}{STORE_TAG}store:journal"


def store_deletions(*, prefix: str | None = None) -> str:
    return f"{_p(prefix)}{STORE_TAG}store:deleted"


# --- body capture (gateway/capture/) ----------------------------------------------------------

def capture_journal(*, prefix: str | None = None) -> str:
    """list: captured request and response bodies (redacted) waiting for their writer."""
    return f"{_p(prefix)}{CAPTURE_TAG}capture:journal"


# --- background responses (gateway/stored/runs.py) ----------------------------------------

def background_run(response_id: str, *, prefix: str | None = None) -> str:
    """hash: a background response's status, lease and cancel flag while it runs."""
    return f"{_p(prefix)}{STORE_TAG}bg:{response_id}"


def background_events(response_id: str, *, prefix: str | None = None) -> str:
    """stream: a background response's events, for polling and resumed streams."""
    return f"{_p(prefix)}{STORE_TAG}bg:{response_id}:events"


def background_leases(*, prefix: str | None = None) -> str:
    """zset: running background responses by when their lease ends (the reaper reads it)."""
    return f"{_p(prefix)}{STORE_TAG}bg:leases"


# --- snapshots, and the prefixes handed to Django's cache and the channel layer -------------

def snapshot(cache: str, ident: Ident, *, prefix: str | None = None) -> str:
    return f"{_p(prefix)}snap:{cache}:{ident}"


def cache_prefix(prefix: str) -> str:
    """The Django cache's KEY_PREFIX (the settings pass their own GATEWAY_REDIS_PREFIX)."""
    return f"{prefix}cache"


def channel_prefix(prefix: str) -> str:
    """channels-redis's prefix for the live usage groups."""
    return f"{prefix}chan"


# --- parsing names back (SCAN patterns and what they match) ---------------------------------

_GLOB_SPECIAL = re.compile(r"([\\*?\[\]])")
_DAY = re.compile(r"[0-9]{8}")


def _glob(head: str) -> str:
    """A SCAN pattern for every name starting with ``head`` (glob characters in the prefix
    escaped, so a prefix such as ``a*[`` matches only itself)."""
    return _GLOB_SPECIAL.sub(r"\\\1", head) + "*"


def _tail(name: bytes | str, head: str) -> str | None:
    text = name.decode() if isinstance(name, bytes) else name
    return text[len(head):] if text.startswith(head) else None


def _number(tail: str | None) -> int | None:
    return int(tail) if tail and tail.isascii() and tail.isdigit() else None


def _tagged_glob(rest: str) -> str:
    """A SCAN pattern for tenant-scoped names of every group: prefix, a tag, ``rest``."""
    return _GLOB_SPECIAL.sub(r"\\\1", _p(None)) + "{g*}" + _glob(rest)


def _untag(name: bytes | str) -> str | None:
    """A tenant-scoped name without its prefix and group tag; None for any other name."""
    tail = _tail(name, _p(None))
    if tail is None or not tail.startswith("{"):
        return None
    tag, sep, rest = tail.partition("}")
    return rest if sep and f"{tag}}}" in TAGS else None


def accounts_pattern(kind: str) -> str:
    return _tagged_glob(f"acct:{kind}:")


def account_id(name: bytes | str, kind: str) -> int | None:
    """The id in a ``kind`` account's name; None for any other name."""
    return _number(_tail(_untag(name) or "", f"acct:{kind}:"))


def reservations_pattern() -> str:
    return _tagged_glob("resv:")


def reservations_tenant(name: bytes | str) -> int | None:
    """The tenant id in a reservations zset's name; None for any other name."""
    return _number(_tail(_untag(name) or "", "resv:"))


def rpd_pattern() -> str:
    return _tagged_glob("rpd:")


def rpd_day(name: bytes | str) -> str | None:
    """The day (``YYYYMMDD``) of an RPD counter's name; None for any other name."""
    tail = _tail(_untag(name) or "", "rpd:")
    if tail is None:
        return None
    _key, sep, day = tail.rpartition(":")
    return day if sep and _DAY.fullmatch(day) else None
