"""Encryption at rest for upstream credentials (Fernet: AES-128-CBC + HMAC-SHA256).

Keys come from settings.CREDENTIAL_ENCRYPTION_KEYS (newest first, so old ciphertexts still
decrypt during a rotation); unset, one key is derived from SECRET_KEY.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...], secret_key: str) -> MultiFernet:
    if not keys:
        derived = hashlib.sha256(b"turnpike-credentials:" + secret_key.encode()).digest()
        keys = (base64.urlsafe_b64encode(derived).decode(),)
    return MultiFernet([Fernet(k.encode()) for k in keys])


def _current() -> MultiFernet:
    return _fernet(tuple(settings.CREDENTIAL_ENCRYPTION_KEYS), settings.SECRET_KEY)


def encrypt(plaintext: str) -> str:
    return _current().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _current().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ValueError(
            "credential cannot be decrypted: CREDENTIAL_ENCRYPTION_KEYS/SECRET_KEY changed?"
        ) from exc
