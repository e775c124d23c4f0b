"""symbols: the contract's version, reading it for the in-memory index, deleting, and searching
it in the database (pg_trgm on PostgreSQL), for when the in-memory index is not built."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    case,
    delete,
    func,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from service.cache import invalidate
from service.models.base import utcnow
from service.models.symbols import SEARCH_TEXT_SQL, Symbol, SymbolContract
from service.symbol_index import COLUMNS, IndexBuilder, SymbolIndex, numeric_term

TOPIC = "symbols"
FETCH_ROWS = 20_000
_ESCAPE = "/"

_COLUMNS = [getattr(Symbol, c) for c in COLUMNS]
# The same text the GIN index covers; SQLite has no `::` casts but the same meaning.
_SEARCH_TEXT: dict[str, ColumnElement[str]] = {
    "postgresql": literal_column(SEARCH_TEXT_SQL),
    "sqlite": literal_column(
        "symbol || ' ' || brsymbol || ' ' || COALESCE(name, '') || ' ' || token"
    ),
}


def dialect_of(session: AsyncSession) -> str:
    bind = session.bind
    assert bind is not None, "sessions are bound to the app's engine"
    return bind.dialect.name


def _binary(column: Any, dialect: str) -> Any:
    """Code-point order and ASCII-only case mapping: what SQLite does by default, what
    PostgreSQL does under the "C" collation, and what Python's str does."""
    return column.collate("C") if dialect == "postgresql" else column


def _rank(dialect: str) -> list[Any]:
    """The search rank: shorter symbols first, then by symbol, then by exchange."""
    return [
        func.length(Symbol.symbol),
        _binary(Symbol.symbol, dialect),
        _binary(Symbol.exchange, dialect),
    ]


# --- the contract's version --------------------------------------------------------------------


async def contract_version(session: AsyncSession) -> int:
    version = await session.scalar(select(SymbolContract.version).where(SymbolContract.id == 1))
    return int(version or 0)


async def lock_contract(session: AsyncSession) -> int:
    """Take the contract's row lock for the rest of the transaction (loads and deletes run one
    at a time; on SQLite the write transaction already does that) and return its version."""
    insert = pg_insert if dialect_of(session) == "postgresql" else sqlite_insert
    await session.execute(insert(SymbolContract).values(id=1, version=0).on_conflict_do_nothing())
    version = await session.scalar(
        select(SymbolContract.version).where(SymbolContract.id == 1).with_for_update()
    )
    return int(version or 0)


async def bump_version(session: AsyncSession) -> int:
    version = await session.scalar(
        update(SymbolContract)
        .where(SymbolContract.id == 1)
        .values(version=SymbolContract.version + 1, loaded_at=utcnow())
        .returning(SymbolContract.version)
    )
    assert version is not None
    return int(version)


# --- the in-memory index -----------------------------------------------------------------------


async def read_index(session: AsyncSession, previous: SymbolIndex | None = None) -> SymbolIndex:
    """Build the in-memory index from the database, rows in search-rank order (sorted there).

    The version is read first and the rows after, each by its own statement: should a load commit
    in between, the index holds newer rows under the older version, and the next version check
    rebuilds it; the other way round, it would keep old rows under the new version for good.
    """
    contract = (
        await session.execute(
            select(SymbolContract.version, SymbolContract.loaded_at).where(SymbolContract.id == 1)
        )
    ).first()
    version, loaded_at = (contract[0], contract[1]) if contract else (0, None)
    builder = IndexBuilder(version, loaded_at, previous)
    async for rows in _ranked_rows(session):
        builder.add_rows(rows)
        await asyncio.sleep(0)  # let requests in between chunks
    return builder.finish()


async def _ranked_rows(session: AsyncSession) -> AsyncIterator[Sequence[Sequence[Any]]]:
    """Every row in search-rank order (sorted by the database), FETCH_ROWS at a time.

    A chunk at a time rather than all at once: the short-lived objects of one chunk (a string
    per repeated name or exchange, until the builder shares them) leave holes that the next chunk
    fills, instead of tens of megabytes of fragmented heap that the process keeps for good."""
    conn = await session.connection()
    stmt = select(*_COLUMNS).order_by(*_rank(conn.dialect.name))
    if conn.dialect.name == "postgresql":
        # asyncpg's own cursor: its records cost a third of SQLAlchemy's rows to make.
        driver: Any = (await conn.get_raw_connection()).driver_connection
        cursor = await driver.cursor(str(stmt.compile(dialect=conn.dialect)))
        # The next chunk is asked for before this one is handed over: PostgreSQL prepares it
        # while the caller builds.
        pending = asyncio.ensure_future(cursor.fetch(FETCH_ROWS))
        try:
            while rows := await pending:
                pending = asyncio.ensure_future(cursor.fetch(FETCH_ROWS))
                await asyncio.sleep(0)  # sends the FETCH
                yield rows
        finally:
            if not pending.done():
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
        return
    result = await conn.stream(stmt.execution_options(yield_per=FETCH_ROWS))
    async for rows in result.partitions():
        yield rows


# --- deleting ----------------------------------------------------------------------------------


async def delete_symbols(session: AsyncSession, exchanges: Sequence[str] | None) -> int:
    await lock_contract(session)
    stmt = delete(Symbol)
    if exchanges:
        stmt = stmt.where(Symbol.exchange.in_(exchanges))
    deleted: int = (await session.execute(stmt)).rowcount  # type: ignore[attr-defined]
    if deleted:
        await bump_version(session)
        await invalidate(session, TOPIC)
    return deleted


# --- searching in the database -----------------------------------------------------------------


def _like_pattern(term: str) -> str:
    escaped = term.replace(_ESCAPE, _ESCAPE * 2).replace("%", _ESCAPE + "%")
    return "%" + escaped.replace("_", _ESCAPE + "_") + "%"


def search_statement(
    dialect: str,
    terms: Sequence[str],
    *,
    exchange: str | None = None,
    instrumenttype: str | None = None,
    expiry: str | None = None,
    limit: int = 50,
) -> Select[Any]:
    """Each term ILIKE the search text (GIN trigram index on PostgreSQL) or equal to the strike
    when numeric; exact symbol first, then the rank of SymbolIndex.search."""
    text = _SEARCH_TEXT[dialect]
    conditions: list[ColumnElement[bool]] = []
    for term in terms:
        matches = text.ilike(_like_pattern(term), escape=_ESCAPE)
        number = numeric_term(term)
        conditions.append(or_(matches, Symbol.strike == number) if number is not None else matches)
    if exchange is not None:
        conditions.append(Symbol.exchange == exchange)
    if instrumenttype is not None:
        conditions.append(Symbol.instrumenttype == instrumenttype)
    if expiry is not None:
        conditions.append(Symbol.expiry == expiry)
    exact = case((func.upper(_binary(Symbol.symbol, dialect)) == " ".join(terms), 0), else_=1)
    return select(*_COLUMNS).where(*conditions).order_by(exact, *_rank(dialect)).limit(limit)


async def search_symbols(
    session: AsyncSession,
    terms: Sequence[str],
    *,
    exchange: str | None = None,
    instrumenttype: str | None = None,
    expiry: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """The same answer as SymbolIndex.search, from the database."""
    stmt = search_statement(
        dialect_of(session),
        terms,
        exchange=exchange,
        instrumenttype=instrumenttype,
        expiry=expiry,
        limit=limit,
    )
    result = await session.execute(stmt)
    return [dict(zip(COLUMNS, row, strict=True)) for row in result]
