"""Test-run plumbing that makes the suite faster without changing what any test checks.
Loaded from tests/conftest.py (``pytest_plugins``); nothing here is imported by the
application.

The database between transactional tests
----------------------------------------
A transactional test (``django_db(transaction=True)``, ``live_server``: every end-to-end
test, since the gateway, another process, must see committed rows) ends with Django's flush:
a TRUNCATE of all ~40 tables (0.4-1 s here: it replaces every table's files), then the
``post_migrate`` signal, which re-creates every content type and permission (~115 queries,
0.25-0.5 s). About 900 tests do this: it was most of the suite's time, and most of the
translation matrix's.

Here the same end state is reached with a ``DELETE FROM`` of every table but the two that
``post_migrate`` fills (``django_content_type``, ``auth_permission``), in one transaction
and one round trip (Django's foreign keys are DEFERRABLE INITIALLY DEFERRED, so the order
does not matter): ~10-20 ms for the few rows a test leaves. Those two tables keep their
rows, which are exactly what ``post_migrate`` would write again (with the same ids, which
also keeps valid the content types that long-lived gateway processes have cached). If a
test changed either table (a fingerprint of both is compared, one query), Django's own
flush runs instead, so a test can never leak a change to them.

HTTP clients in the test process
--------------------------------
Every ``httpx.Client`` (so every ``httpx.get``/``post`` and every ``openai.OpenAI``) builds a
new default SSL context, reading certifi's CA bundle: ~50 ms each here, ten times what the
request over loopback costs, and tests make thousands of them (fixtures clearing the fake
upstream, polling ``/_gateway/status``, an SDK client per test). The test process shares
one default context instead, as httpx suggests for an application that makes many clients
(``verify=ssl_context``); it is built the same way, and the suite speaks only plain HTTP on
loopback anyway. The gateway processes under test are untouched.
"""

from __future__ import annotations

from typing import Any

import httpx._transports.default as httpx_transports
from django.core.management import call_command
from django.db import connections, transaction
from django.test import TransactionTestCase

_django_teardown = TransactionTestCase._fixture_teardown
# The tables post_migrate fills: content types, then the permissions that name them.
_SEEDED = ("django_content_type", "auth_permission")
_FINGERPRINT_SQL = """
SELECT (SELECT count(*) FROM django_content_type),
       (SELECT coalesce(sum(hashtext(id || '.' || app_label || '.' || model)), 0)
          FROM django_content_type),
       (SELECT count(*) FROM auth_permission),
       (SELECT coalesce(sum(hashtext(id || '.' || content_type_id || '.' || codename || '.'
                                     || name)), 0) FROM auth_permission)
"""
# Per database alias: the fingerprint of the seeded tables right after Django's flush.
_seeded: dict[str, tuple[Any, ...]] = {}


def _fingerprint(alias: str) -> tuple[Any, ...]:
    with connections[alias].cursor() as cursor:
        cursor.execute(_FINGERPRINT_SQL)
        return tuple(cursor.fetchone())


def _empty(alias: str) -> None:
    conn = connections[alias]
    if conn.vendor != "postgresql" or _seeded.get(alias) != _fingerprint(alias):
        # The first time (or after a test changed content types or permissions): Django's
        # own flush, then remember what post_migrate left in the seeded tables.
        call_command("flush", verbosity=0, interactive=False, database=alias,
                     reset_sequences=False)
        if conn.vendor == "postgresql":
            _seeded[alias] = _fingerprint(alias)
        return
    tables = conn.introspection.django_table_names(only_existing=True, include_views=False)
    deletes = ";".join(f"DELETE FROM {conn.ops.quote_name(table)}"
                       for table in tables if table not in _SEEDED)
    with transaction.atomic(using=alias), conn.cursor() as cursor:
        cursor.execute(deletes)  # one round trip


def _fixture_teardown(self: TransactionTestCase) -> None:
    if self.available_apps is not None or self.serialized_rollback:
        _django_teardown(self)  # a partial flush or a reload: Django's own way
        return
    for alias in self._databases_names(include_mirrors=False):
        _empty(alias)


TransactionTestCase._fixture_teardown = _fixture_teardown  # type: ignore[method-assign]


# --- one default SSL context for the test process's HTTP clients ---------------------------

_create_ssl_context = httpx_transports.create_ssl_context
_default_contexts: dict[bool, Any] = {}


def _shared_ssl_context(verify: Any = True, cert: Any = None, trust_env: bool = True) -> Any:
    if verify is not True or cert is not None:
        return _create_ssl_context(verify=verify, cert=cert, trust_env=trust_env)
    if trust_env not in _default_contexts:
        _default_contexts[trust_env] = _create_ssl_context(verify=True, trust_env=trust_env)
    return _default_contexts[trust_env]


httpx_transports.create_ssl_context = _shared_ssl_context  # type: ignore[assignment]
