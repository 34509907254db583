"""The OpenAPI document (drf-spectacular) documents the errors too, so a client (and the
schemathesis run in the tests) knows every answer's shape, not only the happy one."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers


class ErrorSerializer(serializers.Serializer):
    """``{"detail": "why"}``"""

    detail = serializers.CharField()


INVALID = OpenApiResponse(
    OpenApiTypes.OBJECT,
    description="Invalid input: {\"field\": [\"why\", …], …}, or {\"detail\": \"why\"} for a "
                "rule the request breaks.")


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(ErrorSerializer, description=description)


class OpsAutoSchema(AutoSchema):
    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        errors: dict[str, OpenApiResponse] = {
            "401": _error("No credentials, or credentials that are not valid."),
            "403": _error("Not staff, a token without staff rights, or a read-only token "
                          "on a write."),
            "404": _error("No such object, page or cursor."),
        }
        errors["400"] = INVALID  # a body, or a filter, that is not valid
        if self.method in ("POST", "PUT", "PATCH"):
            errors["409"] = _error("A concurrent change made this conflict (a unique name).")
            errors["415"] = _error("The body is not in a media type the API reads.")
        for code, response in errors.items():
            if code not in responses:
                responses[code] = self._get_response_for_code(response, code,
                                                              direction=direction)
        return responses


class AccessTokenScheme(OpenApiAuthenticationExtension):
    target_class = "portal.ops.auth.AccessTokenAuthentication"
    name = "personalAccessToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {"type": "http", "scheme": "bearer", "bearerFormat": "tp_pat_…",
                "description": "A staff personal access token (`manage.py token create "
                               "--staff`); a read-scope token may only read."}


class BearerDrfTokenScheme(OpenApiAuthenticationExtension):
    target_class = "portal.ops.auth.BearerTokenAuthentication"
    name = "drfTokenBearer"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {"type": "http", "scheme": "bearer",
                "description": "A DRF token of a staff user (`manage.py drf_create_token "
                               "USERNAME`), sent as `Bearer …`."}
