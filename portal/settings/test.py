"""Only what the tests change. DATABASE_URL and REDIS_URL come from the environment."""

from __future__ import annotations

import os

from portal.settings.base import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Each test run gets its own Redis key prefix so concurrent runs never see each other.
GATEWAY_REDIS_PREFIX = f"gwtest{os.getpid()}:"
CELERY_TASK_ALWAYS_EAGER = True
