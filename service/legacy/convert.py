"""Legacy values as this service stores them.

Timestamps: the legacy layer wrote some columns as India time and the rest as UTC, and SQLite
kept neither offset (SQLAlchemy writes the wall-clock digits only). A naive value is read in the
zone its column was written in (`IST` or `UTC`, given by each importer); a value that carries an
offset keeps it. Everything is stored in UTC.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

IST = timezone(timedelta(hours=5, minutes=30), "IST")
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


class Skip(Exception):
    """This row cannot be imported; the message is the reason the report gives."""


def timestamp(value: Any, zone: timezone, *, what: str = "timestamp") -> datetime:
    """A legacy DATETIME as an aware UTC datetime; Skip when absent or unreadable."""
    if value is None or value == "":
        raise Skip(f"{what} missing")
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise Skip(f"{what} unreadable") from None
    else:
        raise Skip(f"{what} unreadable")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    try:
        converted = parsed.astimezone(UTC)
    except OverflowError:
        raise Skip(f"{what} out of range") from None
    if converted.year < 1970:
        raise Skip(f"{what} out of range")
    return converted


def optional_timestamp(value: Any, zone: timezone, *, what: str = "timestamp") -> datetime | None:
    return None if value is None or value == "" else timestamp(value, zone, what=what)


def day_of(value: Any) -> date | None:
    if value is None or value == "":
        return None
    try:
        return date.fromisoformat(str(value).strip()[:10])
    except ValueError:
        raise Skip("date unreadable") from None


def boolean(value: Any, default: bool) -> bool:
    """SQLite keeps booleans as 0/1 (or, written by hand, as text)."""
    if value is None:
        return default
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "t", "yes"):
            return True
        if lowered in ("0", "false", "f", "no", ""):
            return False
        raise Skip(f"{value!r} is not a boolean")
    return bool(value)


def integer(value: Any, *, what: str, default: int | None = None, low: int = -INT32_MAX) -> int:
    if value is None or value == "":
        if default is None:
            raise Skip(f"{what} missing")
        return default
    try:
        number = int(float(value)) if isinstance(value, str) else int(value)
    except (TypeError, ValueError, OverflowError):
        raise Skip(f"{what} is not a whole number") from None
    if isinstance(value, float) and not value.is_integer():
        raise Skip(f"{what} is not a whole number")
    if not low <= number <= INT32_MAX:
        raise Skip(f"{what} out of range")
    return number


def number(value: Any, *, what: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise Skip(f"{what} is not a number") from None
    if not math.isfinite(result):
        raise Skip(f"{what} is not finite")
    return result


def text(value: Any, *, what: str = "text") -> str | None:
    """Text as stored (numbers as their digits); NUL never reaches the database."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode()
        except UnicodeDecodeError:
            raise Skip(f"{what} is not UTF-8") from None
    result = str(value)
    if "\x00" in result:
        raise Skip(f"{what} holds a NUL character")
    return result


def json_text(value: Any) -> tuple[Any, bool]:
    """A legacy JSON text column as a JSON value, and whether it parsed.

    Text that is not JSON is kept as a JSON string rather than lost (the legacy reader showed
    it as raw text too).
    """
    raw = text(value)
    if raw is None:
        return None, True
    try:
        return json.loads(raw), True
    except ValueError:
        return raw, False
