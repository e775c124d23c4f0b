"""Fixtures for both backends.

SQLite leg: every test gets its own database file, copied from one migrated template.
PostgreSQL leg (TEST_DATABASE_URL set): one database per run, migrated once with Alembic, and
every table truncated after each test, so tests commit for real (and LISTEN/NOTIFY works).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from passlib.context import CryptContext
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from service import migrate, security
from service.config import DatabaseSettings, Settings, load_settings
from service.db import make_engine
from service.main import create_app
from tests.support import BACKEND, FULL_TOKEN, POSTGRES_URL, auth, make_settings

ClientFactory = Callable[..., Awaitable[httpx.AsyncClient]]


def pytest_report_header() -> str:
    return f"backend: {BACKEND}" + (f" ({_redact(POSTGRES_URL)})" if POSTGRES_URL else "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if BACKEND == "postgresql":
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL (runs on the PostgreSQL leg)")
    for item in items:
        if "postgres_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def cheap_argon2() -> Iterator[None]:
    """argon2 at a small fraction of production cost, for tests only: they check what is hashed
    and verified, not what it costs. The parameters differ from production's and from the weak
    hashes some tests store, so "re-hash a stale hash" still has something to do."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            security,
            "_argon2",
            CryptContext(
                schemes=["argon2"],
                deprecated="auto",
                argon2__memory_cost=4096,
                argon2__rounds=2,
                argon2__parallelism=1,
            ),
        )
        yield


def _redact(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


async def _migrate(url: str) -> None:
    engine = make_engine(
        load_settings(DatabaseSettings, DATABASE_URL=url, _env_file=None), null_pool=True
    )
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()


async def _admin_execute(url: str, statement: str) -> None:
    engine = create_async_engine(make_url(url), poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def database_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database for this run: a template file on SQLite, a fresh database on PG."""
    if POSTGRES_URL is None:
        path = tmp_path_factory.mktemp("db") / "template.db"
        asyncio.run(_migrate(f"sqlite+aiosqlite:///{path}"))
        yield str(path)
        return
    admin = make_url(DatabaseSettings(DATABASE_URL=POSTGRES_URL, _env_file=None).DATABASE_URL)
    name = f"algoways_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin_execute(admin.render_as_string(False), f'CREATE DATABASE "{name}"'))
    url = admin.set(database=name).render_as_string(hide_password=False)
    try:
        asyncio.run(_migrate(url))
        yield url
    finally:
        asyncio.run(
            _admin_execute(
                admin.render_as_string(False), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
            )
        )


@pytest.fixture
async def database_url(database_template: str, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a clean, migrated database for one test."""
    if POSTGRES_URL is None:
        path = tmp_path / "test.db"
        shutil.copyfile(database_template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    yield database_template
    await _admin_execute(
        database_template,
        """DO $$ DECLARE names text; BEGIN
             SELECT string_agg(format('%I', tablename), ', ') INTO names FROM pg_tables
              WHERE schemaname = current_schema() AND tablename <> 'alembic_version';
             IF names IS NOT NULL THEN
               EXECUTE 'TRUNCATE ' || names || ' RESTART IDENTITY CASCADE';
             END IF;
           END $$""",
    )


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    """A direct engine on the test database, for arranging rows and asserting what was written."""
    engine = make_engine(
        load_settings(DatabaseSettings, DATABASE_URL=database_url, _env_file=None), null_pool=True
    )
    yield engine
    await engine.dispose()


@pytest.fixture
def settings_factory(database_url: str) -> Callable[..., Settings]:
    def factory(**overrides: Any) -> Settings:
        return make_settings(database_url, **overrides)

    return factory


@pytest.fixture
async def client_factory(
    settings_factory: Callable[..., Settings],
) -> AsyncIterator[ClientFactory]:
    """Start app instances (lifespan included) on the test database; each call is one instance."""
    async with AsyncExitStack() as stack:

        async def start(token: str | None = FULL_TOKEN, **overrides: Any) -> httpx.AsyncClient:
            settings = overrides.pop("settings", None) or settings_factory(**overrides)
            app = create_app(settings)
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://test",
                headers=auth(token) if token else {},
            )
            await stack.enter_async_context(client)
            client.app = app  # type: ignore[attr-defined]
            return client

        yield start


@pytest.fixture
async def client(client_factory: ClientFactory) -> httpx.AsyncClient:
    """One app instance, authenticated with a read+write+secrets token."""
    return await client_factory()
