"""Only what the tests change. DATABASE_URL and REDIS_URL come from the environment."""

from __future__ import annotations

import os

from portal.infra.rediskeys import cache_prefix, channel_prefix
from portal.settings.base import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Each test run gets its own Redis key prefix so concurrent runs never see each other.
GATEWAY_REDIS_PREFIX = f"gwtest{os.getpid()}:"
if REDIS_URL:  # noqa: F405
    CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = (  # noqa: F405
        channel_prefix(GATEWAY_REDIS_PREFIX))
    CACHES["default"]["KEY_PREFIX"] = cache_prefix(GATEWAY_REDIS_PREFIX)  # noqa: F405
CELERY_TASK_ALWAYS_EAGER = True

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    # The gateway runs in a subprocess during tests, so the test database must be a file
    # both processes can open (the usual in-memory test database is per-connection).
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "test_turnpike.sqlite3")}  # noqa: F405
elif os.environ.get("TEST_DATABASE_NAME"):
    # Two test runs on one server at once (a developer's and CI's) need different names.
    DATABASES["default"]["TEST"] = {"NAME": os.environ["TEST_DATABASE_NAME"]}  # noqa: F405
