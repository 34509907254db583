"""The read replica (``DATABASE_REPLICA_URL``): analytic reads opt in, nothing else goes there.

Every query goes to the primary unless it runs inside ``analytics()``, which the selectors
behind the dashboards, the usage log and the operator overview wrap their read-only queries
in. Explicit opt-in rather than routing all reads: a read that follows a write in the same
request (a key just created, a balance just charged, a login) would miss it on a replica
that lags, so only code that tolerates slightly stale figures asks for one. Inside a
transaction on the primary the primary answers even under ``analytics()``: the transaction
may have written what it reads."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections

REPLICA = "replica"
_analytic: ContextVar[bool] = ContextVar("turnpike_analytic_reads", default=False)


def replica_configured() -> bool:
    return REPLICA in settings.DATABASES


def analytics_alias() -> str:
    """The alias an analytic read should use now: the replica when one is configured and
    the primary holds no open transaction, else the primary."""
    if replica_configured() and not connections[DEFAULT_DB_ALIAS].in_atomic_block:
        return REPLICA
    return DEFAULT_DB_ALIAS


@contextmanager
def analytics() -> Iterator[str]:
    """Reads of models inside this block go to the replica (when configured); yields the
    alias for code that prefers ``.using(alias)``. Also usable as a decorator."""
    token = _analytic.set(True)
    try:
        yield analytics_alias()
    finally:
        _analytic.reset(token)


class ReplicaRouter:
    """``DATABASE_ROUTERS`` when a replica is configured."""

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        if _analytic.get():
            return analytics_alias()
        return DEFAULT_DB_ALIAS

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return DEFAULT_DB_ALIAS

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool:
        return True  # the same data on both

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None,
                      **hints: Any) -> bool:
        return db == DEFAULT_DB_ALIAS
