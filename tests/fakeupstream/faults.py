"""Per-credential faults, set through ``POST /_fake/keys``, so a test can fail one credential of
an upstream's several while the others keep answering.

A spec is ``{"key", "status"?, "retry_after"?, "hold"?, "count"?}``: every request presenting
``key`` waits ``hold`` seconds, then (with ``status``) answers that error in its protocol's shape,
with ``Retry-After: retry_after`` when given. ``count`` is how many requests it applies to
(absent or -1: all of them); the spec is dropped once they are used up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.fakeupstream.wire import Json


@dataclass(slots=True)
class CredentialFaults:
    by_key: dict[str, Json] = field(default_factory=dict)

    def script(self, spec: Json) -> None:
        self.by_key[spec["key"]] = spec

    def clear(self) -> None:
        self.by_key.clear()

    def take(self, key: str | None) -> Json | None:
        """The fault for one request presenting ``key`` (None: behave), counting it down."""
        spec = self.by_key.get(key or "")
        if spec is None:
            return None
        if spec.get("count", -1) > 0:
            spec["count"] -= 1
            if spec["count"] == 0:
                del self.by_key[key or ""]
        return spec
