"""API key secrets: generation, the display prefix, and the hash that is stored.

A key looks like ``sk-tp-`` + 43 base62 characters (~256 bits). Only its SHA-256 is stored;
a plain hash is the right tool for a high-entropy random secret (no dictionary to guess
from) and costs ~1 µs on the hot path, where a password hash would cost 100 ms.
"""

from __future__ import annotations

import hashlib
import secrets
import string

KEY_PREFIX = "sk-tp-"
_ALPHABET = string.ascii_letters + string.digits
_BODY_LENGTH = 43
# What the admin and portal show: the scheme plus four characters, like "sk-tp-ab12".
DISPLAY_PREFIX_LENGTH = len(KEY_PREFIX) + 4


def generate_secret() -> str:
    return KEY_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(_BODY_LENGTH))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def display_prefix(secret: str) -> str:
    return secret[:DISPLAY_PREFIX_LENGTH]


def masked(prefix: str, last4: str) -> str:
    return f"{prefix}…{last4}"
