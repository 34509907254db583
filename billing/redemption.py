"""Redemption codes: single-use codes that top up the redeeming tenant's balance.

A code looks like ``tp-rc-`` + 24 characters from an alphabet with no look-alikes (no 0/O,
1/I/L), printed in groups of four so it can be read aloud:
``tp-rc-7KQM-X2RD-9HVA-CT4E-WNBP-3FJZ`` (~119 bits). Like API keys, only the SHA-256 of
the canonical form (no dashes, upper case) and a display prefix (``tp-rc-7KQM-X2``) are
stored; the code itself is returned once, by ``redeem_create``. Redeeming accepts any
case, spaces and dashes, so a code typed from a printout still works.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime
from decimal import Decimal, InvalidOperation

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from billing.models import LedgerEntry, RedemptionCode
from billing.services import ledger_post
from keys.models import Tenant
from keys.secrets import hash_secret
from keys.services import ApplicationError
from portal.audit.record import log_bulk_create

CODE_PREFIX = "tp-rc-"
ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
BODY_LENGTH = 24
GROUP = 4
# Characters of the body shown in the display prefix ("tp-rc-7KQM-X2"): enough to tell
# the codes of a large batch apart, while ~89 bits stay secret.
PREFIX_BODY_CHARS = 6
MAX_COUNT = 10_000
MAX_AMOUNT = Decimal("1000000000000")  # the MONEY field holds 12 integer digits
_SEPARATORS = re.compile(r"[\s\-_]+")


class RedemptionError(ApplicationError):
    """A code that cannot be redeemed. ``reason`` is one of ``invalid`` (not a code, or
    no such code), ``redeemed`` (already used) and ``expired``."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


# --- the code's text ------------------------------------------------------------------

def _grouped(body: str) -> str:
    return "-".join(body[i:i + GROUP] for i in range(0, len(body), GROUP))


def normalize_code(code: str) -> str | None:
    """The canonical form (``tp-rc-`` + 24 upper-case characters, no dashes) that is
    hashed, or None when ``code`` cannot be a redemption code."""
    text = _SEPARATORS.sub("", code or "").upper()
    scheme = _SEPARATORS.sub("", CODE_PREFIX).upper()  # "TPRC"
    if not text.startswith(scheme):
        return None
    body = text[len(scheme):]
    if len(body) != BODY_LENGTH or any(c not in ALPHABET for c in body):
        return None
    return CODE_PREFIX + body


def code_hash(code: str) -> str | None:
    canonical = normalize_code(code)
    return hash_secret(canonical) if canonical else None


def code_prefix(code: str) -> str:
    """What lists show instead of the code, e.g. ``tp-rc-7KQM-X2``."""
    canonical = normalize_code(code)
    if canonical is None:
        raise ValueError("not a redemption code")
    return CODE_PREFIX + _grouped(canonical[len(CODE_PREFIX):][:PREFIX_BODY_CHARS])


def generate_code() -> str:
    return CODE_PREFIX + _grouped("".join(secrets.choice(ALPHABET)
                                          for _ in range(BODY_LENGTH)))


def code_state(row: RedemptionCode, now: datetime | None = None) -> str:
    """``redeemed``, ``expired`` or ``active``."""
    if row.redeemed_at is not None:
        return "redeemed"
    if row.expires_at is not None and row.expires_at <= (now or timezone.now()):
        return "expired"
    return "active"


# --- services ---------------------------------------------------------------------------

def _valid_amount(amount: Decimal | int | str) -> Decimal:
    try:
        value = amount if isinstance(amount, Decimal) else Decimal(str(amount).strip())
    except (InvalidOperation, ValueError) as exc:
        raise ApplicationError(f"The amount {amount!r} is not a number.") from exc
    if not value.is_finite() or value <= 0:
        raise ApplicationError("The amount of a redemption code must be more than zero.")
    if value >= MAX_AMOUNT:
        raise ApplicationError(f"The amount of a redemption code must be under {MAX_AMOUNT}.")
    if value != value.quantize(Decimal("0.000001")):
        raise ApplicationError("The amount may have at most 6 decimal places.")
    return value


@transaction.atomic
def redeem_create(*, amount: Decimal, count: int, expires_at: datetime | None = None,
                  batch: str = "", user: User | None = None) -> list[str]:
    """Make ``count`` codes worth ``amount`` each and return them. This is the only time
    the codes exist in plain text: show or hand them over now."""
    value = _valid_amount(amount)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
        raise ApplicationError(f"The number of codes must be between 1 and {MAX_COUNT}.")
    batch = (batch or "").strip()
    if len(batch) > (RedemptionCode._meta.get_field("batch").max_length or 0):
        raise ApplicationError("The batch name is too long (100 characters at most).")
    if expires_at is not None:
        if timezone.is_naive(expires_at):
            expires_at = timezone.make_aware(expires_at)
        if expires_at <= timezone.now():
            raise ApplicationError("The expiry is in the past; the codes would be useless.")
    codes: list[str] = []
    rows: list[RedemptionCode] = []
    seen: set[str] = set()
    while len(codes) < count:
        code = generate_code()
        digest = code_hash(code)
        assert digest is not None
        if digest in seen:  # never in practice (119 bits), but cheap to rule out
            continue
        seen.add(digest)
        codes.append(code)
        rows.append(RedemptionCode(code_hash=digest, prefix=code_prefix(code), amount=value,
                                   batch=batch, expires_at=expires_at, created_by=user))
    RedemptionCode.objects.bulk_create(rows, batch_size=1000)
    log_bulk_create(rows)  # bulk_create sends no signals
    return codes


def redeem(*, code: str, tenant: Tenant, user: User | None = None) -> LedgerEntry:
    """Credit ``tenant`` with the code's amount and use the code up, in one transaction.
    The code's row is locked first, so of two concurrent redemptions exactly one wins;
    the other sees it redeemed."""
    digest = code_hash(code)
    if digest is None:
        raise RedemptionError(
            f"This is not a redemption code. Codes look like {CODE_PREFIX}XXXX-XXXX-…",
            reason="invalid")
    with transaction.atomic():
        row = (RedemptionCode.objects.select_for_update()
               .filter(code_hash=digest).first())
        if row is None:
            raise RedemptionError("No such redemption code. Check it and try again.",
                                  reason="invalid")
        if row.redeemed_at is not None:
            raise RedemptionError("This redemption code has already been used.",
                                  reason="redeemed")
        now = timezone.now()
        if row.expires_at is not None and row.expires_at <= now:
            raise RedemptionError("This redemption code has expired.", reason="expired")
        row.redeemed_at = now
        row.redeemed_by = tenant
        row.save(update_fields=["redeemed_at", "redeemed_by"])
        return ledger_post(tenant=tenant, kind=LedgerEntry.Kind.REDEMPTION, amount=row.amount,
                           reference=row.prefix, user=user)
