"""Log tables: bulk inserts, keyset pages and chunked retention, shared by every log domain;
and the queries of the API logs (order logs and analyzer logs, one shape, two tables)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import cache
from operator import itemgetter
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel
from sqlalchemy import JSON, Table, delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.elements import ColumnElement

from service.db import begin_write
from service.errors import DatabaseUnavailable
from service.models.logs import ApiLogColumns
from service.pagination import keyset, page
from service.schemas.logs import ApiLogStats

# Rows deleted per retention transaction: small enough that no lock is held for long, large
# enough that deleting millions of rows is a few hundred short transactions.
RETENTION_CHUNK = 5_000

Row = dict[str, Any]
T = TypeVar("T")


def rows_from(items: Sequence[BaseModel], at: str) -> list[Row]:
    """Validated items as insert rows, stamped with the arrival time where they carry none.

    Log items are flat models (Batch enforces it), whose `__dict__` is exactly their fields:
    copying it costs a twentieth of `model_dump()`, which counts at 1000 rows a request.
    """
    now = datetime.now(UTC)
    rows = [item.__dict__.copy() for item in items]
    for row in rows:
        if row[at] is None:
            row[at] = now
    return rows


def time_window(
    at: InstrumentedAttribute[datetime], since: datetime | None, until: datetime | None
) -> list[ColumnElement[bool]]:
    """`since` inclusive, `until` exclusive."""
    conditions = []
    if since is not None:
        conditions.append(at >= since)
    if until is not None:
        conditions.append(at < until)
    return conditions


async def insert_returning_ids(session: AsyncSession, table: Table, rows: list[Row]) -> list[int]:
    """Insert `rows` as multi-row INSERTs; their new ids in input order.

    RETURNING does not promise an order, but the ids themselves do: PostgreSQL takes them from a
    sequence and SQLite gives each row max(rowid) + 1 (the writer holds the write lock), row by
    row in VALUES order, and the pages of one executemany run in order. So the ascending ids are
    the input order.
    """
    result = await session.execute(insert(table).returning(table.c.id), rows)
    return sorted(result.scalars().all())


async def insert_into_tables(session: AsyncSession, rows: list[Row]) -> list[int]:
    """Insert rows bound for several tables (each `{"table": Table, "row": values}`), one
    statement per table, all in the session's transaction; their ids in input order."""
    ids = [0] * len(rows)
    by_table: dict[str, tuple[Table, list[int]]] = {}
    for n, row in enumerate(rows):
        by_table.setdefault(row["table"].name, (row["table"], []))[1].append(n)
    for table, where in by_table.values():
        new = await insert_returning_ids(session, table, [rows[n]["row"] for n in where])
        for n, row_id in zip(where, new, strict=True):
            ids[n] = row_id
    return ids


async def insert_rows(session: AsyncSession, table: Table, rows: list[Row]) -> None:
    """Insert `rows` without reading ids back: COPY on PostgreSQL, executemany on SQLite."""
    if session.get_bind().dialect.name == "postgresql":
        await _copy(session, table, rows)
    else:
        await session.execute(insert(table), rows)


@cache
def _copy_layout(table: Table) -> tuple[list[str], Callable[[Row], tuple[Any, ...]]]:
    """(columns COPY fills, a row-to-record function) of `table`; the function leaves the row
    as it is (a group-commit retry or split starts again from the same rows)."""
    columns = [c for c in table.columns if not c.primary_key]
    names = [c.name for c in columns]
    record = itemgetter(*names)
    json_at = [n for n, c in enumerate(columns) if isinstance(c.type, JSON)]
    if not json_at:
        return names, record

    def with_json_text(row: Row) -> tuple[Any, ...]:
        values = list(record(row))
        for n in json_at:  # asyncpg's binary COPY takes JSON as text
            if values[n] is not None:
                values[n] = orjson.dumps(values[n]).decode()
        return tuple(values)

    return names, with_json_text


async def _copy(session: AsyncSession, table: Table, rows: list[Row]) -> None:
    import asyncpg

    names, record = _copy_layout(table)
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    # COPY goes to the driver directly (SQLAlchemy has no COPY); it runs as one atomic statement.
    try:
        await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
            table.name, records=map(record, rows), columns=names
        )
    except (
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,  # the protocol stuck after a connection cut mid-operation
        asyncpg.PostgresConnectionError,
        asyncpg.exceptions.OperatorInterventionError,
        OSError,
        TimeoutError,
    ) as error:
        # A COPY cut off part-way leaves the connection unusable: never hand it back to the pool.
        await connection.invalidate(error)
        raise DatabaseUnavailable() from error


async def list_page(
    session: AsyncSession,
    model: type[T],
    at: InstrumentedAttribute[datetime],
    conditions: Sequence[ColumnElement[bool]],
    *,
    cursor: str | None,
    limit: int,
) -> tuple[list[T], str | None]:
    """One page, newest first on (at, id), after `cursor`."""
    query = keyset(
        select(model).where(*conditions),
        at,
        model.id,  # type: ignore[attr-defined]
        cursor=cursor,
        limit=limit,
    )
    rows = list((await session.scalars(query)).all())
    return page(rows, limit, at.key)


async def delete_before(
    sessionmaker: async_sessionmaker[AsyncSession],
    table: Table,
    at: ColumnElement[datetime],
    before: datetime,
    *,
    chunk: int | None = None,
) -> int:
    """Delete rows older than `before`, `chunk` ids per transaction; how many went.

    Each chunk commits on its own session, so a delete of millions of rows never holds a long
    lock, and writers (the group commit included) get their turn between chunks.
    """
    chunk = chunk or RETENTION_CHUNK
    deleted = 0
    while True:
        oldest = select(table.c.id).where(at < before).limit(chunk)
        async with sessionmaker() as session:
            await begin_write(session)
            result = await session.execute(delete(table).where(table.c.id.in_(oldest)))
            await session.commit()
        count: int = result.rowcount  # type: ignore[attr-defined]
        deleted += count
        if count < chunk:
            return deleted


# --- API logs ----------------------------------------------------------------------------------


async def api_log_stats(
    session: AsyncSession,
    model: type[ApiLogColumns],
    since: datetime | None,
    until: datetime | None,
) -> ApiLogStats:
    where = time_window(model.created_at, since, until)

    async def counts(key: ColumnElement[Any] | InstrumentedAttribute[Any]) -> dict[str, int]:
        query = select(key, func.count()).where(*where, key.is_not(None)).group_by(key)
        return {str(k): n for k, n in (await session.execute(query)).all()}

    total = await session.scalar(select(func.count()).select_from(model).where(*where))
    return ApiLogStats(
        total=total or 0,
        by_api_type=await counts(model.api_type),
        by_symbol=await counts(model.request_data["symbol"].as_string()),
        by_exchange=await counts(model.request_data["exchange"].as_string()),
    )
