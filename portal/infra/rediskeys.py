"""Every Redis key Turnpike writes: its name is built here, and parsed back here.

A name is settings.GATEWAY_REDIS_PREFIX (``gw:`` by default) followed by ``:``-joined
parts. These strings are what running deployments hold in Redis (balances, the journal of
usage rows not yet written), so a name changed here strands its data under the old one.

    rpm:<key>                     zset  the key's requests of the last 60 s (the limiter)
    rpd:<key>:<YYYYMMDD>          str   the key's requests that local day
    tpm:<key>                     hash  the key's tokens per 10 s bucket
    conc:<key>                    zset  the key's concurrency leases
    sticky:<key>:<session or ->   str   a session's route binding
    cool                          hash  credential id -> when its cool-down ends (ms)
    crpm:<credential>:<minute>    str   a credential's requests that minute
    acct:<tenant|key>:<id>        hash  ``avail``: the account's micro-units
    resv:<tenant>                 zset  the tenant's reservations in flight
    reclaimed:<tenant>            zset  reservations given back after their lease ran out
    unposted:<tenant|key>:<id>    hash  costs settled whose usage rows are not yet written
    usage:spool                   list  the usage journal (billing.usage)
    usage:claims                  zset  batches claimed by a writer, by claim time
    usage:claim:<id>              list  one claimed batch
    usage:dead                    list  rows the database refused, for an operator
    opsalert:spool                hash  the usage journal's oldest row and since when (alerts)
    resp:<id>[:items|:deleted]    str   a stored response staged for its writer (gateway.stored)
    rpin:<id>                     str   the route of a response its upstream stores itself
    store:journal, store:claims…  list  the stored responses' journal (portal.infra.journal)
    store:deleted                 ...   deletions waiting for the store's writer
    capture:journal, capture:claims…  list  captured bodies waiting for their writer
                                        (gateway.capture.store)
    bg:<id>, bg:<id>:events       hash, stream  a background response's run (gateway.stored.runs)
    bg:leases                     zset  running background responses by lease end
    snap:<cache>:<ident>          str   a LayeredCache snapshot (portal.infra.snapshots)
    cache…, chan…                       Django's cache and the channel layer (their prefixes)

Lua scripts get their keys in KEYS[], built here. Where a script can only learn a name
while it runs (the key account of a reservation it gives back, a claim list named in the
claims zset), it gets the name's prefix from here in ARGV (``account_prefix("key")``,
``claim_prefix()``) and appends the id.

Every builder takes ``prefix=`` for a tool that reads another process's keys without this
process's settings (the soak's driver); everything else uses the settings' prefix.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

Ident = int | str

# The settings' prefix, read once: a request builds ~20 names, and each settings lookup
# goes through Django's lazy settings object. A changed setting (override_settings in
# tests) clears it.
_prefix: str | None = None


def _p(prefix: str | None) -> str:
    global _prefix
    if prefix is not None:
        return prefix
    if _prefix is None:
        _prefix = settings.GATEWAY_REDIS_PREFIX
    return _prefix


def _forget_prefix(*, setting: str, **kwargs: Any) -> None:
    global _prefix
    if setting == "GATEWAY_REDIS_PREFIX":
        _prefix = None


setting_changed.connect(_forget_prefix, dispatch_uid="portal.infra.rediskeys.prefix")


# --- the limiter (keys/limits.py, keys/lua/) -------------------------------------------------

def rpm(key_id: Ident, *, prefix: str | None = None) -> str:
    return f"{_p(prefix)}rpm:{key_id}"


def rpd(key_id: Ident, day: str, *, prefix: str | None = None) -> str:
    """``day``: the local calendar day, ``YYYYMMDD``."""
    return f"{_p(prefix)}rpd:{key_id}:{day}"


def tpm(key_id: Ident, *, prefix: str | None = None) -> str:
    return f"{_p(prefix)}tpm:{key_id}"


def concurrency(key_id: Ident, *, prefix: str | None = None) -> str:
    return f"{_p(prefix)}conc:{key_id}"


def sticky(key_id: Ident, session: str | None, *, prefix: str | None = None) -> str:
    """Sessions are per key, so two tenants' equal session ids never share a binding."""
    return f"{_p(prefix)}sticky:{key_id}:{session or '-'}"


def cooldowns(*, prefix: str | None = None) -> str:
    return f"{_p(prefix)}cool"


def credential_rpm(credential_id: Ident, minute: int, *, prefix: str | None = None) -> str:
    return f"{_p(prefix)}crpm:{credential_id}:{minute}"


def account_prefix(kind: str, *, prefix: str | None = None) -> str:
    """``kind``: "tenant" or "key"."""
    return f"{_p(prefix)}acct:{kind}:"


def account(kind: str, ident: Ident, *, prefix: str | None = None) -> str:
    return f"{account_prefix(kind, prefix=prefix)}{ident}"


def reservations(tenant_id: Ident, *, prefix: str | None = None) -> str:
    """A zset of ``keys.limits.reservation_member`` strings scored by lease expiry."""
    return f"{_p(prefix)}resv:{tenant_id}"


def reclaimed(tenant_id: Ident, *, prefix: str | None = None) -> str:
    """Request id -> when its reservation was given back: a settle that still comes knows
    to charge its whole cost."""
    return f"{_p(prefix)}reclaimed:{tenant_id}"


def unposted(kind: str, ident: Ident, *, prefix: str | None = None) -> str:
    """Request id -> micro-units: the settle script adds, the row's writer removes."""
    return f"{_p(prefix)}unposted:{kind}:{ident}"


# --- the usage journal (billing/usage.py) ---------------------------------------------------

def journal(*, prefix: str | None = None) -> str:
    """Named "spool" for the rows it held before it was a journal: deployments upgrading
    keep theirs."""
    return f"{_p(prefix)}usage:spool"


def claims(*, journal: str = "usage", prefix: str | None = None) -> str:
    """``journal``: whose claims (``usage``, or ``store`` for stored responses)."""
    return f"{_p(prefix)}{journal}:claims"


def claim_prefix(*, journal: str = "usage", prefix: str | None = None) -> str:
    return f"{_p(prefix)}{journal}:claim:"


def claim(claim_id: str, *, journal: str = "usage", prefix: str | None = None) -> str:
    return f"{claim_prefix(journal=journal, prefix=prefix)}{claim_id}"


def dead_rows(*, prefix: str | None = None) -> str:
    return f"{_p(prefix)}usage:dead"


def opsalert_spool(*, prefix: str | None = None) -> str:
    """The usage journal's oldest row when first seen there (gateway.opsalerts)."""
    return f"{_p(prefix)}opsalert:spool"


# --- stored responses (gateway/stored/) ------------------------------------------------------

def stored_response(response_id: str, *, prefix: str | None = None) -> str:
    """A staged response document, until the store's writer has put it in the database."""
    return f"{_p(prefix)}resp:{response_id}"


def stored_items(response_id: str, *, prefix: str | None = None) -> str:
    return f"{_p(prefix)}resp:{response_id}:items"


def stored_deleted(response_id: str, *, prefix: str | None = None) -> str:
    return f"{_p(prefix)}resp:{response_id}:deleted"


def response_pin(response_id: str, *, prefix: str | None = None) -> str:
    """The route (upstream, credential) of a response an upstream stores itself."""
    return f"{_p(prefix)}rpin:{response_id}"


def store_journal(*, prefix: str | None = None) -> str:
    return f"{_p(prefix)}store:journal"


def store_deletions(*, prefix: str | None = None) -> str:
    return f"{_p(prefix)}store:deleted"


# --- body capture (gateway/capture/) ----------------------------------------------------------

def capture_journal(*, prefix: str | None = None) -> str:
    """list: captured request and response bodies (redacted) waiting for their writer."""
    return f"{_p(prefix)}capture:journal"


# --- background responses (gateway/stored/runs.py) ----------------------------------------

def background_run(response_id: str, *, prefix: str | None = None) -> str:
    """hash: a background response's status, lease and cancel flag while it runs."""
    return f"{_p(prefix)}bg:{response_id}"


def background_events(response_id: str, *, prefix: str | None = None) -> str:
    """stream: a background response's events, for polling and resumed streams."""
    return f"{_p(prefix)}bg:{response_id}:events"


def background_leases(*, prefix: str | None = None) -> str:
    """zset: running background responses by when their lease ends (the reaper reads it)."""
    return f"{_p(prefix)}bg:leases"


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


def accounts_pattern(kind: str) -> str:
    return _glob(account_prefix(kind))


def account_id(name: bytes | str, kind: str) -> int | None:
    """The id in a ``kind`` account's name; None for any other name."""
    return _number(_tail(name, account_prefix(kind)))


def reservations_pattern() -> str:
    return _glob(reservations(""))


def reservations_tenant(name: bytes | str) -> int | None:
    """The tenant id in a reservations zset's name; None for any other name."""
    return _number(_tail(name, reservations("")))


def rpd_pattern() -> str:
    return _glob(f"{_p(None)}rpd:")


def rpd_day(name: bytes | str) -> str | None:
    """The day (``YYYYMMDD``) of an RPD counter's name; None for any other name."""
    tail = _tail(name, f"{_p(None)}rpd:")
    if tail is None:
        return None
    _key, sep, day = tail.rpartition(":")
    return day if sep and _DAY.fullmatch(day) else None
