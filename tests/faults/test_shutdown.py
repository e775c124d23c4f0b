"""Shutdown loses nothing: SIGTERM to a live server with requests in flight and rows waiting in
the group-commit writer answers every one of them normally, writes every row, and exits 0 with
no traceback; after a `kill -9` in the middle of writes every acknowledged row is there."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from tests.faults.service_process import GRACEFUL_TIMEOUT_S, ServiceProcess
from tests.faults.test_outage import LOGS, traffic_log

IN_FLIGHT = 20
ROWS_PER_REQUEST = 5


@pytest.fixture(params=["postgresql", "sqlite"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'shutdown.db'}"
    url: str = request.getfixturevalue("database_url")
    return url


@pytest.fixture
def service(backend_url: str) -> Iterator[ServiceProcess]:
    process = ServiceProcess(backend_url)
    try:
        yield process
    finally:
        process.close()


@asynccontextmanager
async def _engine(url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        yield engine
    finally:
        await engine.dispose()


async def _stored_markers(url: str) -> set[str]:
    async with _engine(url) as engine, engine.connect() as conn:
        paths = (await conn.scalars(text("SELECT path FROM traffic_logs"))).all()
    return {path.removeprefix("/outage/") for path in paths}


@asynccontextmanager
async def _writes_held(url: str) -> AsyncIterator[None]:
    """Hold off every insert into traffic_logs until the block ends (a lock the test owns)."""
    if url.startswith("sqlite"):
        with _sqlite_write_lock(url):
            yield
        return
    async with _engine(url) as engine, engine.connect() as conn:
        await conn.execute(text("LOCK TABLE traffic_logs IN EXCLUSIVE MODE"))
        yield
        await conn.rollback()


@contextmanager
def _sqlite_write_lock(url: str) -> Iterator[None]:
    conn = sqlite3.connect(url.split("///", 1)[1], isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def _batch(request: int) -> list[dict[str, Any]]:
    return [traffic_log(f"term-{request}-{row}") for row in range(ROWS_PER_REQUEST)]


async def test_sigterm_finishes_in_flight_requests_and_flushes_pending_rows(
    service: ServiceProcess, backend_url: str
) -> None:
    service.start()
    await service.wait_ready()
    async with service.client(timeout=60) as client:
        # Open the connections first, so every request below is on the server when it stops.
        await asyncio.gather(*(client.get("/health/live") for _ in range(IN_FLIGHT)))
        async with _writes_held(backend_url):
            posts = [
                asyncio.create_task(client.post(LOGS, json=_batch(n))) for n in range(IN_FLIGHT)
            ]
            await asyncio.sleep(1.0)  # all queued behind the held lock, inside the writer
            assert not any(post.done() for post in posts)
            service.signal(signal.SIGTERM)
            signalled = time.monotonic()
            await asyncio.sleep(0.5)
            assert not any(post.done() for post in posts)
        responses = await asyncio.gather(*posts)

    exit_code = await service.wait_exit(GRACEFUL_TIMEOUT_S + 3)
    elapsed = time.monotonic() - signalled
    output = service.output()
    assert [r.status_code for r in responses] == [201] * IN_FLIGHT, output
    assert [r.json() for r in responses] == [{"count": ROWS_PER_REQUEST}] * IN_FLIGHT
    assert exit_code == 0, output
    assert elapsed <= GRACEFUL_TIMEOUT_S + 3
    assert "Traceback" not in output, output
    assert "Finished server process" in output
    expected = {f"term-{n}-{row}" for n in range(IN_FLIGHT) for row in range(ROWS_PER_REQUEST)}
    assert await _stored_markers(backend_url) == expected


@pytest.mark.parametrize("backend_url", ["sqlite"], indirect=True)
async def test_sigterm_exits_0(service: ServiceProcess) -> None:
    service.start()
    await service.wait_ready()
    service.signal(signal.SIGTERM)
    exit_code = await service.wait_exit(GRACEFUL_TIMEOUT_S + 3)
    assert "Traceback" not in service.output()
    assert exit_code == 0, service.output()


async def _post_until_stopped(
    client: httpx.AsyncClient, worker: int, acknowledged: set[str], stop: asyncio.Event
) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        markers = [f"kill-{worker}-{n}-{row}" for row in range(3)]
        try:
            response = await client.post(LOGS, json=[traffic_log(m) for m in markers])
        except httpx.TransportError:
            return  # the server is gone; this request was never acknowledged
        if response.status_code == 201:
            acknowledged.update(markers)


async def test_kill_9_in_the_middle_of_writes_loses_no_acknowledged_row(
    service: ServiceProcess, backend_url: str
) -> None:
    service.start()
    await service.wait_ready()
    acknowledged: set[str] = set()
    stop = asyncio.Event()
    async with service.client(timeout=30) as client:
        workers = [
            asyncio.create_task(_post_until_stopped(client, w, acknowledged, stop))
            for w in range(8)
        ]
        deadline = time.monotonic() + 20
        while len(acknowledged) < 60 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        service.signal(signal.SIGKILL)
        assert await service.wait_exit(5) == -signal.SIGKILL
        stop.set()
        await asyncio.gather(*workers)
    assert len(acknowledged) >= 60  # writes were really flowing when it died

    restarted = ServiceProcess(backend_url)
    try:
        restarted.start()
        await restarted.wait_ready()
        async with restarted.client(timeout=30) as client:
            response = await client.post(LOGS, json=traffic_log("after-restart"))
            assert response.status_code == 201
    finally:
        restarted.close()
    stored = await _stored_markers(backend_url)
    assert acknowledged <= stored, sorted(acknowledged - stored)[:10]
    assert "after-restart" in stored
