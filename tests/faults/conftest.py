"""Fault tests: the service against a private PostgreSQL cluster that the tests stop, start and
put behind a misbehaving TCP proxy.

They run on their own (`python -m pytest tests/faults`, `make test-faults`): a plain `pytest`
run does not collect them, since they start their own server and take a while. The shared
fixtures of tests/conftest.py (`client_factory`, `db`, `settings_factory`) work here unchanged:
`database_url` below points them at the private cluster.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.conftest import _admin_execute, _migrate
from tests.faults.cluster import PgCluster, available
from tests.tcp_proxy import TcpProxy

HERE = Path(__file__).parent.resolve()
DATABASE = "faults"
TRUNCATE_ALL = """DO $$ DECLARE names text; BEGIN
     SELECT string_agg(format('%I', tablename), ', ') INTO names FROM pg_tables
      WHERE schemaname = current_schema() AND tablename <> 'alembic_version';
     IF names IS NOT NULL THEN
       EXECUTE 'TRUNCATE ' || names || ' RESTART IDENTITY CASCADE';
     END IF;
   END $$"""


def _asked_for(config: pytest.Config) -> bool:
    """True when the run names this directory (or a file in it), or FAULT_TESTS=1 is set."""
    if os.environ.get("FAULT_TESTS") == "1":
        return True
    for arg in config.args:
        path = Path(config.invocation_params.dir, arg.split("::")[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if HERE in collection_path.parents and not _asked_for(config):
        return True
    return None


@pytest.fixture(scope="session")
def cluster() -> Iterator[PgCluster]:
    reason = available()
    if reason is not None:
        pytest.skip(f"private PostgreSQL cluster unavailable: {reason}")
    pg = PgCluster()
    try:
        pg.init()
        pg.start()
        asyncio.run(_admin_execute(pg.url(), f'CREATE DATABASE "{DATABASE}"'))
        asyncio.run(_migrate(pg.url(DATABASE)))
        yield pg
    finally:
        pg.destroy()


@pytest.fixture
async def database_url(cluster: PgCluster) -> AsyncIterator[str]:
    """The private cluster's database, running and emptied after each test."""
    if not cluster.running():
        await asyncio.to_thread(cluster.start)
    yield cluster.url(DATABASE)
    if not cluster.running():
        await asyncio.to_thread(cluster.start)
    await asyncio.to_thread(cluster.wait_accepting)
    await _admin_execute(cluster.url(DATABASE), TRUNCATE_ALL)


@pytest.fixture
async def proxy(cluster: PgCluster) -> AsyncIterator[TcpProxy]:
    """A TCP proxy in front of the cluster; `proxy_url` is the database through it."""
    async with TcpProxy("127.0.0.1", cluster.port) as running:
        yield running


@pytest.fixture
def proxy_url(cluster: PgCluster, proxy: TcpProxy) -> str:
    return cluster.url(DATABASE, port=proxy.port)
