"""LayeredCache: the reason a known key costs no SQL on the hot path."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from django.test import override_settings

from portal.infra.snapshots import LayeredCache

pytestmark = pytest.mark.fast


class CountingLoader:
    def __init__(self, data: dict[str, dict[str, Any] | None]) -> None:
        self.data = data
        self.calls: list[str] = []

    def __call__(self, ident: str) -> dict[str, Any] | None:
        self.calls.append(ident)
        return self.data.get(ident)


def make_cache(loader: CountingLoader, name: str = "t") -> LayeredCache[dict[str, Any]]:
    return LayeredCache(name, loader, lambda d: d)


@override_settings(GATEWAY_SNAPSHOT_TTL=60)
async def test_a_known_identity_is_loaded_once_then_served_from_memory():
    loader = CountingLoader({"a": {"v": 1}})
    cache = make_cache(loader)
    assert await cache.get("a") == {"v": 1}
    assert await cache.get("a") == {"v": 1}
    assert loader.calls == ["a"]


@override_settings(GATEWAY_SNAPSHOT_TTL=60)
async def test_concurrent_misses_share_one_load():
    loader = CountingLoader({"a": {"v": 1}})
    cache = make_cache(loader)
    results = await asyncio.gather(*(cache.get("a") for _ in range(20)))
    assert results == [{"v": 1}] * 20
    assert loader.calls == ["a"]


@override_settings(GATEWAY_SNAPSHOT_TTL=60)
async def test_unknown_identities_are_cached_as_missing():
    loader = CountingLoader({})
    cache = make_cache(loader)
    assert await cache.get("nope") is None
    assert await cache.get("nope") is None
    assert loader.calls == ["nope"]


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL")
@override_settings(GATEWAY_SNAPSHOT_TTL=0)
async def test_with_redis_a_second_process_reads_redis_not_the_database():
    first_loader = CountingLoader({"a": {"v": 1}})
    await make_cache(first_loader, "shared").get("a")
    # A fresh cache object stands for another gateway process with an empty memory.
    other_loader = CountingLoader({"a": {"v": 999}})
    assert await make_cache(other_loader, "shared").get("a") == {"v": 1}
    assert other_loader.calls == []


@override_settings(GATEWAY_SNAPSHOT_TTL=0)
async def test_invalidate_drops_the_shared_copy(settings):
    loader = CountingLoader({"a": {"v": 1}})
    cache = make_cache(loader, "inv")
    await cache.get("a")
    loader.data["a"] = {"v": 2}
    await asyncio.to_thread(cache.invalidate, ["a"])
    assert await cache.get("a") == {"v": 2}
    assert loader.calls == ["a", "a"]


@override_settings(GATEWAY_SNAPSHOT_TTL=0, REDIS_URL="redis://127.0.0.1:1/0")
async def test_a_redis_outage_falls_back_to_the_database():
    loader = CountingLoader({"a": {"v": 1}})
    assert await make_cache(loader, "down").get("a") == {"v": 1}
    assert loader.calls == ["a"]
