"""Errors of the operations API. DRF's own shapes: ``{"detail": "…"}`` for 401, 403, 404,
405, 409 and a business rule the services refuse (400), and ``{"field": ["…"]}`` for
invalid input (400)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import SuspiciousOperation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import status
from rest_framework.exceptions import APIException, NotFound, ParseError, ValidationError
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error
from rest_framework.views import exception_handler as drf_exception_handler

from keys.services import ApplicationError


class Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "This conflicts with an existing row."
    default_code = "conflict"


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """The services' ``ApplicationError`` (a rule, with a message for people) and a model's
    ``full_clean`` errors become 400s; a unique row raced in by someone else a 409."""
    if isinstance(exc, ApplicationError):
        exc = ValidationError({"detail": str(exc)})
    elif isinstance(exc, DjangoValidationError):
        exc = ValidationError(as_serializer_error(exc))
    elif isinstance(exc, IntegrityError):
        exc = Conflict()
    elif isinstance(exc, SuspiciousOperation):  # too many fields, a body too large …
        exc = ParseError(str(exc) or "The request cannot be read.")
    return drf_exception_handler(exc, context)


@csrf_exempt  # it changes nothing; a 403 page would hide the 404
def not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    """Any other path under /api/ops/: a 404 in the API's shape, not the HTML page."""
    return JsonResponse({"detail": NotFound.default_detail}, status=404)
