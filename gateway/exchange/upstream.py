"""One call to an upstream, and reading its answer, as every path does it.

``call_upstream`` sends the request and turns anything but a 2xx into ``UpstreamFailed``;
``Upstream`` reads a streamed body chunk by chunk (with keep-alive ticks); ``read_answer``
and ``parse_answer`` take a non-streamed one whole. ``failed`` and ``note_failure`` record a
2xx answer that failed after all on the request's ``Outcome``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from gateway import tracing
from gateway.context import RelayContext
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.outcome import Outcome
from gateway.providers.base import (
    error_answer,
    is_error_answer,
    retry_after_seconds,
    upstream_error,
)
from gateway.providers.failures import NEXT_UPSTREAM, UpstreamFailed, classify
from gateway.providers.http import upstream_session
from gateway.providers.protocols import WireProtocol
from gateway.routing import Route
from gateway.streaming import bad_response
from portal.infra.hotsettings import hot


async def call_upstream(ctx: RelayContext, out: Outcome, route: Route, protocol: WireProtocol,
                        stream: bool, body: bytes) -> aiohttp.ClientResponse:
    """Send the request and wait for the answer's start (the upstream's own timeouts);
    raise UpstreamFailed (what it means for routing, and the client-facing error) for
    anything but a 2xx.

    Redirects are never followed: a 3xx is an upstream (configuration) error. Following
    one would send the request, and the credential with it, wherever the upstream points
    (aiohttp strips only Authorization on a cross-host redirect, not Anthropic's x-api-key).

    A 2xx is not yet a success: the relay decides that from the answer itself (an error
    body, garbage, a stream cut before its first event are failures too), and sets
    ``out.served`` only then."""
    up = route.upstream
    secret = route.credential.secret if route.credential else None
    url = up.provider.url(up.base_url, protocol)
    headers = up.provider.headers(secret, stream, ctx.headers)
    if tracing.ENABLED and (parent := tracing.upstream_traceparent(ctx)) is not None:
        headers["traceparent"] = parent
    started = time.perf_counter()
    timeout = client_timeout(up.timeout_connect or hot.GATEWAY_CONNECT_TIMEOUT,
                             up.timeout_idle or hot.GATEWAY_READ_TIMEOUT)
    error: GatewayError
    try:
        async with asyncio.timeout(up.timeout_first_byte):
            resp = await upstream_session().post(url, data=body, headers=headers,
                                                 timeout=timeout, proxy=up.proxy,
                                                 allow_redirects=False)
    except TimeoutError:
        error = UpstreamTimeout("The upstream did not answer in time.")
        out.attempts.append(attempt_entry(route, 0, error.code, started))
        raise UpstreamFailed(NEXT_UPSTREAM, error) from None
    except aiohttp.ClientError as exc:
        error = UpstreamUnavailable(f"Could not reach the upstream: {type(exc).__name__}.")
        out.attempts.append(attempt_entry(route, 0, error.code, started))
        raise UpstreamFailed(NEXT_UPSTREAM, error) from None
    if 300 <= resp.status < 400:
        resp.release()
        error = UpstreamError(
            f"The upstream answered HTTP {resp.status}, a redirect; Turnpike does not follow "
            "upstream redirects. An operator needs to check the upstream's base URL.",
            code="upstream_redirect")
        out.attempts.append(attempt_entry(route, resp.status, error.code, started))
        raise UpstreamFailed(NEXT_UPSTREAM, error)
    if resp.status >= 400:
        try:
            error = upstream_error(resp.status, await resp.read(), resp.headers, secret)
        except (TimeoutError, aiohttp.ClientError):
            error = upstream_error(resp.status, b"", resp.headers, secret)
        finally:
            resp.release()
        out.attempts.append(attempt_entry(route, resp.status, error.code, started))
        raise UpstreamFailed(classify(resp.status, retry_after_seconds(resp.headers)), error)
    out.attempts.append(attempt_entry(route, resp.status, "", started))
    return resp


_timeouts: dict[tuple[float, float], aiohttp.ClientTimeout] = {}


def client_timeout(connect: float, sock_read: float) -> aiohttp.ClientTimeout:
    """aiohttp's (immutable) timeout object for these figures, made once, not per call."""
    timeout = _timeouts.get((connect, sock_read))
    if timeout is None:
        if len(_timeouts) > 64:  # upstreams' timeouts edited many times: start afresh
            _timeouts.clear()
        timeout = _timeouts[(connect, sock_read)] = aiohttp.ClientTimeout(
            total=None, connect=connect, sock_read=sock_read)
    return timeout


def attempt_entry(route: Route, status: int, error: str, started: float) -> dict[str, Any]:
    """One entry of ``Outcome.attempts``: the route, the status it answered (0: none), the
    error code ("" while a 2xx answer holds) and the milliseconds since ``started`` (0 when
    nothing was sent)."""
    return {"upstream": route.upstream.name, "upstream_id": route.upstream.id,
            "credential_id": route.credential.id if route.credential else None,
            "status": status, "error": error,
            "ms": int((time.perf_counter() - started) * 1000) if started else 0}


class Upstream:
    """One open upstream answer."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp

    @property
    def streaming(self) -> bool:
        ctype = self.resp.headers.get("content-type", "")
        return ctype.startswith("text/event-stream") or ctype.startswith("application/x-ndjson")

    async def chunks(self) -> AsyncIterator[bytes | None]:
        """Body chunks as they arrive; None after GATEWAY_KEEPALIVE_SECONDS of silence."""
        content = self.resp.content
        lull = _Lull(hot.GATEWAY_KEEPALIVE_SECONDS)
        try:
            while True:
                # What has arrived already is taken at once; read_nowait raises the stream's
                # error as readany does. Only a wait is watched for silence.
                chunk = content.read_nowait()
                if not chunk:
                    if content.at_eof():
                        return
                    lull.begin()
                    try:
                        chunk = await content.readany()
                    except asyncio.CancelledError:
                        if lull.ended_in_silence():
                            yield None
                            continue
                        raise
                    finally:
                        lull.waiting = False
                    if not chunk:
                        return
                yield chunk
        finally:
            lull.close()


class _Lull:
    """The keep-alive clock of one upstream stream: one timer for the whole stream, not one
    armed and cancelled around every wait (a visible share of a paced stream's relay, where
    every event is a wait of its own). It fires when the current wait could have lasted
    ``seconds``; then a wait that really did is interrupted, as ``asyncio.timeout`` would
    (cancelling the task, taken back by ``ended_in_silence``), and the timer is set again
    for whatever wait is current."""

    __slots__ = ("cancelling", "expired", "handle", "loop", "seconds", "since", "task",
                 "waiting")

    def __init__(self, seconds: float) -> None:
        self.loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.seconds = seconds
        self.since = self.loop.time()
        self.waiting = False
        self.expired = False
        self.cancelling = 0
        self.handle: asyncio.TimerHandle | None = self.loop.call_at(self.since + seconds,
                                                                    self._fire)

    def begin(self) -> None:
        """A wait for the upstream starts now."""
        self.since = self.loop.time()
        self.cancelling = self.task.cancelling()
        self.waiting = True

    def _fire(self) -> None:
        due = self.since + self.seconds
        now = self.loop.time()
        if self.waiting and now >= due:
            self.handle = None
            self.expired = True
            self.task.cancel()
        elif not self.task.done():
            # A wait that began since (or none now: the next one begins later still).
            self.handle = self.loop.call_at(due if self.waiting else now + self.seconds,
                                            self._fire)

    def ended_in_silence(self) -> bool:
        """After a CancelledError in the wait: True if this clock caused it and nobody
        else cancelled the task meanwhile (the error is then swallowed and the clock set
        again); False for a real cancellation, which goes on."""
        if not self.expired:
            return False
        self.expired = False
        self.handle = self.loop.call_at(self.loop.time() + self.seconds, self._fire)
        return self.task.uncancel() <= self.cancelling

    def close(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


async def read_answer(out: Outcome, resp: aiohttp.ClientResponse) -> bytes:
    """The whole body of a non-streamed answer. An upstream that goes silent (idle timeout)
    or breaks the body off (ClientPayloadError) is an upstream failure, 504/502, not ours."""
    try:
        return await resp.read()
    except TimeoutError:
        raise failed(out, UpstreamTimeout("The upstream stopped sending its answer.")) from None
    except aiohttp.ClientError:
        raise failed(out, UpstreamError(
            "The upstream connection broke before its answer was complete.",
            code="upstream_stream_cut")) from None


def parse_answer(out: Outcome, resp: aiohttp.ClientResponse, payload: bytes) -> Any:
    """A non-streamed answer as JSON; raise the client-facing error if it is not JSON, not
    an object, or an error object (which is mapped like the HTTP error it stands for)."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise failed(out, bad_response(
            "The upstream answered with something that is not JSON.")) from None
    if not isinstance(data, dict):
        raise failed(out, bad_response("The upstream's answer is not a JSON object."))
    if is_error_answer(data):
        raise failed(out, error_answer(payload, resp.headers, credential_secret(out)))
    return data


def failed(out: Outcome, error: GatewayError) -> UpstreamFailed:
    """A 2xx answer that failed before the client got a byte: noted on the attempt, and
    classified by the status it is answered with (a 5xx or a bad answer fails over, a rate
    limit cools the credential, the request's own fault, a 4xx, goes back to the client:
    no other upstream would answer it better)."""
    note_failure(out, error)
    return UpstreamFailed(classify(error.status), error)


def note_failure(out: Outcome, error: GatewayError) -> None:
    """Note on the attempt that its 2xx answer failed after all."""
    if out.attempts and not out.attempts[-1]["error"]:
        out.attempts[-1]["error"] = error.code


def credential_secret(out: Outcome) -> str | None:
    """The secret of the credential being tried, scrubbed out of upstream error text."""
    route = out.route
    return route.credential.secret if route is not None and route.credential else None
