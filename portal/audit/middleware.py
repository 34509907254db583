"""Sets the audit origin of every Django request: the surface from the path, and the
request itself, from which the actor is read when an entry is written (after the APIs'
own authentication has run). Cheap: no query, nothing resolved up front."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from portal.audit.context import origin, surface_for_path


class AuditMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        with origin(surface_for_path(request.path_info), request=request):
            return self.get_response(request)
