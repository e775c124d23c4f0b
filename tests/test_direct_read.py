"""service/direct_read.py: a one-statement read straight through the driver reads the same rows,
with the same values and types, as the statement run through SQLAlchemy; it holds its connection
only for the statement; its failures are the database errors the API answers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import bindparam, func, literal, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import read_engine
from service.direct_read import fetch_rows
from service.errors import DatabaseFailure, classify_database_error
from service.models.strategies import Strategy, StrategySymbolMapping

DEFINITION = {"legs": [{"ratio": 1.5, "side": "BUY"}], "note": "ünïcode", "empty": None}

_DETAIL = (
    select(
        Strategy.__table__,
        StrategySymbolMapping.id.label("symbol_id"),
        StrategySymbolMapping.symbol.label("symbol_symbol"),
        StrategySymbolMapping.quantity.label("symbol_quantity"),
    )
    .outerjoin_from(
        Strategy.__table__,
        StrategySymbolMapping.__table__,
        StrategySymbolMapping.strategy_id == Strategy.id,
    )
    .where(Strategy.id == bindparam("key"))
    .order_by(StrategySymbolMapping.id)
)


async def _strategy(client: httpx.AsyncClient, definition: Any, symbols: int) -> int:
    created = await client.post(
        "/api/v1/strategies",
        json={
            "name": "direct",
            "user_id": "u1",
            "is_intraday": False,
            "definition": definition,
        },
    )
    assert created.status_code == 201, created.text
    strategy_id: int = created.json()["id"]
    if symbols:
        batch = [
            {"symbol": f"S{n}", "exchange": "NSE", "quantity": n + 1, "product_type": "MIS"}
            for n in range(symbols)
        ]
        added = await client.post(f"/api/v1/strategies/{strategy_id}/symbols", json=batch)
        assert added.status_code == 201, added.text
    return strategy_id


async def _through_sqlalchemy(engine: AsyncEngine, strategy_id: int) -> list[dict[str, Any]]:
    async with engine.connect() as connection:
        result = await connection.execute(_DETAIL, {"key": strategy_id})
        return [dict(row) for row in result.mappings()]


@pytest.mark.parametrize(("definition", "symbols"), [(DEFINITION, 3), (None, 0), ([1, "x"], 1)])
async def test_rows_read_as_through_sqlalchemy(
    client: httpx.AsyncClient, db: AsyncEngine, definition: Any, symbols: int
) -> None:
    strategy_id = await _strategy(client, definition, symbols)

    rows = [dict(row) for row in await fetch_rows(read_engine(db), _DETAIL, key=strategy_id)]

    assert rows == await _through_sqlalchemy(db, strategy_id)
    assert len(rows) == max(symbols, 1)
    first = rows[0]
    assert first["definition"] == definition  # decoded JSON, not its text
    assert first["created_at"].tzinfo is not None
    assert first["created_at"].utcoffset() == UTC.utcoffset(None)
    assert [row["symbol_quantity"] for row in rows] == (
        [n + 1 for n in range(symbols)] if symbols else [None]
    )
    assert list(first) == [column.key for column in _DETAIL.selected_columns]


async def test_no_row_is_an_empty_list(db: AsyncEngine) -> None:
    assert list(await fetch_rows(read_engine(db), _DETAIL, key=2_000_000_000)) == []


async def test_parameters_bind_by_name_in_any_order(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    first = await _strategy(client, None, 0)
    second = await _strategy(client, None, 0)
    statement = (
        select(Strategy.id)
        .where(Strategy.id.between(bindparam("low"), bindparam("high")))
        .where(Strategy.created_at > bindparam("since"))  # bound through UTCDateTime
        .order_by(Strategy.id)
    )
    since = datetime(2000, 1, 1)  # naive: the column's type reads it as UTC
    rows = await fetch_rows(read_engine(db), statement, high=second, since=since, low=first)
    assert [row["id"] for row in rows] == [first, second]


async def test_the_connection_is_held_only_for_the_statement(client: httpx.AsyncClient) -> None:
    state = client.app.state.store  # type: ignore[attr-defined]
    strategy_id = await _strategy(client, None, 2)
    assert len(await fetch_rows(state.reads, _DETAIL, key=strategy_id)) == 2
    assert state.engine.pool.checkedout() == 0


async def test_an_unnamed_column_is_refused(db: AsyncEngine) -> None:
    with pytest.raises(ValueError, match="names every column"):
        await fetch_rows(read_engine(db), select(literal(1) + 1))


@pytest.mark.postgres_only
async def test_a_statement_past_its_timeout_is_a_503_and_the_pool_carries_on(
    client_factory: Any,
) -> None:
    client = await client_factory(DB_STATEMENT_TIMEOUT=0.2, DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0)
    state = client.app.state.store
    slow = select(func.pg_sleep(2).label("slept"))
    with pytest.raises(TimeoutError) as raised:
        await fetch_rows(state.reads, slow)
    info = classify_database_error(raised.value)
    assert info is not None and info.failure is DatabaseFailure.UNAVAILABLE
    # The one pooled connection is usable again (or replaced at its next checkout).
    assert [dict(row) for row in await fetch_rows(state.reads, select(literal(7).label("n")))] == [
        {"n": 7}
    ]
    assert state.engine.pool.checkedout() == 0
