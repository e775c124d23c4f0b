"""The pool: defaults that cover one process's steady load, and
`algoways_db_connections_opened_total`, which stays flat while that load runs (no connection
opened and closed per burst) and moves when the pool is too small for it."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx

from service.config import DatabaseSettings, load_settings
from service.db import make_engine
from tests.conftest import ClientFactory
from tests.support import make_settings

_OPENED = re.compile(r"^algoways_db_connections_opened_total ([0-9.e+]+)$", re.M)
CONCURRENCY = 8  # below the default pool size


async def _opened(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    [value] = _OPENED.findall(text)
    return float(value)


async def _strategy(client: httpx.AsyncClient) -> dict[str, Any]:
    created = await client.post(
        "/api/v1/strategies", json={"name": "pool", "user_id": "alice", "is_intraday": False}
    )
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


async def _read_for(client: httpx.AsyncClient, strategy: dict[str, Any], seconds: float) -> int:
    """CONCURRENCY loops of uncached one-statement reads for `seconds`; returns how many."""
    deadline = time.monotonic() + seconds

    async def loop() -> int:
        done = 0
        while time.monotonic() < deadline:
            response = await client.get(f"/api/v1/strategies/{strategy['id']}")
            assert response.status_code == 200, response.text
            assert response.json()["name"] == strategy["name"]
            done += 1
        return done

    return sum(await asyncio.gather(*(loop() for _ in range(CONCURRENCY))))


async def _bursts(client: httpx.AsyncClient, strategy: dict[str, Any], count: int) -> None:
    for _ in range(count):
        responses = await asyncio.gather(
            *(client.get(f"/api/v1/strategies/{strategy['id']}") for _ in range(CONCURRENCY))
        )
        assert {r.status_code for r in responses} == {200}


def test_pool_defaults_cover_steady_load() -> None:
    for url in ("postgresql://u@h/db", "sqlite:///./x.db"):
        settings = load_settings(DatabaseSettings, DATABASE_URL=url, _env_file=None)
        assert (settings.DB_POOL_SIZE, settings.DB_MAX_OVERFLOW) == (32, 8)
        engine = make_engine(settings)
        pool: Any = engine.pool
        assert (pool.size(), pool._max_overflow) == (32, 8)


def test_an_unset_pool_size_is_shared_out_among_the_workers() -> None:
    assert make_settings("postgresql://u@h/db", WORKERS=2).DB_POOL_SIZE == 16
    assert make_settings("postgresql://u@h/db", WORKERS=3).DB_POOL_SIZE == 11
    assert make_settings("postgresql://u@h/db", WORKERS=64).DB_POOL_SIZE == 4
    # Set explicitly, it is each worker's.
    assert make_settings("postgresql://u@h/db", WORKERS=2, DB_POOL_SIZE=20).DB_POOL_SIZE == 20


async def test_steady_load_below_the_pool_size_opens_no_connection(
    client_factory: ClientFactory,
) -> None:
    client = await client_factory()
    strategy = await _strategy(client)
    await _read_for(client, strategy, 1.0)  # warm-up: the pool opens what the load needs
    opened = await _opened(client)
    assert opened >= 1
    reads = await _read_for(client, strategy, 3.0)
    assert reads > CONCURRENCY
    assert await _opened(client) == opened
    health = (await client.get("/health/ready")).json()
    assert health["pool"]["checked_out"] == 0


async def test_a_pool_too_small_for_the_load_shows_as_connections_opened(
    client_factory: ClientFactory,
) -> None:
    # One pooled connection and overflow for the rest: SQLAlchemy closes an overflow
    # connection at check-in, so every burst opens its extra connections again.
    client = await client_factory(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=CONCURRENCY)
    strategy = await _strategy(client)
    await _bursts(client, strategy, 2)
    opened = await _opened(client)
    await _bursts(client, strategy, 5)
    assert await _opened(client) > opened


async def test_the_counter_counts_each_connection_the_pool_opens(
    client_factory: ClientFactory,
) -> None:
    size = 3
    client = await client_factory(DB_POOL_SIZE=size, DB_MAX_OVERFLOW=0)
    strategy = await _strategy(client)
    await _bursts(client, strategy, 3)
    app: Any = client.app  # type: ignore[attr-defined]
    pool: Any = app.state.store.engine.pool
    # Never more than the pool holds; as many as it holds open now (none closed: no overflow).
    assert await _opened(client) == pool.checkedin() + pool.checkedout() <= size
