"""PostgreSQL stopped and started under traffic: 503 with Retry-After (never a 500, never a hang),
no acknowledged write lost, readiness following the database, recovery with no restart."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.faults.cluster import PgCluster
from tests.support import assert_problem

POOL_TIMEOUT = 2.0
# What any one request may take during an outage: the pool/connect timeout plus a second.
BOUND = POOL_TIMEOUT + 1
LOGS = "/api/v1/traffic/logs"


def traffic_log(marker: str) -> dict[str, Any]:
    return {
        "client_ip": "203.0.113.9",
        "method": "POST",
        "path": f"/outage/{marker}",
        "status_code": 200,
        "duration_ms": 1.5,
    }


@dataclass
class Outcome:
    acknowledged: set[str] = field(default_factory=set)
    statuses: dict[int, int] = field(default_factory=dict)
    unavailable: int = 0
    slowest: float = 0.0
    problems: list[str] = field(default_factory=list)


async def _timed(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> Any:
    started = time.monotonic()
    response = await asyncio.wait_for(client.request(method, url, **kwargs), BOUND + 2)
    return response, time.monotonic() - started


async def _stream(
    client: httpx.AsyncClient, outcome: Outcome, stop: asyncio.Event, worker: int
) -> None:
    """Post traffic logs and read settings in a loop, recording what each answer was."""
    n = 0
    while not stop.is_set():
        n += 1
        marker = f"{worker}-{n}"
        for method, url, kwargs in (
            ("POST", LOGS, {"json": traffic_log(marker)}),
            ("GET", "/api/v1/settings", {}),
            ("PATCH", "/api/v1/settings", {"json": {"analyze_mode": n % 2 == 0}}),
        ):
            response, elapsed = await _timed(client, method, url, **kwargs)
            outcome.slowest = max(outcome.slowest, elapsed)
            outcome.statuses[response.status_code] = (
                outcome.statuses.get(response.status_code, 0) + 1
            )
            if response.status_code == 503:
                outcome.unavailable += 1
                assert_problem(response, 503, "database-unavailable")
                assert response.headers["retry-after"].isdigit()
            elif response.status_code >= 300:
                outcome.problems.append(f"{method} {url}: {response.status_code} {response.text}")
            elif method == "POST":
                outcome.acknowledged.add(marker)
        await asyncio.sleep(0.01)


async def _ready_status(client: httpx.AsyncClient) -> int:
    response = await asyncio.wait_for(client.get("/health/ready"), 5)
    return response.status_code


async def _within(client: httpx.AsyncClient, status: int, seconds: float) -> float:
    """Seconds until /health/ready answers `status`; fails after `seconds`."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if await _ready_status(client) == status:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    pytest.fail(f"/health/ready was not {status} within {seconds} s")


async def _markers(db: AsyncEngine) -> set[str]:
    async with db.connect() as conn:
        paths = (await conn.scalars(text("SELECT path FROM traffic_logs"))).all()
    return {path.removeprefix("/outage/") for path in paths}


@pytest.mark.parametrize("mode", ["immediate", "fast"])
async def test_stopped_database_gives_503_and_loses_no_acknowledged_write(
    mode: str, cluster: PgCluster, client_factory: Any, db: AsyncEngine
) -> None:
    client = await client_factory(DB_POOL_TIMEOUT=POOL_TIMEOUT, DB_POOL_SIZE=4, DB_MAX_OVERFLOW=2)
    assert await _ready_status(client) == 200
    outcome = Outcome()
    stop = asyncio.Event()
    workers = [asyncio.create_task(_stream(client, outcome, stop, w)) for w in range(6)]
    try:
        await asyncio.sleep(0.5)
        await asyncio.to_thread(cluster.stop, mode)
        await _within(client, 503, 5)
        await asyncio.sleep(1.5)  # the stream keeps hitting the stopped database
        await asyncio.to_thread(cluster.start)
        await _within(client, 200, 10)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(*workers)

    assert outcome.problems == []
    assert 500 not in outcome.statuses, outcome.statuses
    assert outcome.unavailable > 0, outcome.statuses  # the outage was really seen
    assert outcome.slowest <= BOUND, outcome.slowest
    assert outcome.acknowledged
    assert outcome.acknowledged <= await _markers(db)
    # Back to normal with no restart: writes succeed again.
    response = await client.post(LOGS, json=traffic_log("after"))
    assert response.status_code == 201
