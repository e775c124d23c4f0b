"""The supervised invalidation listener: it reconnects forever, never holds start-up, turns caches
off while it is down (reads go to the database, so no instance serves stale data), and
/health/ready and /metrics show its state."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.cache import LISTENER_NAME, InvalidationBus
from tests.support import BACKEND, eventually

SETTINGS = "/api/v1/settings"


def _bus(client: httpx.AsyncClient) -> InvalidationBus:
    bus: InvalidationBus = client.app.state.store.bus  # type: ignore[attr-defined]
    return bus


async def _invalidation_health(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/health/ready")
    health: dict[str, Any] = response.json()["invalidation"]
    return health


async def _listener_up_metric(client: httpx.AsyncClient) -> float:
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith("algoways_invalidation_listener_up "):
            return float(line.split()[1])
    raise AssertionError("no algoways_invalidation_listener_up gauge")


async def _threshold(client: httpx.AsyncClient) -> int:
    value: int = (await client.get(SETTINGS)).json()["security"]["threshold_404"]
    return value


async def _terminate_listeners(db: AsyncEngine) -> int:
    async with db.connect() as conn:
        killed: int = await conn.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = :name AND datname = current_database()"
            ),
            {"name": LISTENER_NAME},
        )
    return killed


async def _listeners(db: AsyncEngine) -> int:
    async with db.connect() as conn:
        count: int = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = :name AND datname = current_database()"
            ),
            {"name": LISTENER_NAME},
        )
    return count


class ListenFailure:
    """Makes LISTEN fail for chosen buses (all when none is chosen), as a revoked privilege or a
    server refusing the command would."""

    def __init__(self) -> None:
        self.failing = False
        self.only: InvalidationBus | None = None
        self.failed = 0

    def applies(self, callback: Any) -> bool:
        return self.failing and (
            self.only is None or getattr(callback, "__self__", None) is self.only
        )


@pytest.fixture
def listen_failure(monkeypatch: pytest.MonkeyPatch) -> Iterator[ListenFailure]:
    failure = ListenFailure()
    original = asyncpg.connection.Connection.add_listener

    async def add_listener(self: asyncpg.Connection, channel: str, callback: Any) -> None:
        if failure.applies(callback):
            failure.failed += 1
            raise asyncpg.exceptions.InsufficientPrivilegeError("permission denied to LISTEN")
        await original(self, channel, callback)

    monkeypatch.setattr(asyncpg.connection.Connection, "add_listener", add_listener)
    # Retry fast, so the tests see several attempts within a second or two.
    monkeypatch.setattr(InvalidationBus, "backoff", (0.05, 0.2))
    yield failure


async def test_health_and_metrics_show_the_listener_ok(client: httpx.AsyncClient) -> None:
    """On SQLite there is no listener (one process): ok. On PostgreSQL it is listening."""
    health = await _invalidation_health(client)
    assert health["ok"] is True
    assert health["error"] is None
    assert health["since"].endswith(("Z", "+00:00"))
    assert await _listener_up_metric(client) == 1.0
    assert _bus(client).distributed is (BACKEND == "postgresql")


@pytest.mark.postgres_only
async def test_a_failing_listen_at_start_up_neither_hangs_it_nor_serves_stale_data(
    client_factory: Any, listen_failure: ListenFailure, db: AsyncEngine
) -> None:
    listen_failure.failing = True
    started = time.monotonic()
    one = await client_factory()
    assert time.monotonic() - started < InvalidationBus.start_wait  # start-up went on
    two = await client_factory()
    assert listen_failure.failed >= 2

    # Serving, but degraded: the listener is reported down and caches are off.
    ready = await two.get("/health/ready")
    assert ready.status_code == 200
    health = ready.json()["invalidation"]
    assert health["ok"] is False and "permission denied" in health["error"]
    assert await _listener_up_metric(two) == 0.0
    assert await _threshold(two) == 100
    await one.patch(SETTINGS, json={"security": {"threshold_404": 7}})
    assert await _threshold(two) == 7  # read from the database: nothing was cached
    assert len(two.app.state.store.caches.get("settings")) == 0  # type: ignore[attr-defined]
    # A failed LISTEN leaves no connection behind.
    assert await _listeners(db) == 0

    # It keeps retrying, and once LISTEN works again caches come back on.
    listen_failure.failing = False
    assert await eventually(lambda: _is_up(two), timeout=5)
    assert await _listener_up_metric(two) == 1.0
    assert await _threshold(two) == 7
    assert len(two.app.state.store.caches.get("settings")) == 1  # type: ignore[attr-defined]
    await one.patch(SETTINGS, json={"security": {"threshold_404": 8}})

    async def seen() -> bool:
        return await _threshold(two) == 8

    assert await eventually(seen, timeout=5)  # through the notification


async def _is_up(client: httpx.AsyncClient) -> bool:
    return bool((await _invalidation_health(client))["ok"])


@pytest.mark.postgres_only
async def test_a_listen_failing_after_a_lost_connection_is_retried(
    client_factory: Any, listen_failure: ListenFailure, db: AsyncEngine
) -> None:
    one = await client_factory()
    two = await client_factory()
    bus = _bus(two)
    assert await _threshold(two) == 100  # cached on instance two
    cache = two.app.state.store.caches.get("settings")  # type: ignore[attr-defined]
    assert len(cache) == 1
    since = (await _invalidation_health(two))["since"]

    listen_failure.only = bus
    listen_failure.failing = True
    assert await _terminate_listeners(db) >= 1

    async def down() -> bool:
        return not bus.connected.is_set() and listen_failure.failed >= 2

    assert await eventually(down, timeout=5)
    assert len(cache) == 0  # flushed when the connection was lost
    health = await _invalidation_health(two)
    assert health["ok"] is False and health["since"] > since
    # While down, a change made through the other instance is seen at once: no cache in between.
    await one.patch(SETTINGS, json={"security": {"threshold_404": 55}})
    assert await _threshold(two) == 55
    assert await _threshold(two) == 55
    assert len(cache) == 0

    listen_failure.failing = False
    assert await eventually(lambda: _is_up(two), timeout=5)

    async def one_listener_each() -> bool:  # no connection leaked by the failed attempts
        return await _listeners(db) == 2

    assert await eventually(one_listener_each, timeout=5)
    await one.patch(SETTINGS, json={"security": {"threshold_404": 56}})

    async def seen() -> bool:
        return await _threshold(two) == 56

    assert await eventually(seen, timeout=5)


@pytest.mark.postgres_only
async def test_a_second_instance_is_never_stale_for_more_than_5_s(
    client_factory: Any, listen_failure: ListenFailure, db: AsyncEngine
) -> None:
    """Changes through one instance while the other's listener is killed again and again."""
    one = await client_factory()
    two = await client_factory()
    for value in range(1, 7):
        assert await _threshold(two) in (100, value - 1)  # cached (or being refilled)
        if value % 2:
            await _terminate_listeners(db)
        started = time.monotonic()
        await one.patch(SETTINGS, json={"security": {"threshold_404": value}})

        async def seen(value: int = value) -> bool:
            return await _threshold(two) == value

        assert await eventually(seen, timeout=5), f"instance two still stale for {value}"
        assert time.monotonic() - started <= 5
    assert await eventually(lambda: _is_up(two), timeout=5)


async def test_caches_are_off_while_the_bus_is_not_connected(client: httpx.AsyncClient) -> None:
    """The mechanism itself, on either backend: no serving and no filling while disconnected."""
    bus = _bus(client)
    cache = client.app.state.store.caches.get("settings")  # type: ignore[attr-defined]
    assert await _threshold(client) == 100
    assert len(cache) == 1
    bus.connected.clear()
    try:
        bus.dispatch_all()
        misses = cache.misses
        assert await _threshold(client) == 100
        assert await _threshold(client) == 100
        assert len(cache) == 0 and cache.misses == misses + 2
        generation = cache.generation
        assert cache.set_if_current("k", 1, generation) is False
    finally:
        bus.connected.set()
    assert await _threshold(client) == 100
    assert len(cache) == 1
