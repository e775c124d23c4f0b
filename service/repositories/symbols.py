"""symbols: the contract's version, reading it for the in-memory index, deleting, and searching
it in the database (pg_trgm on PostgreSQL), for when the in-memory index is not built."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import date
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

from service import audit, symbol_source
from service.cache import invalidate
from service.models.base import utcnow
from service.models.symbols import SEARCH_TEXT_SQL, ContractDownload, Symbol, SymbolContract
from service.symbol_index import (
    COLUMNS,
    DERIVATIVE_TYPES,
    IndexBuilder,
    SymbolIndex,
    fold,
    numeric_term,
)

TOPIC = "symbols"
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


async def exchange_counts(session: AsyncSession) -> dict[str, int]:
    """Rows per exchange (what the audit trail records of a load or delete); the primary key
    (exchange, symbol) answers it without reading a row."""
    query = select(Symbol.exchange, func.count()).group_by(Symbol.exchange)
    return {str(exchange): int(count) for exchange, count in (await session.execute(query)).all()}


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
    """Build the in-memory index from the database, rows in search-rank order (the database's
    order); the version first, the rows after (symbol_source.read_index says why)."""
    conn = await session.connection()
    if conn.dialect.name == "postgresql":
        driver: Any = (await conn.get_raw_connection()).driver_connection
        return await symbol_source.read_index(driver, previous)
    contract = (
        await session.execute(
            select(SymbolContract.version, SymbolContract.loaded_at).where(SymbolContract.id == 1)
        )
    ).first()
    version, loaded_at = (contract[0], contract[1]) if contract else (0, None)
    builder = IndexBuilder(version, loaded_at, previous)
    stmt = select(*_COLUMNS).order_by(*_rank(conn.dialect.name))
    result = await conn.stream(stmt.execution_options(yield_per=symbol_source.FETCH_ROWS))
    async for rows in result.partitions():
        builder.add_rows(rows)
        await asyncio.sleep(0)  # let requests in between chunks
    return builder.finish()


# --- deleting ----------------------------------------------------------------------------------


async def delete_symbols(session: AsyncSession, exchanges: Sequence[str] | None) -> int:
    version = await lock_contract(session)
    counts = await exchange_counts(session)
    stmt = delete(Symbol)
    if exchanges:
        stmt = stmt.where(Symbol.exchange.in_(exchanges))
    deleted: int = (await session.execute(stmt)).rowcount  # type: ignore[attr-defined]
    if deleted:
        left = {e: n for e, n in counts.items() if exchanges and e not in exchanges}
        await audit.record_contract(
            session,
            "delete",
            before=(version, counts),
            after=(await bump_version(session), left),
            scope=exchanges or None,
        )
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
    types: frozenset[str] | None = None,
    expiry: str | None = None,
    underlying: str | None = None,
    strike_min: float | None = None,
    strike_max: float | None = None,
    limit: int = 50,
) -> Select[Any]:
    """Each term ILIKE the search text (GIN trigram index on PostgreSQL) or equal to the strike
    when numeric; ranked as SymbolIndex.search ranks with terms: exact symbol, exact underlying,
    underlying prefix, symbol prefix, the rest, each in rank order."""
    assert terms, "the database path serves searches with terms only"
    text = _SEARCH_TEXT[dialect]
    conditions: list[ColumnElement[bool]] = []
    for term in terms:
        matches = text.ilike(_like_pattern(term), escape=_ESCAPE)
        number = numeric_term(term)
        conditions.append(or_(matches, Symbol.strike == number) if number is not None else matches)
    if exchange is not None:
        conditions.append(Symbol.exchange == exchange)
    if types is not None:
        conditions.append(Symbol.instrumenttype.in_(sorted(types)))
    if expiry is not None:
        conditions.append(Symbol.expiry == expiry)
    name = func.upper(_binary(Symbol.name, dialect))
    if underlying is not None:
        conditions.append(name == fold(underlying))
        derivative = Symbol.instrumenttype.in_(sorted(DERIVATIVE_TYPES))
        conditions.append(or_(Symbol.expiry.is_not(None), derivative))
    if strike_min is not None:
        conditions.append(Symbol.strike >= strike_min)
    if strike_max is not None:
        conditions.append(Symbol.strike <= strike_max)
    first = terms[0]
    prefix = _like_pattern(first)[1:]  # "term%": LIKE, after upper(), is case-sensitive
    symbol = func.upper(_binary(Symbol.symbol, dialect))
    tier = case(
        (symbol == " ".join(terms), 0),
        (name == first, 1),
        (name.like(prefix, escape=_ESCAPE), 2),
        (symbol.like(prefix, escape=_ESCAPE), 3),
        else_=4,
    )
    return select(*_COLUMNS).where(*conditions).order_by(tier, *_rank(dialect)).limit(limit)


async def search_symbols(
    session: AsyncSession,
    terms: Sequence[str],
    *,
    exchange: str | None = None,
    types: frozenset[str] | None = None,
    expiry: str | None = None,
    underlying: str | None = None,
    strike_min: float | None = None,
    strike_max: float | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """The same answer as SymbolIndex.search with terms, from the database."""
    stmt = search_statement(
        dialect_of(session),
        terms,
        exchange=exchange,
        types=types,
        expiry=expiry,
        underlying=underlying,
        strike_min=strike_min,
        strike_max=strike_max,
        limit=limit,
    )
    result = await session.execute(stmt)
    return [dict(zip(COLUMNS, row, strict=True)) for row in result]


# --- download status, per broker -----------------------------------------------------------------


async def download_statuses(session: AsyncSession) -> list[ContractDownload]:
    result = await session.scalars(select(ContractDownload).order_by(ContractDownload.broker))
    return list(result)


async def download_status(session: AsyncSession, broker: str) -> ContractDownload | None:
    return await session.get(ContractDownload, broker)


async def _upsert_status(session: AsyncSession, broker: str, values: dict[str, Any]) -> None:
    insert = pg_insert if dialect_of(session) == "postgresql" else sqlite_insert
    fresh = {"total_symbols": 0, "exchange_stats": {}, **values}
    stmt = insert(ContractDownload).values(broker=broker, **fresh)
    await session.execute(
        stmt.on_conflict_do_update(index_elements=[ContractDownload.broker], set_=values)
    )


async def report_status(
    session: AsyncSession, broker: str, status: str, message: str | None
) -> None:
    """The loader's report (`pending`, `downloading`, `error`): the counts of the last success
    stay, but the broker is not ready until its next one."""
    values = {"status": status, "message": message, "is_ready": False, "last_updated": utcnow()}
    await _upsert_status(session, broker, values)


async def record_success(
    session: AsyncSession,
    broker: str,
    *,
    total: int,
    exchange_stats: dict[str, int],
    duration_s: float,
    day: date,
) -> None:
    now = utcnow()
    await _upsert_status(
        session,
        broker,
        {
            "status": "success",
            "message": f"Loaded {total} symbols.",
            "is_ready": True,
            "last_updated": now,
            "total_symbols": total,
            "exchange_stats": exchange_stats,
            "last_download_time": now,
            "download_duration_seconds": round(duration_s, 3),
            "download_date": day,
        },
    )
