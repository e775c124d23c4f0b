"""The two floors every workload is measured against, each served in its own uvicorn process.

- `bare_app`: a one-route FastAPI app returning a constant. What the framework and uvicorn cost
  with nothing in front of them.
- `asyncpg_app`: a one-route FastAPI app running one indexed statement on a raw asyncpg pool:
  the statement `GET /api/v1/strategies/{id}` runs (the strategy LEFT JOIN its symbols), answered
  in the same shape. What one round trip to PostgreSQL costs with nothing in front of it.

They live outside the service on purpose: a floor served by the service pays its middleware,
dispatch and dependencies, and hides exactly the cost the benchmark exists to show.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from fastapi import FastAPI, HTTPException, Request

BARE_PATH = "/"
STRATEGY_PATH = "/strategies/{strategy_id}"
# A fixed pool, opened at start-up and never resized: the floor pays no connection churn.
POOL_SIZE = 16
_CONSTANT = {"status": "ok"}

STRATEGY_STATEMENT = (
    "SELECT strategies.id, strategies.name, strategies.webhook_id, strategies.user_id,"
    " strategies.is_active, strategies.is_intraday, strategies.start_time,"
    " strategies.end_time, strategies.squareoff_time, strategies.updated_at,"
    " strategies.created_at, strategies.platform, strategies.trading_mode,"
    " strategies.definition,"
    " strategy_symbol_mappings.id AS symbol_id,"
    " strategy_symbol_mappings.strategy_id AS symbol_strategy_id,"
    " strategy_symbol_mappings.symbol AS symbol_symbol,"
    " strategy_symbol_mappings.exchange AS symbol_exchange,"
    " strategy_symbol_mappings.quantity AS symbol_quantity,"
    " strategy_symbol_mappings.product_type AS symbol_product_type"
    " FROM strategies LEFT OUTER JOIN strategy_symbol_mappings"
    " ON strategy_symbol_mappings.strategy_id = strategies.id"
    " WHERE strategies.id = $1::INTEGER ORDER BY strategy_symbol_mappings.id"
)


def bare_app() -> FastAPI:
    app = FastAPI()

    @app.get(BARE_PATH)
    async def constant() -> dict[str, str]:
        return _CONSTANT

    return app


def _dsn() -> str:
    """DATABASE_URL (the service's environment) as a plain libpq URL for asyncpg."""
    url = os.environ["DATABASE_URL"]
    scheme, rest = url.split("://", 1)
    if not scheme.startswith("postgres"):
        raise SystemExit("the asyncpg floor needs DATABASE_URL on PostgreSQL")
    return "postgresql://" + rest


async def _json_codec(conn: asyncpg.Connection) -> None:
    """JSON documents as the API answers them (asyncpg hands jsonb over as text)."""
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


def asyncpg_app() -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(
            _dsn(), min_size=POOL_SIZE, max_size=POOL_SIZE, init=_json_codec
        )
        app.state.pool = pool
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.get(STRATEGY_PATH)
    async def strategy(request: Request, strategy_id: int) -> dict[str, Any]:
        pool: asyncpg.Pool = request.app.state.pool
        async with pool.acquire() as conn:
            rows = await conn.fetch(STRATEGY_STATEMENT, strategy_id)
        if not rows:
            raise HTTPException(404)
        out = {k: v for k, v in rows[0].items() if not k.startswith("symbol_")}
        out["symbols"] = [
            {k.removeprefix("symbol_"): v for k, v in row.items() if k.startswith("symbol_")}
            for row in rows
            if row["symbol_id"] is not None
        ]
        return out

    return app
