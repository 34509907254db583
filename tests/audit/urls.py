"""A test URLconf: the audit router mounted on a NinjaAPI at /api/v1/ (as the tenant API
will mount it) behind a tiny token authentication honouring the tenant API's contract
(``request.auth`` with .tenant/.user/.role/.can_write, ``request.turnpike_token``), a
write endpoint on it, and a DRF view at /api/ops/ authenticating the same tokens the way
DRF does (``request.user`` and ``request.auth`` set inside the view)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.urls import include, path
from ninja import NinjaAPI
from ninja.security import HttpBearer
from rest_framework import authentication, exceptions
from rest_framework.response import Response
from rest_framework.views import APIView

from keys import tokens
from keys.models import AccessToken, ApiKey, Group, Membership, Tenant
from keys.services import key_set_status


@dataclass
class Caller:
    tenant: Tenant
    user: Any
    role: str
    can_write: bool
    token: AccessToken | None = None


class TokenAuth(HttpBearer):
    def authenticate(self, request: Any, token: str) -> Caller | None:
        found = tokens.authenticate(token)
        if found is None or found.tenant is None:
            return None
        membership = Membership.objects.filter(user=found.user, tenant=found.tenant).first()
        if membership is None:
            return None
        request.turnpike_token = found
        return Caller(found.tenant, found.user, membership.role, found.can_write, found)


api = NinjaAPI(urls_namespace="audit_test_api", auth=TokenAuth(), docs_url=None)
api.add_router("/audit", "portal.tenant_api.audit.router")


@api.post("/keys/{pk}/disable")
def disable_key(request: Any, pk: int) -> dict[str, bool]:
    key = ApiKey.objects.get(pk=pk, tenant=request.auth.tenant)
    return {"changed": key_set_status(key=key, active=False)}


class DrfTokenAuth(authentication.BaseAuthentication):
    def authenticate(self, request: Any) -> tuple[Any, AccessToken] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header.startswith("Bearer "):
            return None
        found = tokens.authenticate(header[7:])
        if found is None:
            raise exceptions.AuthenticationFailed("bad token")
        return found.user, found


class GroupRename(APIView):
    authentication_classes = [DrfTokenAuth]
    permission_classes: list[Any] = []

    def post(self, request: Any, pk: int) -> Response:
        group = Group.objects.get(pk=pk)
        group.name = request.data["name"]
        group.save()
        return Response({"ok": True})


urlpatterns = [
    path("api/v1/", api.urls),
    path("api/ops/groups/<int:pk>/rename", GroupRename.as_view()),
    path("", include("portal.urls")),
]
