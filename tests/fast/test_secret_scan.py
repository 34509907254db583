"""The secret scan's parts (tests.secretscan, run by tests/conftest.py at the end of every
session): it finds a secret in any file it is given, and the places secrets are made in this
process record them."""

from __future__ import annotations

import logging

from django.contrib.auth.models import User

import keys.secrets
from gateway.models import Credential
from tests import secretscan
from tests.servers import log_dir


def test_scan_finds_each_secret_where_it_is(tmp_path):
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_bytes(b"line one\nthe key sk-tp-AAAAAAAAAAAAAAAAAAAA leaked\n")
    b.write_bytes(b'{"message": "nothing here"}\n{"auth": "Bearer upstream-secret-123"}\n')
    found = secretscan.scan([a, b, tmp_path / "missing.log"],
                            {"sk-tp-AAAAAAAAAAAAAAAAAAAA", "upstream-secret-123", "absent!!"})
    assert [(f.path.name, f.line) for f in found] == [("a.log", 2), ("b.log", 2)]
    assert "AAAAAAAAAAAA" not in str(found[0])  # the report does not repeat the secret
    assert secretscan.scan([a], set()) == []


def test_the_secrets_made_here_are_recorded():
    key = "sk-tp-" + "Q" * 43
    keys.secrets.hash_secret(key)  # what issuing, rotating or presenting a key does
    Credential().set_secret("sk-upstream-recorded-1")
    User().set_password("pw-recorded-long")
    User().set_password("short")
    assert {key, "sk-upstream-recorded-1", "pw-recorded-long"} <= secretscan.SECRETS
    assert "short" not in secretscan.SECRETS  # too short to tell from ordinary text


def test_this_process_logs_into_the_scanned_folder():
    logging.getLogger("tests.secretscan").warning("a line the scan reads")
    for handler in logging.getLogger().handlers:
        handler.flush()
    assert "a line the scan reads" in (log_dir() / "pytest.log").read_text()
