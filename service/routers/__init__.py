"""Every domain router, mounted under /api/v1.

A domain module exposes `router` and, optionally, `lifespan(state)`: an async context manager
the app enters at start-up and leaves at shutdown (caches to warm, writers to flush).
"""

from __future__ import annotations

from types import ModuleType

from fastapi import APIRouter, Depends

from service.errors import PROBLEM_RESPONSES
from service.routers import (
    analyzer_logs,
    auth,
    chartink,
    latency,
    order_logs,
    settings,
    strategies,
    symbols,
    tokens,
    traffic,
    users,
)
from service.security import current_principal

DOMAINS: tuple[ModuleType, ...] = (
    settings,
    users,
    auth,
    symbols,
    tokens,
    strategies,
    chartink,
    order_logs,
    analyzer_logs,
    traffic,
    latency,
)

api_router = APIRouter(
    prefix="/api/v1", dependencies=[Depends(current_principal)], responses=PROBLEM_RESPONSES
)
for _domain in DOMAINS:
    api_router.include_router(_domain.router)
