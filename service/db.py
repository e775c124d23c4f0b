"""The engine, its pool, the sessionmaker and the per-request session dependency."""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import event
from sqlalchemy.engine import Dialect, ExceptionContext, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import (
    AsyncAdaptedQueuePool,
    NullPool,
    PoolProxiedConnection,
    StaticPool,
)
from sqlalchemy.util import await_

from service.cache import InvalidationBus
from service.config import APPLICATION_NAME, DatabaseSettings

_WRITE_INTENT = "sqlite_write_intent"


def make_engine(settings: DatabaseSettings, *, null_pool: bool = False) -> AsyncEngine:
    """The one engine of the app, its pool sized from settings.

    `null_pool` engines (migrations, key rotation, tests' direct access) get no statement
    timeout: a migration may rightly run longer than any request should.
    """
    url = make_url(settings.DATABASE_URL)
    kwargs: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql":
        statement_timeout = None if null_pool else settings.DB_STATEMENT_TIMEOUT or None
        kwargs["connect_args"] = {
            # Bounds connection set-up, so an unreachable server gives 503, never a hang.
            "timeout": settings.DB_POOL_TIMEOUT,
            # Bounds every statement, so a connection that went silent gives 503, never a hang.
            "command_timeout": statement_timeout,
            "server_settings": {"application_name": APPLICATION_NAME, "jit": "off"},
        }
        if null_pool:
            kwargs["poolclass"] = NullPool
        else:
            kwargs.update(
                poolclass=_OneDeadlinePool,
                pool_size=settings.DB_POOL_SIZE,
                max_overflow=settings.DB_MAX_OVERFLOW,
                pool_timeout=settings.DB_POOL_TIMEOUT,
                pool_recycle=settings.DB_POOL_RECYCLE,
                pool_pre_ping=settings.DB_POOL_PRE_PING,
                pool_use_lifo=True,
            )
        engine = create_async_engine(url, **kwargs)
        ping_timeout = min(settings.DB_POOL_TIMEOUT, statement_timeout or settings.DB_POOL_TIMEOUT)
        engine.sync_engine.dialect.do_ping = functools.partial(  # type: ignore[method-assign]
            _ping_one_round_trip, timeout=ping_timeout
        )
        event.listen(engine.sync_engine, "do_connect", _connect_within_deadline)
        event.listen(engine.sync_engine, "handle_error", _server_going_away)
    else:
        memory = url.database in (None, "", ":memory:")
        if memory:
            kwargs["poolclass"] = StaticPool
        elif null_pool:
            kwargs["poolclass"] = NullPool
        else:
            kwargs.update(
                pool_size=settings.DB_POOL_SIZE,
                max_overflow=settings.DB_MAX_OVERFLOW,
                pool_timeout=settings.DB_POOL_TIMEOUT,
            )
        engine = create_async_engine(url, **kwargs)
        _configure_sqlite(engine, busy_timeout_ms=int(settings.DB_POOL_TIMEOUT * 1000))
    return engine


# When the checkout under way must be over (monotonic seconds); set by _OneDeadlinePool.
_checkout_deadline: ContextVar[float | None] = ContextVar("checkout_deadline", default=None)
# Never leave a step less than this, so a connection that is fine is not failed for lack of time.
_MIN_STEP_S = 0.1


class _OneDeadlinePool(AsyncAdaptedQueuePool):
    """A queue pool whose checkout gets one pool timeout in all.

    Waiting for a free slot, the pre-ping and opening a new connection each have their own
    timeout; behind a black hole they would add up (a request waits for a slot, then for a
    connection that never answers). Sharing one deadline keeps the 503 within DB_POOL_TIMEOUT.
    """

    def connect(self) -> PoolProxiedConnection:
        token = _checkout_deadline.set(time.monotonic() + self._timeout)
        try:
            return super().connect()
        finally:
            _checkout_deadline.reset(token)


def _within_deadline(limit: float) -> float:
    deadline = _checkout_deadline.get()
    if deadline is None:
        return limit
    return min(limit, max(deadline - time.monotonic(), _MIN_STEP_S))


def _connect_within_deadline(
    dialect: Dialect, _record: Any, cargs: tuple[Any, ...], cparams: dict[str, Any]
) -> Any:
    """Open a connection with what is left of the checkout's deadline as its timeout."""
    timeout = _within_deadline(cparams["timeout"])
    return dialect.connect(*cargs, **{**cparams, "timeout": timeout})


def _ping_one_round_trip(dbapi_connection: Any, *, timeout: float) -> bool:
    """Pre-ping with one empty query, answered within `timeout`.

    SQLAlchemy's asyncpg ping wraps it in BEGIN/ROLLBACK for PgBouncer's transaction mode: three
    round trips on every checkout. Against PostgreSQL itself one query proves the connection
    alive; a failure is translated as the driver's own ping would, so the pool replaces it.
    A connection that stays silent is closed and the checkout fails with the timeout (503): a
    silent route would only make the reconnect hang as well, and the pool reconnects the next
    time.
    """
    driver = dbapi_connection.driver_connection
    try:
        await_(driver.fetchrow(";", timeout=_within_deadline(timeout)))
    except TimeoutError:
        driver.terminate()
        raise
    except Exception as error:
        dbapi_connection._handle_exception(error)
    return True


# SQLSTATE classes that mean "this connection, or the server, is going away or not there yet":
# 08 connection exception, 57P01-57P05 admin/crash shutdown, cannot connect now (starting up,
# recovering), idle-session timeout. asyncpg raises them as plain PostgresErrors, which
# SQLAlchemy does not count as disconnects, so they would pass for bugs.
_GOING_AWAY = ("08", "57P")


def _server_going_away(context: ExceptionContext) -> None:
    """Count the server's going-away errors as disconnects: the pool drops the connection, and
    the error says `connection_invalidated`, which the API answers with 503."""
    sqlstate = getattr(context.original_exception, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate.startswith(_GOING_AWAY):
        context.is_disconnect = True


def _configure_sqlite(engine: AsyncEngine, *, busy_timeout_ms: int) -> None:
    """WAL, busy_timeout and foreign keys on every connection; BEGIN IMMEDIATE for writes.

    The driver's own transaction handling is switched off so that SQLAlchemy emits BEGIN itself
    (SQLAlchemy's pysqlite recipe). A write request begins IMMEDIATE: a deferred transaction that
    reads and then writes cannot upgrade its lock once another writer committed, and busy_timeout
    does not help it, which is where "database is locked" comes from.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get(_WRITE_INTENT, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def make_sessionmaker(
    engine: AsyncEngine, bus: InvalidationBus, *, write: bool = False
) -> async_sessionmaker[AsyncSession]:
    """Sessions on `engine`; with `write`, their transactions begin as writers.

    The write intent is an execution option of the bind, so the transaction (on SQLite, the
    write lock) begins with the first statement, not when the session is made: work a request
    does before it touches the database (an argon2 hash, parsing) holds no lock.
    """
    bind = engine.execution_options(**{_WRITE_INTENT: True}) if write else engine
    return async_sessionmaker(bind, expire_on_commit=False, info={"bus": bus})


def dialect_of(session: AsyncSession) -> str:
    """`sqlite` or `postgresql`: the backend the session's sessionmaker is bound to."""
    return session.get_bind().dialect.name


async def begin_write(session: AsyncSession) -> None:
    """Start the session's transaction as a writer (BEGIN IMMEDIATE on SQLite; no-op elsewhere)."""
    if dialect_of(session) == "sqlite" and not session.in_transaction():
        await session.connection(execution_options={_WRITE_INTENT: True})


async def begin_autocommit_read(session: AsyncSession) -> None:
    """Run a read-only request's statements without BEGIN and COMMIT on PostgreSQL.

    For one-statement reads: one statement sees one consistent snapshot by itself, and the two
    round trips cost more than the read. Call it first, and never in a request that writes.
    SQLite keeps its transaction (BEGIN is driven by the event above).
    """
    if dialect_of(session) == "postgresql" and not session.in_transaction():
        await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


def read_engine(engine: AsyncEngine) -> AsyncEngine:
    """`engine` for one-statement reads on a connection of their own: autocommit on PostgreSQL
    (no BEGIN and COMMIT round trips around one statement, as begin_autocommit_read); SQLite
    keeps its transaction."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return engine


_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@asynccontextmanager
async def short_transaction(
    sessionmaker: async_sessionmaker[AsyncSession], *, write: bool = False
) -> AsyncIterator[AsyncSession]:
    """A transaction of its own, committed at the end of the block, rolled back if it raises.

    For work that must not hold a transaction across something slow (an argon2 check, a cold
    cache fill outside any request): read, compute with no connection held, then write briefly.
    """
    async with sessionmaker() as session:
        if write:
            await begin_write(session)
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request: committed when the handler returns, before the response is sent;
    rolled back when it raises. A write request's transaction begins as a writer, at its first
    statement."""
    state = request.app.state.store
    write = request.method not in _READ_METHODS
    sessionmaker: async_sessionmaker[AsyncSession] = (
        state.write_sessionmaker if write else state.sessionmaker
    )
    async with sessionmaker() as session:
        try:
            yield session
            if session.in_transaction():
                await session.commit()
        except BaseException:
            if session.in_transaction():
                await session.rollback()
            raise


# scope="function": the commit runs right after the endpoint returns, before the response is sent,
# so a commit that fails reaches the client as a problem, never as a 2xx.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
