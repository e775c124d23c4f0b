"""What one running app holds: settings, engine, sessionmaker, caches, keys, metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from service.cache import CacheRegistry, InvalidationBus
from service.config import Settings
from service.metrics import Metrics
from service.security import Keyring


@dataclass
class AppState:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    bus: InvalidationBus
    caches: CacheRegistry
    keyring: Keyring
    metrics: Metrics
    # Domain-owned objects that live as long as the app (e.g. the symbol lookup index),
    # keyed by the domain's name.
    domains: dict[str, Any] = field(default_factory=dict)
    # False until the schema is at head and every domain has started; /api/v1 answers 503.
    ready: bool = False
    not_ready_reason: str | None = "starting"

    @property
    def backend(self) -> str:
        return self.engine.dialect.name


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.store
    return state


StateDep = Annotated[AppState, Depends(get_state)]
