"""A clock the tests move by hand: the limiter takes one (``keys.limits.Clock``) so a test of
leases, windows and days advances time instead of sleeping on the wall clock."""

from __future__ import annotations

# 2026-03-01 12:00:00 UTC: a fixed, whole-minute moment, so window arithmetic reads plainly.
START = 1_772_366_400.0


class FakeClock:
    """Unix seconds that change only when ``advance`` is called."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
