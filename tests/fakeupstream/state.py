"""What one fake upstream process remembers: the requests it saw, in-flight counts, its keys,
models and per-credential faults. Shared by the protocol endpoints and ``/_fake/*``."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakeupstream.faults import CredentialFaults
from tests.fakeupstream.wire import Json

RECORD_LIMIT = 500


@dataclass(slots=True)
class FakeState:
    api_keys: frozenset[str]
    models_body: Json
    tags_body: Json
    requests: deque[Json] = field(default_factory=lambda: deque(maxlen=RECORD_LIMIT))
    total: int = 0
    inflight: int = 0
    max_inflight: int = 0
    faults: CredentialFaults = field(default_factory=CredentialFaults)

    def record(self, request: web.Request, body: Any) -> None:
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "headers": {key.lower(): value for key, value in request.headers.items()},
                "body": body,
                "time": time.time(),
            }
        )

    def stats(self) -> Json:
        return {"total": self.total, "inflight": self.inflight, "max_inflight": self.max_inflight}


STATE = web.AppKey("fake_state", FakeState)
