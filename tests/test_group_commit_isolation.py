"""One request's bad rows never fail another's: a flush that fails on data is split until only the
offending requests remain, everything else is committed and answered normally."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from service.errors import Conflict, DatabaseUnavailable, ValidationFailed
from service.group_commit import GroupCommitWriter
from service.models.logs import OrderLog
from service.models.traffic import TrafficLog
from service.repositories import logs as logs_repo
from tests.support import BACKEND, assert_problem
from tests.test_group_commit import count_rows, table_write_lock, traffic_row

Poison = Callable[[str, str, str], Awaitable[None]]


@pytest.fixture
async def poison(db: AsyncEngine) -> AsyncIterator[Poison]:
    """Make the database itself refuse rows whose `column` equals `value`, with a data error
    (PostgreSQL: SQLSTATE 22023 from a trigger; SQLite: a trigger's RAISE(ABORT)).

    The edge refuses what it knows the databases cannot store, so the test needs a value only
    the database refuses, to reach the writer's handling of a flush that fails on data.
    """
    installed: list[str] = []

    async def install(table: str, column: str, value: str) -> None:
        name = f"test_poison_{table}"
        async with db.begin() as conn:
            if BACKEND == "postgresql":
                await conn.execute(
                    text(
                        """CREATE OR REPLACE FUNCTION test_poison() RETURNS trigger
                           LANGUAGE plpgsql AS $$ BEGIN
                             IF to_jsonb(NEW) ->> TG_ARGV[0] = TG_ARGV[1] THEN
                               RAISE EXCEPTION 'poison' USING ERRCODE = '22023';
                             END IF;
                             RETURN NEW;
                           END $$"""
                    )
                )
                await conn.execute(
                    text(
                        f"CREATE TRIGGER {name} BEFORE INSERT ON {table} FOR EACH ROW "
                        f"EXECUTE FUNCTION test_poison('{column}', '{value}')"
                    )
                )
            else:
                await conn.execute(
                    text(
                        f"CREATE TRIGGER {name} BEFORE INSERT ON {table} "
                        f"WHEN NEW.{column} = '{value}' BEGIN SELECT RAISE(ABORT, 'poison'); END"
                    )
                )
        installed.append(f"DROP TRIGGER IF EXISTS {name} ON {table}")

    yield install
    if BACKEND == "postgresql":  # the PostgreSQL test database outlives the test
        async with db.begin() as conn:
            for statement in installed:
                await conn.execute(text(statement))
            await conn.execute(text("DROP FUNCTION IF EXISTS test_poison()"))


async def _post_together(
    client: httpx.AsyncClient, db: AsyncEngine, table: str, url: str, bodies: list[Any]
) -> list[httpx.Response]:
    """Post every body at once while the table is locked, so they all queue into few flushes."""
    writers = client.app.state.store.runtime.writers  # type: ignore[attr-defined]
    writer = next(w for w in writers.all() if w.name == table)
    async with table_write_lock(db, table):
        posts = [asyncio.create_task(client.post(url, json=body)) for body in bodies]

        async def queued() -> None:
            while writer.pending_rows < len(bodies):
                await asyncio.sleep(0.005)

        await asyncio.wait_for(queued(), 10)
    return await asyncio.wait_for(asyncio.gather(*posts), 30)


class TestOneBadRequestAmongMany:
    async def test_49_traffic_posts_commit_and_the_poisoned_one_gets_422(self, client, db, poison):
        await poison("traffic_logs", "path", "/poison")
        bodies = [traffic_row(i) for i in range(50)]
        bodies[25] = {**bodies[25], "path": "/poison"}

        responses = await _post_together(client, db, "traffic_logs", "/api/v1/traffic/logs", bodies)

        for i, response in enumerate(responses):
            if i == 25:
                problem = assert_problem(response, 422, "value-refused")
                assert "poison" not in response.text  # the database's message stays inside
                assert problem["errors"][0]["type"] == "value_refused"
            else:
                assert (response.status_code, response.json()) == (201, {"count": 1}), i
        async with db.connect() as conn:
            paths = set((await conn.scalars(select(TrafficLog.path))).all())
        assert paths == {f"/p/{i}" for i in range(50) if i != 25}

    async def test_ids_stay_right_when_an_order_log_flush_is_split(self, client, db, poison):
        await poison("order_logs", "api_type", "poison")
        bodies = [
            {"api_type": "placeorder", "request_data": {"n": i}, "response_data": {"ok": i}}
            for i in range(50)
        ]
        bodies[10] = {**bodies[10], "api_type": "poison"}

        responses = await _post_together(client, db, "order_logs", "/api/v1/order-logs", bodies)

        assert_problem(responses[10], 422, "value-refused")
        async with db.connect() as conn:
            stored = dict((await conn.execute(select(OrderLog.id, OrderLog.request_data))).all())
        assert len(stored) == 49
        answered = set()
        for i, response in enumerate(responses):
            if i == 10:
                continue
            assert response.status_code == 201, (i, response.text)
            [row_id] = response.json()["ids"]
            assert stored[row_id] == {"n": i}  # the id answered is the row this request posted
            answered.add(row_id)
        assert answered == set(stored)

    async def test_a_bad_batch_request_fails_whole_and_alone(self, client, db, poison):
        await poison("traffic_logs", "path", "/poison")
        bad_batch = [traffic_row(100), {**traffic_row(101), "path": "/poison"}, traffic_row(102)]
        bodies: list[Any] = [traffic_row(i) for i in range(10)]
        bodies.insert(5, bad_batch)

        responses = await _post_together(client, db, "traffic_logs", "/api/v1/traffic/logs", bodies)

        assert_problem(responses[5], 422, "value-refused")
        assert [r.status_code for i, r in enumerate(responses) if i != 5] == [201] * 10
        async with db.connect() as conn:
            paths = set((await conn.scalars(select(TrafficLog.path))).all())
        assert paths == {f"/p/{i}" for i in range(10)}  # nothing of the bad batch request


def _order_row(n: int, api_type: str | None = "placeorder") -> dict[str, Any]:
    return {"api_type": api_type, "request_data": {"n": n}, "response_data": None}


async def _stored_order_logs(db: AsyncEngine) -> dict[int, Any]:
    async with db.connect() as conn:
        return dict((await conn.execute(select(OrderLog.id, OrderLog.request_data))).all())


class Gate:
    """Where the write function waits: `entered` once the writer reached it, until `open`."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.open = asyncio.Event()

    async def passing(self) -> None:
        self.entered.set()
        await self.open.wait()


class TestWriter:
    """The writer itself, on the real test database, with every entry in one flush."""

    @staticmethod
    async def _submit_in_one_flush(
        writer: GroupCommitWriter, entries: list[list[dict[str, Any]]], gate: Gate
    ) -> list[Any]:
        """Submit a first entry that holds the writer at `gate`, then `entries`, which queue
        up behind it and are taken as one batch once the gate opens."""
        first = asyncio.create_task(writer.submit([_order_row(-1)]))
        await gate.entered.wait()
        tasks = [asyncio.create_task(writer.submit(rows)) for rows in entries]
        while writer.pending_rows < 1 + sum(len(rows) for rows in entries):
            await asyncio.sleep(0)
        gate.open.set()
        await first
        return await asyncio.gather(*tasks, return_exceptions=True)

    async def test_only_the_entry_with_a_refused_row_fails(self, client, db):
        gate = Gate()
        flushed: list[int] = []

        async def write(session: AsyncSession, rows: list[dict[str, Any]]) -> list[int]:
            await gate.passing()
            flushed.append(len(rows))
            return await logs_repo.insert_returning_ids(session, OrderLog.__table__, rows)

        entries = [[_order_row(i)] for i in range(8)]
        entries[3] = [_order_row(30), _order_row(31, api_type=None), _order_row(32)]  # NOT NULL
        writer = GroupCommitWriter("test", client.app.state.store.sessionmaker, write)
        async with writer.running():
            results = await self._submit_in_one_flush(writer, entries, gate)

        assert flushed[:2] == [1, 10]  # the eight entries really were one flush first
        assert isinstance(results[3], Conflict)
        assert results[3].status == 409
        stored = await _stored_order_logs(db)
        for i, ids in enumerate(results):
            if i != 3:
                assert [stored[row_id] for row_id in ids] == [{"n": i}]
        assert sorted(n["n"] for n in stored.values()) == [-1, 0, 1, 2, 4, 5, 6, 7]

    async def test_a_4xx_from_the_write_function_is_isolated_too(self, client, db):
        gate = Gate()

        async def write(session: AsyncSession, rows: list[dict[str, Any]]) -> list[int]:
            await gate.passing()
            if any(row["request_data"]["n"] == 5 for row in rows):
                raise ValidationFailed.field(["body", "n"], "five is refused")
            return await logs_repo.insert_returning_ids(session, OrderLog.__table__, rows)

        writer = GroupCommitWriter("test", client.app.state.store.sessionmaker, write)
        async with writer.running():
            results = await self._submit_in_one_flush(
                writer, [[_order_row(i)] for i in range(9)], gate
            )

        assert isinstance(results[5], ValidationFailed)
        assert results[5].errors == [
            {"loc": ["body", "n"], "msg": "five is refused", "type": "value_error"}
        ]
        stored = await _stored_order_logs(db)
        assert len(stored) == 9  # the gate's entry and eight of nine
        assert all(stored[ids[0]] == {"n": i} for i, ids in enumerate(results) if i != 5)

    async def test_connection_failure_fails_the_whole_flush_without_splitting(self, client, db):
        gate = Gate()
        calls: list[int] = []

        async def write(session: AsyncSession, rows: list[dict[str, Any]]) -> list[int]:
            await gate.passing()
            calls.append(len(rows))
            if len(rows) > 1:
                raise sa_exc.OperationalError("INSERT", {}, ConnectionResetError("gone"))
            return await logs_repo.insert_returning_ids(session, OrderLog.__table__, rows)

        writer = GroupCommitWriter("test", client.app.state.store.sessionmaker, write)
        async with writer.running():
            results = await self._submit_in_one_flush(
                writer, [[_order_row(i)] for i in range(6)], gate
            )

        assert calls == [1, 6]  # no retry, no split: every request learns the rows are not written
        assert all(isinstance(r, DatabaseUnavailable) and r.headers for r in results)
        assert await count_rows(db, "order_logs") == 1

    async def test_a_serialization_failure_is_retried_once(self, client, db):
        failures = [2]  # the next two attempts fail

        class SerializationFailure(Exception):
            sqlstate = "40001"

        async def write(session: AsyncSession, rows: list[dict[str, Any]]) -> list[int]:
            ids = await logs_repo.insert_returning_ids(session, OrderLog.__table__, rows)
            if failures[0] > 0:
                failures[0] -= 1
                raise sa_exc.DBAPIError("COMMIT", {}, SerializationFailure("could not serialize"))
            return ids

        writer = GroupCommitWriter("test", client.app.state.store.sessionmaker, write)
        async with writer.running():
            with pytest.raises(DatabaseUnavailable):  # failed, and failed again when retried
                await writer.submit([_order_row(1)])
            assert failures == [0]
            failures[0] = 1
            [row_id] = await writer.submit([_order_row(2)])  # failed once, retried, committed
        assert failures == [0]
        assert await _stored_order_logs(db) == {row_id: {"n": 2}}
