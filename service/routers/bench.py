"""The benchmark floor: mounted only with BENCH_ENDPOINTS=true, never in production.

`/bench/bare` returns a constant through the same app and middleware as every route, without a
token or a session; `/bench/raw-pg` does one indexed query on a raw asyncpg pool. Workloads are
reported as ratios against these, measured in the same run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy.engine import make_url

from service.errors import NotFound
from service.state import AppState

router = APIRouter(prefix="/bench", tags=["bench"], include_in_schema=False)

_CONSTANT = {"status": "ok"}


@router.get("/bare")
async def bare() -> dict[str, str]:
    return _CONSTANT


@router.get("/raw-pg")
async def raw_pg(request: Request, id: int = 1) -> dict[str, Any]:
    """One indexed query over raw asyncpg: the settings row by primary key."""
    pool = request.app.state.store.domains.get("bench_pool")
    if pool is None:
        raise NotFound("raw-pg floor needs PostgreSQL")
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT id, analyze_mode, threshold_404 FROM platform_settings WHERE id = $1", id
        )
    return dict(row) if row else {}


@router.get("/raw-pg/strategy/{strategy_id}")
async def raw_pg_strategy(request: Request, strategy_id: int) -> dict[str, Any]:
    """GET /api/v1/strategies/{id} on raw asyncpg: its one statement (the strategy LEFT JOIN its
    symbols), outside a transaction as the API runs it, and the same answer."""
    pool = request.app.state.store.domains.get("bench_pool")
    if pool is None:
        raise NotFound("raw-pg floor needs PostgreSQL")
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT strategies.id, strategies.name, strategies.webhook_id, strategies.user_id,"
            " strategies.is_active, strategies.is_intraday, strategies.start_time,"
            " strategies.end_time, strategies.squareoff_time, strategies.updated_at,"
            " strategies.created_at, strategies.platform, strategies.trading_mode,"
            " strategy_symbol_mappings.id AS symbol_id,"
            " strategy_symbol_mappings.strategy_id AS symbol_strategy_id,"
            " strategy_symbol_mappings.symbol AS symbol_symbol,"
            " strategy_symbol_mappings.exchange AS symbol_exchange,"
            " strategy_symbol_mappings.quantity AS symbol_quantity,"
            " strategy_symbol_mappings.product_type AS symbol_product_type"
            " FROM strategies LEFT OUTER JOIN strategy_symbol_mappings"
            " ON strategy_symbol_mappings.strategy_id = strategies.id"
            " WHERE strategies.id = $1::INTEGER ORDER BY strategy_symbol_mappings.id",
            strategy_id,
        )
    if not rows:
        raise NotFound()
    out = {k: v for k, v in rows[0].items() if not k.startswith("symbol_")}
    out["symbols"] = [
        {k.removeprefix("symbol_"): v for k, v in row.items() if k.startswith("symbol_")}
        for row in rows
        if row["symbol_id"] is not None
    ]
    return out


@asynccontextmanager
async def lifespan(state: AppState) -> AsyncIterator[None]:
    if state.backend != "postgresql":
        yield
        return
    import asyncpg

    url = make_url(state.settings.DATABASE_URL).set(drivername="postgresql")
    pool = await asyncpg.create_pool(
        url.render_as_string(hide_password=False), min_size=2, max_size=10
    )
    state.domains["bench_pool"] = pool
    try:
        yield
    finally:
        await pool.close()
