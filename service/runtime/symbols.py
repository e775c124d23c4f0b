"""The instance's snapshot of the master contract: built before serving, rebuilt on every change
signalled by any instance, and checked against the database's version as a backstop."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service import prebuilt_index
from service.cache import InvalidationBus
from service.repositories import symbols as symbols_repo
from service.symbol_index import SymbolIndex, SymbolIndexHolder

BACKSTOP_INTERVAL_S = 60.0


def make_symbol_holder(
    sessionmaker: async_sessionmaker[AsyncSession], bus: InvalidationBus
) -> SymbolIndexHolder:
    async def read_version() -> int:
        async with sessionmaker() as session:
            return await symbols_repo.contract_version(session)

    async def read_index(previous: SymbolIndex | None) -> SymbolIndex:
        async with sessionmaker() as session:
            return await symbols_repo.read_index(session, previous)

    holder = SymbolIndexHolder(read_version, read_index, prebuilt_index.take)
    bus.subscribe(symbols_repo.TOPIC, holder.on_invalidate)
    return holder


async def backstop(holder: SymbolIndexHolder) -> None:
    """TTLs are a backstop, never the mechanism: compare versions now and then."""
    while True:
        await asyncio.sleep(BACKSTOP_INTERVAL_S)
        await holder.on_invalidate("*")
