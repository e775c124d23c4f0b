"""Keyset pagination for log tables: newest first on (timestamp, id), never OFFSET.

The cursor is the (timestamp, id) of the last row of a page, written `<µs since 1970>_<id>`.
Clients pass back `next_cursor` as they got it, but every string of that shape is a valid cursor
("rows older than this point"), so the pattern in the schema is the whole rule. Rows inserted
while a client walks the pages are newer than its cursor, so no row is skipped or repeated.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel
from sqlalchemy import BigInteger, Select, and_, literal, or_
from sqlalchemy.orm import InstrumentedAttribute

from service.errors import ValidationFailed

T = TypeVar("T")

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

LimitParam = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size (max 1000).")]
# 18 digits each: every such id fits a BIGINT, and any time past the last one a datetime holds
# (9999-12-31) reads as that last one.
CURSOR_PATTERN = r"^[0-9]{1,18}_[0-9]{1,18}$"
_CURSOR = re.compile(CURSOR_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

CursorParam = Annotated[
    str | None,
    Query(
        max_length=37,
        pattern=CURSOR_PATTERN,
        description="`next_cursor` of the previous page: `<microseconds since 1970>_<row id>`, "
        "the last row's; the page holds the rows before it.",
        examples=["1764468000000000_4182"],
    ),
]


class CursorPage(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(at: datetime, row_id: int) -> str:
    if at.tzinfo is None:  # a driver that hands back naive UTC
        at = at.replace(tzinfo=UTC)
    return f"{(at - _EPOCH) // _MICROSECOND}_{row_id}"


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    if not _CURSOR.match(cursor):  # the query parameter's pattern, for callers that skip it
        raise ValidationFailed.field(["query", "cursor"], "is not a cursor (`<µs>_<id>`)")
    micros, row_id = cursor.split("_")
    try:
        at = _EPOCH + timedelta(microseconds=int(micros))
    except OverflowError:
        at = _LATEST
    return at, int(row_id)


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
        # The id is bound as a 64-bit integer: a cursor's id may exceed a 32-bit id column (no
        # row has it, and every row's id is below it), which the driver could not encode.
        bound_id = literal(last_id, BigInteger)
        query = query.where(or_(at < last_at, and_(at == last_at, row_id < bound_id)))
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
