"""Client-facing errors of the /v1 API, each rendered as the OpenAI error envelope.

    GatewayError                      500 server_error
    ├── InvalidRequest                400 invalid_request_error
    │   ├── InvalidJSON               400 invalid_json
    │   ├── UnsupportedContentType    400 unsupported_content_type
    │   ├── BodyTooLarge              413 request_too_large
    │   └── MissingModel              400 missing_model
    ├── NotFound                      404 not_found
    │   └── ModelNotFound             404 model_not_found
    ├── MethodNotAllowed              405 method_not_allowed
    ├── AuthenticationFailed          401 authentication_error (key refusals: keys.authn)
    ├── PermissionDenied              403 permission_error (key refusals: keys.authn)
    │   └── ModelNotAllowed           403 model_not_allowed
    ├── RateLimited                   429 rate_limit_exceeded (+ Retry-After)
    ├── ServiceUnavailable            503 service_unavailable (+ Retry-After)
    └── UpstreamError                 502 upstream_error (status/code from the upstream)
        ├── UpstreamUnavailable       502 upstream_unavailable
        └── UpstreamTimeout           504 upstream_timeout

Each class fixes status, type and code; instances carry the human message. ``render``
is the only place that turns any of them into bytes.
"""

from __future__ import annotations

import orjson


class GatewayError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"
    param: str | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        type: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if param is not None:
            self.param = param
        self.retry_after = retry_after

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> list[tuple[bytes, bytes]]:
        if self.retry_after is None:
            return []
        seconds = max(1, int(-(-self.retry_after // 1)))  # whole seconds, rounded up
        return [
            (b"retry-after", str(seconds).encode()),
            (b"retry-after-ms", str(int(self.retry_after * 1000)).encode()),
        ]

    def render(self) -> bytes:
        return orjson.dumps(self.body())


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidJSON(InvalidRequest):
    code = "invalid_json"


class UnsupportedContentType(InvalidRequest):
    code = "unsupported_content_type"


class BodyTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class MissingModel(InvalidRequest):
    code = "missing_model"
    param = "model"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"
    param = "model"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    code = "authentication_error"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class ModelNotAllowed(PermissionDenied):
    code = "model_not_allowed"
    param = "model"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ServiceUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class ShuttingDown(ServiceUnavailable):
    """The process is shutting down and its drain time ran out (``portal.drain``)."""

    code = "server_shutting_down"


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
