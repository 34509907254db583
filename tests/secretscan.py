"""The secret scan: no secret the test run made or used appears in any log the run wrote.

``install()`` (from tests/conftest.py, at the start of the session) starts recording secrets
where they are made or used in this process:

    API keys and access tokens   every ``sk-tp-…``/``tp_pat_…`` string hashed by
                                 ``keys.secrets.hash_secret`` (issued, rotated, imported,
                                 or presented to an in-process view)
    upstream credentials         every secret set on a ``gateway.models.Credential``
    DRF tokens                   every ``rest_framework.authtoken`` token saved
    portal passwords             every password set on a user (8 characters or more)
    SECRET_KEY                   the test settings' own

and writes this process's log records (the root logger, at the level the settings give it)
to a file in the session's log folder (``tests.servers.log_dir``), where every gateway,
worker and writer subprocess started through ``tests.servers`` writes its output too.

``scan()`` (at the end of the session) reads every such file once, matching all the secrets
with one regular expression, and returns what it found; conftest fails the run then.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SECRETS: set[str] = set()
MIN_LENGTH = 8
_KEY_PREFIXES = ("sk-tp-", "tp_pat_")


def remember(secret: object, min_length: int = MIN_LENGTH) -> None:
    if isinstance(secret, str) and len(secret) >= min_length:
        SECRETS.add(secret)


def _patch_everywhere(module: Any, name: str, wrap: Callable[[Any], Any]) -> None:
    """Replace ``module.name`` with ``wrap(original)``, and every binding of the original
    that another loaded module made with ``from module import name``."""
    original = getattr(module, name)
    wrapped = wrap(original)
    for loaded in list(sys.modules.values()):
        namespace = getattr(loaded, "__dict__", None)
        if namespace is not None and namespace.get(name) is original:
            setattr(loaded, name, wrapped)


def install(log_file: Path) -> logging.Handler:
    from django.conf import settings
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.db.models.signals import post_save
    from rest_framework.authtoken.models import Token

    import keys.secrets
    from gateway.models import Credential

    def hashing(original: Callable[[str], str]) -> Callable[[str], str]:
        def hash_secret(secret: str) -> str:
            if secret.startswith(_KEY_PREFIXES):
                remember(secret, 20)
            return original(secret)
        return hash_secret

    _patch_everywhere(keys.secrets, "hash_secret", hashing)

    set_secret = Credential.set_secret

    def credential_secret(self: Credential, secret: str) -> None:
        remember(secret)
        set_secret(self, secret)

    Credential.set_secret = credential_secret  # type: ignore[method-assign]

    set_password = AbstractBaseUser.set_password

    def password(self: AbstractBaseUser, raw_password: str | None) -> None:
        remember(raw_password)
        set_password(self, raw_password)

    AbstractBaseUser.set_password = password  # type: ignore[method-assign]

    def token_saved(sender: Any, instance: Token, **_: Any) -> None:
        remember(instance.key)

    post_save.connect(token_saved, sender=Token, weak=False,
                      dispatch_uid="tests.secretscan.token")
    remember(settings.SECRET_KEY)

    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


@dataclass
class Found:
    path: Path
    line: int
    secret: str

    def __str__(self) -> str:
        shown = self.secret[:4] + "…" + self.secret[-2:]  # never the whole secret again
        return f"{self.path}:{self.line}: a secret ({shown}, {len(self.secret)} chars)"


def scan(paths: Iterable[Path], secrets: Iterable[str]) -> list[Found]:
    """Every place a secret appears in the files: one pass over each file's bytes."""
    ordered = sorted({s.encode() for s in secrets}, key=len, reverse=True)
    if not ordered:
        return []
    pattern = re.compile(b"|".join(re.escape(s) for s in ordered))
    found: list[Found] = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        for match in pattern.finditer(data):
            found.append(Found(path, data.count(b"\n", 0, match.start()) + 1,
                               match.group().decode()))
    return found
