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
    """The query behind GET /api/v1/strategies/{id} (strategy and its symbols), on raw asyncpg."""
    pool = request.app.state.store.domains.get("bench_pool")
    if pool is None:
        raise NotFound("raw-pg floor needs PostgreSQL")
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM strategies WHERE id = $1", strategy_id)
        if row is None:
            raise NotFound()
        symbols = await conn.fetch(
            "SELECT * FROM strategy_symbol_mappings WHERE strategy_id = $1 ORDER BY id",
            strategy_id,
        )
    out = dict(row)
    out["symbols"] = [dict(s) for s in symbols]
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
