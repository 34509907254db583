"""A known key costs the gateway no SQL, and a saved change reaches it within a second."""

from __future__ import annotations

import os
import time

import httpx
import pytest

from keys.models import ApiKey, Status

# Without Redis a process re-reads its keys from the database once per TTL, by design.
pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.e2e,
    pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="the snapshot lives in Redis"),
]

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_a_known_key_is_not_read_from_the_database_and_a_saved_change_applies_within_a_second(
        gateway_default_ttl, upstream, api_key):
    url = gateway_default_ttl.base_url + "/chat/completions"
    headers = {"Authorization": f"Bearer {api_key.secret}"}
    assert httpx.post(url, json=CHAT, headers=headers).status_code == 200

    # A bulk UPDATE sends no signal, so nothing tells the gateway: if it read the key from
    # the database per request (or even once a second) it would now refuse the key.
    ApiKey.objects.filter(pk=api_key.key.pk).update(status=Status.DISABLED)
    for _ in range(5):
        assert httpx.post(url, json=CHAT, headers=headers).status_code == 200
        time.sleep(0.3)

    # A real save (admin, CLI, services) invalidates the shared snapshot on commit.
    key = ApiKey.objects.get(pk=api_key.key.pk)
    key.save()
    saved = time.monotonic()
    while httpx.post(url, json=CHAT, headers=headers).status_code == 200:
        assert time.monotonic() - saved < 1.5, "the change did not apply within the TTL"
        time.sleep(0.05)
    resp = httpx.post(url, json=CHAT, headers=headers)
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "api_key_disabled"
