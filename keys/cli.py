"""What every ``manage.py`` command of Turnpike shares: ``--json`` on every action, bad input
as a one-line error (never a traceback), and finding the one object an operator means by a
name or a secret's prefix (an ambiguous prefix is an error naming the candidates).

A command subclasses :class:`OperatorCommand`, declares its actions as subparsers with
``dest="action"`` and implements ``do_<action>(opts)``; a command without actions implements
``run(opts)``. It prints with :meth:`OperatorCommand.emit`: with ``--json`` one JSON document
on stdout and nothing else, otherwise the text lines it passes.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import OperationalError
from django.db.models import Model, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from redis.exceptions import RedisError

from keys.secrets import hash_secret, masked
from keys.services import ApplicationError

M = TypeVar("M", bound=Model)

JSON_HELP = ("Print one JSON document (an object, or an array for list) on stdout and nothing "
             "else; errors still go to stderr with a non-zero exit.")
# How many candidates an ambiguous reference names before "and N more".
CANDIDATES_SHOWN = 10


# --- errors ---------------------------------------------------------------------------------

def error_text(exc: BaseException) -> str:
    """One readable line: ``allowed_ips: Not an IP address …`` rather than the repr of a
    ValidationError's dict."""
    if isinstance(exc, ValidationError) and hasattr(exc, "error_dict"):
        return "; ".join(f"{field}: {' '.join(messages)}" if field != "__all__"
                         else " ".join(messages)
                         for field, messages in exc.message_dict.items())
    if isinstance(exc, ValidationError):
        return " ".join(exc.messages)
    return str(exc)


# --- output ---------------------------------------------------------------------------------

def to_json(value: Any) -> Any:
    """``json.dumps``'s default: money as exact strings, times as ISO 8601."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def text(value: Any) -> str:
    """A field's value in a human listing: ``-`` for nothing, lists comma-separated."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "-"
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> list[str]:
    """Rows as aligned text columns; ``columns`` are (heading, field) pairs."""
    cells = [[text(row.get(field)) for _, field in columns] for row in rows]
    widths = [max([len(heading)] + [len(r[i]) for r in cells])
              for i, (heading, _) in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    return [line([h for h, _ in columns])] + [line(r) for r in cells]


def fields(data: dict[str, Any]) -> list[str]:
    """One object as ``name  value`` lines."""
    width = max((len(k) for k in data), default=0)
    return [f"{name.ljust(width)}  {text(value)}" for name, value in data.items()]


# --- input ----------------------------------------------------------------------------------

def parse_when(value: str, option: str = "--expires") -> datetime:
    """An ISO date or datetime (local time when it has no zone)."""
    parsed = parse_datetime(value.strip())
    if parsed is None:
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise CommandError(f"{option} {value!r} is not an ISO date or datetime "
                               "(2027-01-01 or 2027-01-01T12:00)") from None
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed)
    return parsed


_DURATION = re.compile(r"^(\d+)\s*([smhd]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str, option: str) -> timedelta:
    """``90``, ``90s``, ``30m``, ``24h`` or ``7d``; never negative."""
    match = _DURATION.match(value.strip().lower())
    if match is None:
        raise CommandError(f"{option} {value!r} is not a duration: give seconds or a number "
                           "with s, m, h or d (30m, 24h, 7d).")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > 10 * 365 * 86400:
        raise CommandError(f"{option} {value!r} is longer than ten years.")
    return timedelta(seconds=seconds)


def parse_capture(value: str, option: str = "--capture-bodies", *,
                  inherit: bool = False) -> tuple[str, datetime | None]:
    """A body capture setting (issue 15) as (mode, until): ``off``; ``inherit`` (a key's:
    as its tenant, when ``inherit``); or on for a duration (``30m``, ``24h``, ``3d``) or
    until an ISO datetime, which must be in the future."""
    text = value.strip().lower()
    if text == "off" or (inherit and text == "inherit"):
        return text, None
    if _DURATION.match(text):
        until = timezone.now() + parse_duration(text, option)
    else:
        try:
            until = parse_when(value, option)
        except CommandError:
            words = "inherit, off" if inherit else "off"
            raise CommandError(f"{option} {value!r} is not {words}, a duration (30m, 24h, "
                               "3d) or an ISO datetime to capture until.") from None
    if until <= timezone.now():
        raise CommandError(f"{option} {value!r} ends in the past: give a later time, or "
                           "'off'.")
    return "on", until


def parse_decimal(value: str | None, option: str) -> Decimal | None:
    if value is None:
        return None
    try:
        amount = Decimal(value.strip())
    except InvalidOperation:
        raise CommandError(f"{option} {value!r} is not a decimal number") from None
    if not amount.is_finite():
        raise CommandError(f"{option} {value!r} is not a finite number")
    return amount


# --- finding what the operator means ---------------------------------------------------------

def _candidates(items: Iterable[str], total: int) -> str:
    shown = list(items)[:CANDIDATES_SHOWN]
    more = f" and {total - CANDIDATES_SHOWN} more" if total > CANDIDATES_SHOWN else ""
    return ", ".join(shown) + more


def find_named(queryset: QuerySet[M], value: str, *, what: str, field: str = "name") -> M:
    """The one object whose ``field`` is ``value``, or else starts with it. An exact name
    always wins (``acme`` is acme even when ``acme-labs`` exists); a prefix that fits several
    is an error naming them, one that fits none an error too."""
    value = (value or "").strip()
    if not value:
        raise CommandError(f"Name the {what}.")
    exact = queryset.filter(**{field: value}).first()
    if exact is not None:
        return exact
    matches = queryset.filter(**{f"{field}__startswith": value}).order_by(field)
    found = list(matches[: CANDIDATES_SHOWN + 1])
    if not found:
        raise CommandError(f"No {what} named {value!r}.")
    if len(found) > 1:
        total = matches.count()
        names = _candidates((repr(getattr(o, field)) for o in found), total)
        raise CommandError(f"{value!r} matches {total} {what}s: {names}. Give more of the "
                           "name.")
    return found[0]


def find_user(email: str) -> Any:
    """The user with this email (case-insensitive, as logins are)."""
    from keys.membership import user_by_email

    user = user_by_email(email or "")
    if user is None:
        raise CommandError(f"No user with the email {email!r} (create one with "
                           "'manage.py user create').")
    return user


def find_by_secret(queryset: QuerySet[M], reference: str, *, scheme: str, display_length: int,
                   noun: str, describe: Callable[[M], str], where: str = "",
                   narrow: str = "") -> M:
    """The one object (API key, access token: anything with ``prefix``, ``last4`` and
    ``secret_hash``) an operator means by ``reference``: a start of its display prefix
    with at least one character after the scheme, its masked form as ``<noun> list`` shows
    it (``…`` or ``...``), or the full secret (a leaked one, as found). Nothing is guessed:
    no match and several matches are both errors, the latter naming the candidates, so a
    command that disables or deletes never picks one at random. Errors never echo more of a
    secret than its masked form."""
    ref = (reference or "").strip()
    last4 = ""
    for ellipsis in ("…", "..."):
        if ellipsis in ref:
            ref, last4 = (part.strip() for part in ref.split(ellipsis, 1))
            break
    shown = masked(ref[:display_length], ref[-4:]) if len(ref) > display_length else ref
    if last4:
        shown = masked(ref[:display_length], last4)
    example = scheme + "ab12"
    if not ref.startswith(scheme) or len(ref) == len(scheme):
        raise CommandError(
            f"{shown!r} is not a {noun} prefix: give the start of the {noun} as '{noun} list' "
            f"shows it ({example}, or {example}…wxyz), or the full secret.")
    if last4:
        if len(ref) != display_length or len(last4) != 4:
            raise CommandError(
                f"{shown!r} is not a masked {noun}: it is the {display_length}-character "
                f"display prefix, '…', and the last four characters ({example}…wxyz).")
        queryset = queryset.filter(prefix=ref, last4=last4)
    elif len(ref) > display_length:  # longer than any display prefix: a full secret
        queryset = queryset.filter(secret_hash=hash_secret(ref))
    else:
        queryset = queryset.filter(prefix__startswith=ref)
    queryset = queryset.order_by("id")
    matches = list(queryset[: CANDIDATES_SHOWN + 1])
    if not matches:
        raise CommandError(f"No {noun} matches {shown!r}{where}.")
    if len(matches) > 1:
        total = queryset.count()
        names = _candidates((describe(m) for m in matches), total)
        hint = f", or {narrow}" if narrow else ""
        raise CommandError(f"{shown!r} matches {total} {noun}s{where}: {names}. Give more of "
                           f"the prefix, the masked form{hint}.")
    return matches[0]


# --- the command base -----------------------------------------------------------------------

def _leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers that take options: every action's subparser, or the parser itself."""
    leaves: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if all(sub is not seen for seen in leaves):
                    leaves.append(sub)
    return leaves or [parser]


class OperatorCommand(BaseCommand):
    """A Turnpike command: ``--json`` on every action, application errors as CommandError
    (Django prints ``CommandError: …`` on stderr and exits 1), ``do_<action>`` dispatch."""

    json = False

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        for leaf in _leaf_parsers(parser):
            if "--json" not in leaf._option_string_actions:
                leaf.add_argument("--json", action="store_true", help=JSON_HELP)
        return parser

    def execute(self, *args: Any, **options: Any) -> Any:
        self.json = bool(options.get("json"))
        try:
            return super().execute(*args, **options)
        except (ApplicationError, ValidationError) as exc:
            raise CommandError(error_text(exc)) from exc
        except OperationalError as exc:  # the database is away: say so, not a traceback
            raise CommandError(f"The database is unreachable: {exc}".strip()) from exc
        except RedisError as exc:
            raise CommandError(f"Redis is unreachable (REDIS_URL): {exc}") from exc

    def handle(self, *args: Any, **opts: Any) -> None:
        action = opts.get("action")
        if action is None:
            self.run(opts)
            return
        getattr(self, "do_" + action.replace("-", "_"))(opts)

    def run(self, opts: dict[str, Any]) -> None:
        raise NotImplementedError

    def emit(self, data: Any, lines: str | Iterable[str] = ()) -> None:
        """``data`` as JSON with ``--json``, else the text ``lines``."""
        if self.json:
            self.stdout.write(json.dumps(data, default=to_json))
            return
        for line in [lines] if isinstance(lines, str) else lines:
            self.stdout.write(line)

    def emit_secret(self, data: dict[str, Any], secret: str, message: str) -> None:
        """A new secret, shown once: with ``--json`` inside the object (``secret``),
        otherwise ``message`` and then the secret alone on the last line (for scripts:
        ``| tail -n1``)."""
        if self.json:
            self.emit({"secret": secret, **data})
            return
        self.stdout.write(f"{message} Copy the secret now; it is not shown again:")
        self.stdout.write(secret)
