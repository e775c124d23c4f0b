"""The app factory: lifespan (engine, caches, invalidation listener, runtime), routes, handlers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from sqlalchemy import event
from starlette.datastructures import State
from starlette.types import ASGIApp

from service import migrate
from service.cache import CacheRegistry, InvalidationBus
from service.config import Settings, get_settings
from service.db import make_engine, make_sessionmaker, read_engine
from service.errors import add_exception_handlers
from service.fastlane import FastLane
from service.idempotency import IdempotencyMiddleware
from service.logs import configure_logging
from service.metrics import SYNC_INTERVAL_S, Metrics, cache_metrics, pool_metrics
from service.middleware import ServiceMiddleware
from service.openapi import build_openapi
from service.retry import ReplayOnSerializationFailure
from service.routers import API_ROUTES, health
from service.runtime import build_runtime, warmed, writers_running
from service.security import Keyring, TokenAuthenticator
from service.server import collector_for_serving, resume_collector
from service.state import AppState

logger = logging.getLogger("service")

DESCRIPTION = """
AlgoWays Store owns all persistence of the AlgoWays trading platform.

Every `/api/v1` route needs `Authorization: Bearer <service token>`. GET needs the `read` scope,
writes need `write`, and routes marked `x-required-scope: secrets` return plaintext secrets and
need `secrets`. Errors are RFC 9457 problem documents (`application/problem+json`).
"""


class LanedFastAPI(FastAPI):
    """FastAPI with the fast lane (service/fastlane.py) in front of its whole middleware stack,
    error handling included: the lane answers only what cannot fail."""

    def __init__(self, *, lane: Callable[[ASGIApp, State], ASGIApp], **options: Any) -> None:
        self._lane = lane
        super().__init__(**options)

    def build_middleware_stack(self) -> ASGIApp:
        return self._lane(super().build_middleware_stack(), self.state)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    metrics = Metrics()
    authenticator = TokenAuthenticator(settings.SERVICE_TOKENS)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings)
        bus = InvalidationBus(settings.asyncpg_dsn)
        caches = CacheRegistry(bus)
        keyring = Keyring(settings)
        sessionmaker = make_sessionmaker(engine, bus)
        state = AppState(
            settings=settings,
            engine=engine,
            sessionmaker=sessionmaker,
            write_sessionmaker=make_sessionmaker(engine, bus, write=True),
            reads=read_engine(engine),
            bus=bus,
            caches=caches,
            keyring=keyring,
            metrics=metrics,
            runtime=build_runtime(settings, sessionmaker, caches, bus, keyring),
        )
        app.state.store = state
        app.state.migration_head = migrate.head_revision()
        metrics.add_collector(lambda: pool_metrics(engine.pool))
        metrics.add_collector(lambda: cache_metrics(state.caches))
        event.listen(engine.sync_engine, "connect", _counting(metrics))
        async with AsyncExitStack() as stack:
            if metrics.multiprocess_dir is not None:
                stack.callback(metrics.worker_exited)
                sync = asyncio.create_task(_sync_metrics(metrics))
                stack.push_async_callback(_cancelled, sync)
            # Left in reverse: warm-up tasks stop, the writers flush, the listener stops, and the
            # engine goes last.
            stack.push_async_callback(engine.dispose)
            await bus.start()
            stack.push_async_callback(bus.stop)
            await stack.enter_async_context(writers_running(state.runtime))
            retry: asyncio.Task[None] | None = None
            if not await _prepare(state, stack, app.state.migration_head):
                retry = asyncio.create_task(
                    _prepare_until_ready(state, stack, app.state.migration_head)
                )
            try:
                yield
            finally:
                if retry is not None:
                    retry.cancel()
                    await asyncio.gather(retry, return_exceptions=True)

    app = LanedFastAPI(
        lane=lambda stack, app_state: FastLane(
            stack,
            app_state,
            metrics=metrics,
            authenticator=authenticator,
            max_body=settings.MAX_BODY_BYTES,
        ),
        title="AlgoWays Store",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    add_exception_handlers(app)
    # Flat, as the /api/v1 routes are: an included router is matched through a nested router.
    app.router.routes.extend(health.router.routes)
    app.router.routes.extend(API_ROUTES)
    # Inside the replay: a request replayed after a serialization failure claims its key anew
    # (the failed attempt released it), and only the final answer is stored.
    app.add_middleware(IdempotencyMiddleware, ttl_seconds=settings.IDEMPOTENCY_TTL_SECONDS)
    # Inside ServiceMiddleware: a replayed request is not authenticated or counted twice.
    app.add_middleware(ReplayOnSerializationFailure)
    app.add_middleware(
        ServiceMiddleware,
        metrics=metrics,
        authenticator=authenticator,
        max_body=settings.MAX_BODY_BYTES,
        max_upload=settings.MAX_UPLOAD_BYTES,
    )
    app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]
    return app


def _counting(metrics: Metrics) -> Callable[..., None]:
    def count_connection(*_: object) -> None:
        metrics.connections_opened.inc()

    return count_connection


async def _sync_metrics(metrics: Metrics) -> None:
    """Keep this worker's live gauges in the shared files fresh for scrapes others answer."""
    while True:
        metrics.sync()
        await asyncio.sleep(SYNC_INTERVAL_S)


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _prepare(state: AppState, stack: AsyncExitStack, head: str | None) -> bool:
    """Check the schema (migrating the embedded SQLite default) and warm the runtime.

    Until this succeeds, /api/v1 answers 503 and /health/ready says why.
    """
    async with AsyncExitStack() as attempt:
        try:
            if state.backend == "sqlite":
                await migrate.upgrade(state.engine)
            current = await migrate.current_revision(state.engine)
            if current != head:
                state.not_ready_reason = (
                    f"schema is at {current} but head is {head}: run `python -m service migrate`"
                )
                return False
            await attempt.enter_async_context(warmed(state.runtime))
        except Exception as exc:
            state.not_ready_reason = f"database unreachable at start-up ({type(exc).__name__})"
            logger.warning("not ready: %s", exc)
            return False
        stack.push_async_callback(attempt.pop_all().aclose)
    # Made on threads while the index was built (service/security.py); a failure is not the
    # database's, and fails the start.
    await state.keyring.ready()
    state.ready, state.not_ready_reason = True, None
    logger.info("serving on %s", state.backend)
    return True


async def _prepare_until_ready(state: AppState, stack: AsyncExitStack, head: str | None) -> None:
    logger.error("not ready: %s; retrying", state.not_ready_reason)
    while not await _prepare(state, stack, head):
        await asyncio.sleep(1)


def app_from_env() -> FastAPI:
    settings = get_settings()
    configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT)
    app = create_app(settings)
    resume_collector()  # everything the app needs is imported
    collector_for_serving()
    return app


def __getattr__(name: str) -> FastAPI:
    """`service.main:app`, the contract's entry point (`uvicorn service.main:app`): built from
    the environment on first access, so importing this module reads no settings."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    app = globals()["app"] = app_from_env()
    return app
