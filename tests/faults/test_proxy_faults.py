"""The network between the service and PostgreSQL misbehaving (through a TCP proxy the test
drives): added latency, connection resets, a black hole. Each request ends within the
connect/statement timeout + 1 s with 503 (or its normal answer when the latency is tolerable),
never hangs; afterwards the pool is idle again and holds no more connections than it may."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.faults.test_outage import LOGS, traffic_log
from tests.support import assert_problem, eventually
from tests.tcp_proxy import TcpProxy

TIMEOUT = 2.0  # DB_POOL_TIMEOUT (connect) and DB_STATEMENT_TIMEOUT
BOUND = TIMEOUT + 1
POOL_SIZE, OVERFLOW = 4, 2
LISTENERS = 1


STRATEGY = {
    "name": "faults",
    "user_id": "u1",
    "start_time": "09:15",
    "end_time": "15:00",
    "squareoff_time": "15:15",
}


async def _start(client_factory: Any, proxy_url: str) -> tuple[httpx.AsyncClient, str]:
    """The service behind the proxy, and the URL of a strategy it has stored."""
    client: httpx.AsyncClient = await client_factory(
        DATABASE_URL=proxy_url,
        DB_POOL_TIMEOUT=TIMEOUT,
        DB_STATEMENT_TIMEOUT=TIMEOUT,
        DB_POOL_SIZE=POOL_SIZE,
        DB_MAX_OVERFLOW=OVERFLOW,
    )
    created = await client.post("/api/v1/strategies", json=STRATEGY)
    assert created.status_code == 201, created.text
    return client, f"/api/v1/strategies/{created.json()['id']}"


def _requests(tag: str, strategy: str) -> list[tuple[str, str, dict[str, Any]]]:
    """A mix that needs the database every time: a read in a session, a session write, a group
    commit, and a read that goes straight to the driver (service/direct_read.py)."""
    return [
        ("GET", LOGS + "?limit=1", {}),
        ("PATCH", "/api/v1/settings", {"json": {"analyze_mode": True}}),
        ("POST", LOGS, {"json": traffic_log(tag)}),
        ("GET", strategy, {}),
    ]


HEALTHY = [200, 200, 201, 200]


Result = tuple[str, int, float]  # method, status, seconds


async def _burst(
    client: httpx.AsyncClient, strategy: str, tag: str, copies: int = 3
) -> list[Result]:
    """Every request of the mix `copies` times at once: (method, status, seconds) of each."""

    async def one(method: str, url: str, kwargs: dict[str, Any]) -> Result:
        started = time.monotonic()
        response = await asyncio.wait_for(client.request(method, url, **kwargs), BOUND + 5)
        elapsed = time.monotonic() - started
        if response.status_code == 503:
            assert_problem(response, 503, "database-unavailable")
            assert response.headers["retry-after"].isdigit()
        return method, response.status_code, elapsed

    calls = [
        one(method, url, kwargs)
        for n in range(copies)
        for method, url, kwargs in _requests(f"{tag}-{n}", strategy)
    ]
    return list(await asyncio.gather(*calls))


def _statuses(results: list[Result]) -> list[int]:
    return [status for _, status, _ in results]


async def _healthy_again(client: httpx.AsyncClient, strategy: str, db: AsyncEngine) -> None:
    """Ready within 10 s, the pool idle, connections within pool + overflow + the listener."""
    deadline = time.monotonic() + 10
    while (await client.get("/health/ready")).status_code != 200:
        assert time.monotonic() < deadline, (await client.get("/health/ready")).json()
        await asyncio.sleep(0.2)
    assert _statuses(await _burst(client, strategy, "healed")) == HEALTHY * 3
    pool = (await client.get("/health/ready")).json()["pool"]
    assert pool["checked_out"] == 0, pool
    metrics = (await client.get("/metrics")).text
    assert "algoways_db_pool_checked_out 0.0" in metrics

    # Attempts the service gave up on while the route was slow may still be finishing their
    # start-up on the server side; they end once the proxy passes on the close.
    async def within_limit() -> bool:
        async with db.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT application_name, state FROM pg_stat_activity "
                        "WHERE application_name LIKE 'algoways-store%'"
                    )
                )
            ).all()
        within_limit.rows = rows  # type: ignore[attr-defined]
        return len(rows) <= POOL_SIZE + OVERFLOW + LISTENERS

    assert await eventually(within_limit, timeout=5), within_limit.rows  # type: ignore[attr-defined]


async def test_tolerable_latency_only_slows_requests(
    proxy: TcpProxy, proxy_url: str, client_factory: Any, db: AsyncEngine
) -> None:
    client, strategy = await _start(client_factory, proxy_url)
    proxy.latency = 0.02
    assert _statuses(await _burst(client, strategy, "slow")) == HEALTHY * 3
    proxy.heal()
    await _healthy_again(client, strategy, db)


@pytest.mark.parametrize("fault", ["latency", "reset", "black_hole"])
async def test_fault_ends_in_503_within_the_timeout(
    fault: str, proxy: TcpProxy, proxy_url: str, client_factory: Any, db: AsyncEngine
) -> None:
    client, strategy = await _start(client_factory, proxy_url)
    assert _statuses(await _burst(client, strategy, "before")) == HEALTHY * 3
    if fault == "latency":
        proxy.latency = TIMEOUT + 1  # every round trip outlasts the statement timeout
    elif fault == "reset":
        proxy.refusing = True
        proxy.reset()
    else:
        proxy.black_hole = True

    # More requests at once than the pool has connections: some wait for a slot first, and
    # that wait shares the one pool timeout with the pre-ping and the reconnect.
    results = await _burst(client, strategy, fault, copies=4)

    assert set(_statuses(results)) == {503}, results
    assert max(elapsed for _, _, elapsed in results) <= BOUND, results
    proxy.heal()
    await _healthy_again(client, strategy, db)
