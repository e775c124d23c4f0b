"""strategies and chartink: reads issue a fixed number of statements, however many strategies and
symbols they return (no N+1, no lazy loading)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from service import direct_read
from tests.test_strategies import CHARTINK, STRATEGIES, Family, add, create, insert_strategy


@pytest.fixture(params=[STRATEGIES, CHARTINK], ids=lambda f: f.name)
def family(request: pytest.FixtureRequest) -> Family:
    return request.param  # type: ignore[no-any-return]


@contextmanager
def statements(client: httpx.AsyncClient) -> Iterator[list[str]]:
    """Every statement the app's engine sends while the block runs: through SQLAlchemy's cursor,
    or straight to the driver (service/direct_read.py, on PostgreSQL)."""
    engine = client.app.state.store.engine.sync_engine  # type: ignore[attr-defined]
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    direct = direct_read._fetch

    async def fetch_directly(connection: Any, sql: str, args: list[Any]) -> Any:
        seen.append(sql)
        return await direct(connection, sql, args)

    event.listen(engine, "before_cursor_execute", record)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(direct_read, "_fetch", fetch_directly)
        try:
            yield seen
        finally:
            event.remove(engine, "before_cursor_execute", record)


def selects(seen: list[str]) -> list[str]:
    return [s for s in seen if s.lstrip().upper().startswith("SELECT")]


async def add_strategies(
    client: httpx.AsyncClient, family: Family, count: int, symbols: int
) -> list[int]:
    ids = []
    for n in range(count):
        strategy = await create(client, family, name=f"S{n}")
        batch = [family.mapping(f"SYM{n}_{i}") for i in range(symbols)]
        await add(client, family, strategy["id"], batch)
        ids.append(strategy["id"])
    return ids


async def test_list_is_constant_in_strategies_and_symbols(client, family):
    await add_strategies(client, family, 1, symbols=1)
    with statements(client) as one:
        response = await client.get(family.path)
    assert len(response.json()["items"]) == 1

    await add_strategies(client, family, 19, symbols=5)
    with statements(client) as twenty:
        response = await client.get(family.path)
    items = response.json()["items"]
    assert len(items) == 20 and sum(len(i["symbols"]) for i in items) == 1 + 19 * 5

    assert len(twenty) == len(one)
    assert len(selects(one)) == 2  # the strategies, then all their symbols at once


async def test_get_by_id_is_constant_in_symbols(client, family):
    [few] = await add_strategies(client, family, 1, symbols=1)
    [many] = await add_strategies(client, family, 1, symbols=20)
    with statements(client) as one:
        assert len((await client.get(f"{family.path}/{few}")).json()["symbols"]) == 1
    with statements(client) as twenty:
        assert len((await client.get(f"{family.path}/{many}")).json()["symbols"]) == 20
    assert len(one) == len(twenty)
    assert len(selects(one)) == 1  # the strategy LEFT JOIN its symbols


async def test_by_webhook_reads_the_database_once_then_never(client, db, family):
    webhook_id = await insert_strategy(db, family, [f"S{i}" for i in range(10)])
    url = f"{family.path}/by-webhook/{webhook_id}"
    with statements(client) as cold:
        assert len((await client.get(url)).json()["symbols"]) == 10
    with statements(client) as warm:
        for _ in range(5):
            assert (await client.get(url)).status_code == 200
    assert len(selects(cold)) == 1
    assert warm == []
