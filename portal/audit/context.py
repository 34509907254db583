"""Who makes a change and from where: the *origin* of the audit entries written meanwhile.

An origin is kept in a context variable, so it follows the work wherever it runs: the
thread of a WSGI request, the thread a sync view runs in under ASGI (``sync_to_async``
copies the context into it), a Celery task, a management command. It is set by

- ``portal.audit.middleware.AuditMiddleware`` for every Django request (the surface comes from the
  path; the request itself is kept, so the actor is read when an entry is saved),
- ``portal.audit.apps`` for every management command (surface and actor ``cli``) and every Celery
  task (``system``).

Outside any of these (the ``/v1`` gateway disabling a credential its upstream refused, a
script) the origin is ``system``.

The actor is resolved *lazily*, when an entry is written: the tenant and operations APIs
authenticate inside the view (a personal access token, DRF's token), long after the
middleware ran, and set ``request.turnpike_token`` (an ``AccessToken``) and/or
``request.user`` then.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest


class Surface:
    ADMIN = "admin"
    PORTAL = "portal"
    TENANT_API = "tenant-api"
    OPS_API = "ops-api"
    CLI = "cli"
    SYSTEM = "system"
    WEB = "web"  # any other Django path (none of them changes anything today)

    choices = [(ADMIN, "admin"), (PORTAL, "portal"), (TENANT_API, "tenant API"),
               (OPS_API, "operations API"), (CLI, "command line"), (SYSTEM, "system"),
               (WEB, "web")]


class ActorKind:
    USER = "user"  # a logged-in session (admin, portal, browsable API)
    TOKEN = "token"  # a personal access token (or another API credential naming a user)
    CLI = "cli"
    SYSTEM = "system"
    ANONYMOUS = "anonymous"

    choices = [(USER, "user"), (TOKEN, "token"), (CLI, "command line"), (SYSTEM, "system"),
               (ANONYMOUS, "anonymous")]


# Longest first: /api/ops/ before the legacy /api/.
SURFACE_PREFIXES = (
    ("/api/ops/", Surface.OPS_API),
    ("/api/v1/", Surface.TENANT_API),
    ("/api/", Surface.TENANT_API),
    ("/admin/", Surface.ADMIN),
    ("/portal/", Surface.PORTAL),
    ("/accounts/", Surface.PORTAL),
)


def surface_for_path(path: str) -> str:
    for prefix, surface in SURFACE_PREFIXES:
        if path.startswith(prefix) or path == prefix.rstrip("/"):
            return surface
    return Surface.WEB


@dataclass(frozen=True)
class Origin:
    surface: str
    request: HttpRequest | None = None
    label: str = ""  # who, when there is no request: "cli (alice)", "system"


_origin: ContextVar[Origin | None] = ContextVar("turnpike_audit_origin", default=None)
SYSTEM = Origin(Surface.SYSTEM, label="system")


@contextmanager
def origin(surface: str, *, request: HttpRequest | None = None,
           label: str = "") -> Iterator[Origin]:
    """Entries written inside this block come from ``surface`` (and ``request``'s actor)."""
    value = Origin(surface, request, label or surface)
    token = _origin.set(value)
    try:
        yield value
    finally:
        _origin.reset(token)


def current() -> Origin:
    return _origin.get() or SYSTEM


def cli_label() -> str:
    """``cli (os-user)``: the operator's login name where the OS tells it cheaply."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError, ImportError):
        user = os.environ.get("USER", "")
    return f"cli ({user})" if user else "cli"


def _client_ip(request: HttpRequest) -> str | None:
    """The client's address as allauth reads it (honours ``ALLAUTH_TRUSTED_PROXY_COUNT`` and
    ``ALLAUTH_TRUSTED_CLIENT_IP_HEADER``: X-Forwarded-For is believed only when configured),
    else the socket's."""
    from allauth.account.adapter import get_adapter

    try:
        return get_adapter(request).get_client_ip(request) or None
    except Exception:  # a malformed forwarded header: fall back to the socket's address
        return request.META.get("REMOTE_ADDR") or None


def _token_of(request: HttpRequest) -> Any:
    """The personal access token a request authenticated with, if any: the API helpers set
    ``request.turnpike_token``; DRF and ninja put their credential in ``request.auth``."""
    from keys.models import AccessToken

    token = getattr(request, "turnpike_token", None)
    if isinstance(token, AccessToken):
        return token
    auth = getattr(request, "auth", None)
    if isinstance(auth, AccessToken):
        return auth
    inner = getattr(auth, "token", None)
    return inner if isinstance(inner, AccessToken) else None


def _user_of(request: HttpRequest, token: Any) -> Any:
    if token is not None:
        return token.user
    user = getattr(request, "user", None)
    if user is not None and getattr(user, "is_authenticated", False):
        return getattr(user, "_wrapped", user)  # SimpleLazyObject: the user itself
    auth_user = getattr(getattr(request, "auth", None), "user", None)  # ninja's auth object
    if auth_user is not None and getattr(auth_user, "is_authenticated", False):
        return auth_user
    return None


def resolve() -> dict[str, Any]:
    """The who/where fields of an entry written now (``AuditEntry`` field names)."""
    now = current()
    if now.request is None:
        kind = ActorKind.CLI if now.surface == Surface.CLI else ActorKind.SYSTEM
        return {"surface": now.surface, "actor_kind": kind, "actor_label": now.label[:200]}
    request = now.request
    token = _token_of(request)
    user = _user_of(request, token)
    fields: dict[str, Any] = {"surface": now.surface, "remote_addr": _client_ip(request)}
    if user is None:
        fields.update(actor_kind=ActorKind.ANONYMOUS, actor_label="anonymous")
        return fields
    email = getattr(user, "email", "") or ""
    name = email or user.get_username()
    fields.update(actor=user, actor_email=email or None)
    if token is not None:
        fields.update(actor_kind=ActorKind.TOKEN, token_id=token.pk,
                      actor_label=f"{name} (token {token.name}: {token.masked})"[:200])
    elif type(getattr(request, "auth", None)).__module__.startswith("rest_framework.authtoken"):
        fields.update(actor_kind=ActorKind.TOKEN, actor_label=f"{name} (DRF token)"[:200])
    else:
        fields.update(actor_kind=ActorKind.USER, actor_label=name[:200])
    return fields
