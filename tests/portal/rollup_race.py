"""The minute rollup committing between a reader's two looks at the partial hour's extent
(``billing.rollups.partial_hour``): the race the dashboard and the operations overview must
not count a row twice in."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from billing import rollups


def rollup_after_first_look(monkeypatch: pytest.MonkeyPatch, now: datetime) -> list[Any]:
    """Patch ``partial_hour`` so that the hourly task runs (as at ``now``) right after the
    first look at the extent; returns the extents every look saw, in order."""
    real, seen = rollups.partial_hour, []

    def racing() -> Any:
        extent = real()
        seen.append(extent)
        if len(seen) == 1:  # the task commits right after the first look
            rollups.rollup_recent_hours(now)
        return extent

    monkeypatch.setattr(rollups, "partial_hour", racing)
    return seen
