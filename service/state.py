"""What one running app holds, and the typed dependencies that reach it.

Everything is built by the app's lifespan (service/main.py) before the first request: settings,
engine and sessionmakers, the invalidation bus and caches, keys, metrics, and the runtime objects
(service/runtime/). No string keys, nothing created on a request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from service.cache import CacheRegistry, InvalidationBus
from service.config import Settings
from service.derivatives import ist_today
from service.errors import DatabaseUnavailable
from service.metrics import Metrics
from service.runtime import Runtime, Writers
from service.runtime.api_keys import ApiKeyVerifier
from service.runtime.bans import BanCache
from service.security import Keyring
from service.symbol_index import SymbolIndex, SymbolIndexHolder


@dataclass
class AppState:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    # Sessions whose transactions begin as writers (BEGIN IMMEDIATE on SQLite).
    write_sessionmaker: async_sessionmaker[AsyncSession]
    # The engine for one-statement reads outside any session (db.read_engine).
    reads: AsyncEngine
    bus: InvalidationBus
    caches: CacheRegistry
    keyring: Keyring
    metrics: Metrics
    runtime: Runtime
    # The exchanges' current day (IST); tests pin it.
    market_clock: Callable[[], date] = ist_today
    # False until the schema is at head and the runtime is warm; /api/v1 answers 503.
    ready: bool = False
    not_ready_reason: str | None = "starting"

    @property
    def backend(self) -> str:
        return self.engine.dialect.name


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.store
    return state


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.store.runtime
    return runtime


async def get_runtime(request: Request) -> Runtime:
    return _runtime(request)


# Coroutines, not plain functions: FastAPI runs a plain dependency in a worker thread.
async def get_verifier(request: Request) -> ApiKeyVerifier:
    return _runtime(request).verifier


async def get_bans(request: Request) -> BanCache:
    return _runtime(request).bans


async def get_writers(request: Request) -> Writers:
    return _runtime(request).writers


async def get_symbols(request: Request) -> SymbolIndexHolder:
    return _runtime(request).symbols


async def current_index(request: Request) -> SymbolIndex:
    """The instance's snapshot of the contract (503 while none is built)."""
    index = _runtime(request).symbols.index
    if index is None:
        raise DatabaseUnavailable("The symbol index is not built yet; retry shortly.")
    return index


StateDep = Annotated[AppState, Depends(get_state)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
VerifierDep = Annotated[ApiKeyVerifier, Depends(get_verifier)]
BansDep = Annotated[BanCache, Depends(get_bans)]
WritersDep = Annotated[Writers, Depends(get_writers)]
SymbolsDep = Annotated[SymbolIndexHolder, Depends(get_symbols)]
IndexDep = Annotated[SymbolIndex, Depends(current_index)]
