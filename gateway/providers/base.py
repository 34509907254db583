"""What every provider adapter shares: turning an upstream's error answer into ours, whether it
came as an HTTP error status or inside a 2xx answer (a JSON error body, or a stream whose
first event is an error)."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import GatewayError, InvalidRequest, NotFound, RateLimited, UpstreamError

# Retry-After we send on an upstream 429 that named none: clients such as the Codex CLI
# never retry a 429 without one.
DEFAULT_RETRY_AFTER = 5.0


def _message_and_code(body: bytes) -> tuple[str | None, str | None, str | None]:
    """(message, code, param) from an OpenAI, Anthropic or Ollama error body."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return (text[:500] or None), None, None
    if isinstance(data, dict):
        err = data.get("error")
        if data.get("type") == "response.failed" and isinstance(data.get("response"), dict):
            err = data["response"].get("error")  # a Responses stream's terminal failure
        elif data.get("type") == "error" and err is None:
            err = data  # a Responses stream's error event: {"type":"error","code","message"}
        if isinstance(err, dict):  # OpenAI {"error": {...}}, Anthropic {"type":"error","error":{}}
            code = err.get("code") or (err.get("type") if err is not data else None)
            return (
                str(err.get("message") or "") or None,
                str(code) if code else None,
                err.get("param") if isinstance(err.get("param"), str) else None,
            )
        if isinstance(err, str):  # Ollama {"error": "..."}
            return err, None, None
        if isinstance(data.get("detail"), str):
            return data["detail"], None, None
    return None, None, None


def retry_after_seconds(headers: Any) -> float | None:
    for name in ("retry-after-ms", "retry-after"):
        raw = headers.get(name)
        if raw:
            try:
                value = float(raw)
            except ValueError:
                continue
            return value / 1000 if name == "retry-after-ms" else value
    return None


def is_error_answer(data: Any) -> bool:
    """Whether a parsed 2xx answer (a JSON body, or a stream's first event) is an error: an
    ``error`` member that is set (OpenAI, Anthropic, Ollama; a failed Responses object), or
    an event of type ``error`` / ``response.failed``."""
    if not isinstance(data, dict):
        return False
    return data.get("error") is not None or data.get("type") in ("error", "response.failed")


# An error inside a 2xx answer has no status of its own; its code (or type) tells which one
# it stands for. Anything else is the upstream failing: 502.
STATUS_OF_ERROR_CODE = {
    "rate_limit_exceeded": 429,
    "rate_limit_error": 429,
    "invalid_request_error": 400,
    "context_length_exceeded": 400,
    "not_found_error": 404,
    "model_not_found": 404,
}


def error_answer(body: bytes, headers: Any, secret: str | None) -> GatewayError:
    """Map a 2xx answer that is an error (see ``is_error_answer``) like the HTTP error it
    stands for: a rate limit as a 429 (the credential cools), the request's own fault as a
    4xx, anything else as a 502 that fails over to the next route. A credential refusal
    reported this way is a 502 too: a 2xx is not enough to disable a credential on."""
    message, code, param = _message_and_code(body)
    return reported_error(code, message, secret, param=param)


def reported_error(code: str | None, message: str | None, secret: str | None,
                   param: str | None = None) -> GatewayError:
    """The client-facing error for one the upstream reported inside a 2xx answer, by its
    code (see ``error_answer``); also for the errors a translated stream decodes."""
    status = STATUS_OF_ERROR_CODE.get(code or "", 502)
    return _mapped(status, message or "The upstream answered with an error and no message.",
                   code, param, {}, secret)


def upstream_error(status: int, body: bytes, headers: Any, secret: str | None) -> GatewayError:
    """Map an upstream's non-2xx answer to the client-facing error.

    The client's own key was fine, so an upstream 401/403 (Turnpike's credential was
    refused) becomes a 502 rather than an auth error the client could not fix. Upstream
    text is passed on for 4xx (it explains what was wrong with the request) with the
    credential scrubbed out of it.
    """
    message, code, param = _message_and_code(body)
    return _mapped(status, message, code, param, headers, secret)


def _mapped(status: int, message: str | None, code: str | None, param: str | None,
            headers: Any, secret: str | None) -> GatewayError:
    if message and secret:
        message = message.replace(secret, "[credential]")
        if len(secret) > 12:
            message = message.replace(secret[-8:], "****")
    if status in (401, 403):
        return UpstreamError(
            f"The upstream refused Turnpike's credential (HTTP {status}). "
            "An operator needs to check the upstream's API key.",
            code="upstream_auth_failed",
        )
    if status == 429:
        return RateLimited(
            message or "The upstream is rate limiting; try again shortly.",
            code=code or "rate_limit_exceeded",
            retry_after=retry_after_seconds(headers) or DEFAULT_RETRY_AFTER,
        )
    if status == 404:
        return NotFound(message or "The upstream does not know this path or model.",
                        code=code or "not_found")
    if 400 <= status < 500:
        return InvalidRequest(
            message or f"The upstream rejected the request (HTTP {status}).",
            code=code or "upstream_rejected", status=status, param=param,
        )
    return UpstreamError(
        message or f"The upstream failed (HTTP {status}).",
        code=code or "upstream_error",
        status=status if status in (500, 502, 503, 504) else 502,
        type="server_error",
    )
