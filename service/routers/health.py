"""Health and metrics for operators (no token)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import text

from service.migrate import current_revision
from service.state import AppState

router = APIRouter(tags=["health"])

READY_TIMEOUT_S = 2.0


class Live(BaseModel):
    status: Literal["ok"] = "ok"


class DatabaseHealth(BaseModel):
    ok: bool
    latency_ms: float | None
    backend: str
    error: str | None = None


class MigrationHealth(BaseModel):
    current: str | None
    head: str | None


class PoolHealth(BaseModel):
    size: int
    checked_out: int
    overflow: int


class InvalidationHealth(BaseModel):
    """The cross-instance invalidation listener (always ok on SQLite: one process, no listener).

    While it is down the instance stays ready: its caches are off and every read goes to the
    database, so it serves nothing stale, only slower.
    """

    ok: bool
    since: datetime = Field(description="When the listener last came up or went down.")
    error: str | None = None


class Ready(BaseModel):
    status: Literal["ok", "unavailable"]
    database: DatabaseHealth
    migrations: MigrationHealth
    pool: PoolHealth
    invalidation: InvalidationHealth


# The one answer of /health/live, serialised once: the probe is polled, and cheap it must be.
LIVE_BODY = Live().model_dump_json().encode()


@router.get("/health/live", response_model=Live)
async def live() -> Response:
    """200 while the process serves."""
    return Response(LIVE_BODY, media_type="application/json")


async def _ping(state: AppState) -> tuple[float, str | None]:
    async with state.engine.connect() as conn:
        started = time.perf_counter()
        await conn.execute(text("SELECT 1"))
        latency = (time.perf_counter() - started) * 1000
    return latency, await current_revision(state.engine)


@router.get("/health/ready", response_model=Ready, responses={503: {"model": Ready}})
async def ready(request: Request, response: Response) -> Ready:
    """Database reachable within 2 s and schema at head; 503 otherwise."""
    state: AppState = request.app.state.store
    head = request.app.state.migration_head
    latency: float | None = None
    current: str | None = None
    error: str | None = None
    try:
        latency, current = await asyncio.wait_for(_ping(state), READY_TIMEOUT_S)
    except TimeoutError:
        error = f"no answer within {READY_TIMEOUT_S:g} s"
    except Exception as exc:  # any failure means "not ready"; the type is enough to say why
        error = f"unreachable ({type(exc).__name__})"
    if error is None and current != head:
        error = f"schema at {current}, head is {head}: run `python -m service migrate`"
    if error is None and not state.ready:
        error = state.not_ready_reason or "starting"
    pool = state.engine.pool
    ok = error is None
    if not ok:
        response.status_code = 503
        response.headers["Retry-After"] = "2"
    return Ready(
        status="ok" if ok else "unavailable",
        database=DatabaseHealth(
            ok=latency is not None,
            latency_ms=round(latency, 3) if latency is not None else None,
            backend=state.backend,
            error=error,
        ),
        migrations=MigrationHealth(current=current, head=head),
        pool=PoolHealth(
            size=int(getattr(pool, "size", lambda: 0)()),
            checked_out=int(getattr(pool, "checkedout", lambda: 0)()),
            overflow=max(int(getattr(pool, "overflow", lambda: 0)()), 0),
        ),
        invalidation=InvalidationHealth(
            ok=state.bus.connected.is_set(), since=state.bus.since, error=state.bus.last_error
        ),
    )


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    return Response(
        request.app.state.store.metrics.render(),
        media_type="text/plain; version=0.0.4; charset=utf-8",
    )
