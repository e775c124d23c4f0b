"""The in-memory index read from PostgreSQL with asyncpg alone: the contract's version first,
then every row in search-rank order, a chunk at a time.

The symbols repository reads through it, and so does the index builder a start forks before it
imports the app (service/prebuilt_index.py), which is why nothing here imports SQLAlchemy.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from service.symbol_index import COLUMNS, IndexBuilder, SymbolIndex

if TYPE_CHECKING:
    import asyncpg

FETCH_ROWS = 20_000

CONTRACT_SQL = "SELECT version, loaded_at FROM symbol_contract WHERE id = 1"
# The search rank of repositories/symbols.py (`_rank`): shorter symbols first, then symbol and
# exchange in code-point order (tests/test_symbol_source.py holds the two together).
RANKED_ROWS_SQL = (
    f"SELECT {', '.join(COLUMNS)} FROM symbols "
    'ORDER BY length(symbol), symbol COLLATE "C", exchange COLLATE "C"'
)


async def read_index(
    conn: asyncpg.Connection, previous: SymbolIndex | None = None, *, lookups: bool = True
) -> SymbolIndex:
    """Build the index from the database (without its lookup maps if `lookups` is false: see
    IndexBuilder).

    The version is read first and the rows after, each by its own statement: should a load commit
    in between, the index holds newer rows under the older version, and the next version check
    rebuilds it; the other way round, it would keep old rows under the new version for good.
    """
    if conn.is_in_transaction():
        return await _read(conn, previous, lookups)
    # A cursor lives in a transaction; read committed, so each statement sees what has committed.
    async with conn.transaction(readonly=True):
        return await _read(conn, previous, lookups)


async def _read(
    conn: asyncpg.Connection, previous: SymbolIndex | None, lookups: bool
) -> SymbolIndex:
    contract = await conn.fetchrow(CONTRACT_SQL)
    version, loaded_at = (contract[0], contract[1]) if contract else (0, None)
    builder = IndexBuilder(version, loaded_at, previous, lookups=lookups)
    async for rows in _ranked_rows(conn):
        builder.add_rows(rows)
        await asyncio.sleep(0)  # let requests in between chunks
    return builder.finish()


async def _ranked_rows(conn: asyncpg.Connection) -> AsyncIterator[Sequence[Sequence[Any]]]:
    """Every row in search-rank order (sorted by the database), FETCH_ROWS at a time.

    asyncpg's own cursor: its records cost a third of SQLAlchemy's rows to make. A chunk at a
    time rather than all at once: the short-lived objects of one chunk (a string per repeated
    name or exchange, until the builder shares them) leave holes that the next chunk fills,
    instead of tens of megabytes of fragmented heap that the process keeps for good."""
    cursor = await conn.cursor(RANKED_ROWS_SQL)
    # The next chunk is asked for before this one is handed over: PostgreSQL prepares it while
    # the caller builds.
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
