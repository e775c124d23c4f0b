"""Keyset pagination for log tables: newest first on (timestamp, id), never OFFSET.

The cursor is the (timestamp, id) of the last row of a page, opaque to clients. Rows inserted
while a client walks the pages are newer than its cursor, so no row is skipped or repeated.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timedelta
from typing import Annotated, Any, Generic, TypeVar

import orjson
from fastapi import Query
from pydantic import BaseModel
from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute

from service.errors import ValidationFailed
from service.schemas.types import INT64_MAX

T = TypeVar("T")

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

LimitParam = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size (max 1000).")]
CursorParam = Annotated[
    str | None,
    Query(
        max_length=200,
        pattern=r"^[A-Za-z0-9_-]*$",
        description="`next_cursor` of the previous page.",
    ),
]


class CursorPage(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(at: datetime, row_id: int) -> str:
    raw = orjson.dumps([at.isoformat(), row_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at_text, row_id = orjson.loads(raw)
        at = datetime.fromisoformat(at_text)
        # Only what encode_cursor writes: a UTC time and a positive id, which the databases
        # can compare with (an out-of-range one would fail in the driver, not here).
        if at.utcoffset() != timedelta(0) or type(row_id) is not int or not 0 < row_id <= INT64_MAX:
            raise ValueError(cursor)
        return at, row_id
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise ValidationFailed.field(
            ["query", "cursor"], "is not a cursor this service issued"
        ) from None


def keyset(
    query: Select[Any],
    at: InstrumentedAttribute[Any],
    row_id: InstrumentedAttribute[Any],
    *,
    cursor: str | None,
    limit: int,
) -> Select[Any]:
    """Order newest first and continue after `cursor`; fetches one extra row to see if more exist."""
    if cursor is not None:
        last_at, last_id = decode_cursor(cursor)
        # Expanded row-value comparison: (at, id) < (last_at, last_id), which both backends
        # answer from the (at, id) index.
        query = query.where(or_(at < last_at, and_(at == last_at, row_id < last_id)))
    return query.order_by(at.desc(), row_id.desc()).limit(limit + 1)


def page(
    rows: list[Any], limit: int, at_field: str, id_field: str = "id"
) -> tuple[list[Any], str | None]:
    """Split the limit+1 rows fetched by `keyset` into a page and the next cursor."""
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    last = rows[-1]
    return rows, encode_cursor(getattr(last, at_field), getattr(last, id_field))


# The one bound of the lists that are not keyset pages (users, sessions, strategies, bans): they
# answer at most this many items, in their documented order.
ListLimitParam = Annotated[
    int, Query(ge=1, le=MAX_LIMIT, description="At most this many items (max 1000).")
]
