"""Each protocol's error body, and what tells the protocols apart at the door (auth headers)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tests.fakeupstream.wire import Json

_OPENAI_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request_error"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "permission_denied"),
    404: ("not_found_error", "not_found"),
    429: ("rate_limit_exceeded", "rate_limit_exceeded"),
}
_ANTHROPIC_ERRORS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def openai_error(status: int, message: str) -> Json:
    default = ("server_error", "server_error") if status >= 500 else _OPENAI_ERRORS[400]
    error_type, code = _OPENAI_ERRORS.get(status, default)
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


def anthropic_error(status: int, message: str) -> Json:
    default = "api_error" if status >= 500 else "invalid_request_error"
    error_type = _ANTHROPIC_ERRORS.get(status, default)
    return {"type": "error", "error": {"type": error_type, "message": message}}


def ollama_error(status: int, message: str) -> Json:
    return {"error": message}


@dataclass(frozen=True, slots=True)
class Protocol:
    name: str
    error_body: Callable[[int, str], Json]
    accepts_x_api_key: bool = False


OPENAI = Protocol("openai", openai_error)
ANTHROPIC = Protocol("anthropic", anthropic_error, accepts_x_api_key=True)
OLLAMA = Protocol("ollama", ollama_error)

