"""The objects that live as long as the process: built in one place, started and stopped in one
place, each a typed attribute reached through a typed dependency (service/state.py).

Repositories stay stateless query functions; these objects call them. Nothing here is created
on a request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.cache import CacheRegistry, InvalidationBus
from service.config import Settings
from service.group_commit import GroupCommitWriter, Row, WriteFn
from service.models.latency import OrderLatency
from service.models.logs import AnalyzerLog, OrderLog
from service.models.traffic import TrafficLog
from service.repositories import logs as logs_repo
from service.repositories.strategies import CHARTINK, STRATEGIES
from service.runtime.api_keys import ApiKeyVerifier
from service.runtime.bans import BanCache
from service.runtime.symbols import backstop, make_symbol_holder
from service.runtime.webhooks import WebhookLookup
from service.security import Keyring
from service.symbol_index import SymbolIndexHolder


@dataclass(frozen=True, slots=True)
class Writers:
    """The group-commit writer of each log table."""

    order_logs: GroupCommitWriter
    analyzer_logs: GroupCommitWriter
    traffic_logs: GroupCommitWriter
    latency: GroupCommitWriter
    # An order's log and its latency row (orders/record): each request's pair is written in one
    # transaction, so both or neither; rows {"table": Table, "row": values}.
    orders: GroupCommitWriter

    def all(self) -> tuple[GroupCommitWriter, ...]:
        return (self.order_logs, self.analyzer_logs, self.traffic_logs, self.latency, self.orders)


@dataclass(frozen=True, slots=True)
class Runtime:
    verifier: ApiKeyVerifier
    strategy_webhooks: WebhookLookup
    chartink_webhooks: WebhookLookup
    bans: BanCache
    symbols: SymbolIndexHolder
    writers: Writers


def _table(model: type[object]) -> Table:
    return cast(Table, model.__table__)  # type: ignore[attr-defined]


def _returning_ids(table: Table) -> WriteFn:
    async def write(session: AsyncSession, rows: list[Row]) -> list[int] | None:
        return await logs_repo.insert_returning_ids(session, table, rows)

    return write


def _plain(table: Table) -> WriteFn:
    async def write(session: AsyncSession, rows: list[Row]) -> list[int] | None:
        await logs_repo.insert_rows(session, table, rows)
        return None

    return write


def build_runtime(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    caches: CacheRegistry,
    bus: InvalidationBus,
    keyring: Keyring,
) -> Runtime:
    """Construct every runtime object (no I/O: the database may still be down)."""
    # SQLite has one writer at a time anyway; PostgreSQL inserts two batches in parallel, so its
    # server-side work (heap, indexes, WAL) is not serialised behind one connection.
    concurrency = 2 if settings.backend == "postgresql" else 1

    def writer(name: str, write: WriteFn) -> GroupCommitWriter:
        return GroupCommitWriter(
            name,
            sessionmaker,
            write,
            wait_timeout=settings.DB_POOL_TIMEOUT,
            concurrency=concurrency,
        )

    return Runtime(
        verifier=ApiKeyVerifier(keyring, sessionmaker, caches, bus),
        strategy_webhooks=WebhookLookup(STRATEGIES, sessionmaker, caches),
        chartink_webhooks=WebhookLookup(CHARTINK, sessionmaker, caches),
        bans=BanCache(sessionmaker, caches, bus),
        symbols=make_symbol_holder(sessionmaker, bus),
        writers=Writers(
            order_logs=writer("order_logs", _returning_ids(_table(OrderLog))),
            analyzer_logs=writer("analyzer_logs", _returning_ids(_table(AnalyzerLog))),
            traffic_logs=writer("traffic_logs", _plain(_table(TrafficLog))),
            latency=writer("order_latency", _plain(_table(OrderLatency))),
            orders=writer("orders", logs_repo.insert_into_tables),
        ),
    )


@asynccontextmanager
async def writers_running(runtime: Runtime) -> AsyncIterator[None]:
    """The writers accept rows for the app's lifetime; leaving flushes every accepted row."""
    async with contextlib.AsyncExitStack() as stack:
        for writer in runtime.writers.all():
            await stack.enter_async_context(writer.running())
        yield


@asynccontextmanager
async def warmed(runtime: Runtime) -> AsyncIterator[None]:
    """What needs the database before serving: the symbol index, and its backstop."""
    # Not forced: the invalidation listener's first connect may have built it already (its
    # refresh on connect runs first), and 200k rows are not worth building twice at start.
    await runtime.symbols.refresh()
    task = asyncio.create_task(backstop(runtime.symbols), name="symbol-index-backstop")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
