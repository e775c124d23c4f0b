"""Group commit: concurrent posts coalesce into few inserts, each answered after its commit;
failures reach every waiting request; the queue is bounded; shutdown flushes what is pending."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from service.db import begin_write
from service.errors import DatabaseUnavailable
from service.group_commit import GroupCommitWriter
from service.main import create_app
from service.models.logs import OrderLog
from service.repositories import logs as logs_repo
from tests.support import BACKEND, assert_problem, auth


@contextmanager
def statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """Every SQL statement the engine sends while the block runs."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


@contextmanager
def commits(engine: AsyncEngine) -> Iterator[list[int]]:
    """One entry per transaction the engine commits while the block runs."""
    seen: list[int] = []

    def record(_conn: Any) -> None:
        seen.append(1)

    event.listen(engine.sync_engine, "commit", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "commit", record)


@asynccontextmanager
async def table_write_lock(db: AsyncEngine, table: str) -> AsyncIterator[None]:
    """Block every writer of `table` until the block ends (SQLite: the database write lock)."""
    async with AsyncSession(db) as session:
        await begin_write(session)
        if BACKEND == "postgresql":
            await session.execute(text(f"LOCK TABLE {table} IN EXCLUSIVE MODE"))
        else:
            await session.execute(text("SELECT 1"))
        yield
        await session.rollback()


async def count_rows(db: AsyncEngine, table: str) -> int:
    async with db.connect() as conn:
        return int(await conn.scalar(text(f"SELECT count(*) FROM {table}")))


def traffic_row(i: int) -> dict[str, Any]:
    return {
        "client_ip": f"10.0.{i // 256}.{i % 256}",
        "method": "GET",
        "path": f"/p/{i}",
        "status_code": 200,
        "duration_ms": 1.0,
    }


class TestCoalescing:
    async def test_200_concurrent_posts_share_few_inserts_and_get_their_own_ids(self, client, db):
        engine = client.app.state.store.engine
        with statements(engine) as seen:
            responses = await asyncio.gather(
                *(
                    client.post(
                        "/api/v1/order-logs",
                        json={
                            "api_type": "placeorder",
                            "request_data": {"n": i},
                            "response_data": i,
                        },
                    )
                    for i in range(200)
                )
            )
        assert [r.status_code for r in responses] == [201] * 200
        inserts = [s for s in seen if s.lstrip().upper().startswith("INSERT INTO ORDER_LOGS")]
        assert 1 <= len(inserts) <= 20, len(inserts)

        async with db.connect() as conn:
            rows = (await conn.execute(select(OrderLog.id, OrderLog.request_data))).all()
        stored = dict(rows)
        assert len(stored) == 200
        for i, response in enumerate(responses):
            [row_id] = response.json()["ids"]
            assert stored[row_id] == {"n": i}  # the id answered is the row this request posted

    async def test_200_concurrent_traffic_posts_commit_in_few_transactions(self, client, db):
        engine = client.app.state.store.engine
        with commits(engine) as committed:
            responses = await asyncio.gather(
                *(client.post("/api/v1/traffic/logs", json=traffic_row(i)) for i in range(200))
            )
        assert {r.status_code for r in responses} == {201}
        assert all(r.json() == {"count": 1} for r in responses)
        assert 1 <= len(committed) <= 20, len(committed)
        assert await count_rows(db, "traffic_logs") == 200

    async def test_batches_and_single_rows_coalesce_together(self, client, db):
        batch = [traffic_row(i) for i in range(300)]
        responses = await asyncio.gather(
            client.post("/api/v1/traffic/logs", json=batch),
            *(client.post("/api/v1/traffic/logs", json=traffic_row(i)) for i in range(50)),
            client.post("/api/v1/traffic/logs", json=batch),
        )
        assert [r.json()["count"] for r in responses] == [300, *[1] * 50, 300]
        assert await count_rows(db, "traffic_logs") == 650

    async def test_a_write_leaves_the_submitted_rows_as_they_were(self, db):
        """The writer hands a retry or a split the same row objects: `insert_rows` (COPY on
        PostgreSQL, JSON documents sent as text) must write them without changing them."""
        table = OrderLog.__table__
        at = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
        rows = [
            {
                "api_type": "placeorder",
                "request_data": {"n": i},
                "response_data": [i],
                "created_at": at,
            }
            for i in range(3)
        ]
        as_submitted = copy.deepcopy(rows)
        for _ in range(2):  # twice, as a retried flush writes them
            async with AsyncSession(db) as session:
                await begin_write(session)
                await logs_repo.insert_rows(session, table, rows)  # type: ignore[arg-type]
                await session.commit()
        assert rows == as_submitted
        async with db.connect() as conn:
            stored = (
                await conn.execute(select(OrderLog.request_data, OrderLog.response_data))
            ).all()
        assert sorted(map(tuple, stored), key=str) == sorted(
            [({"n": i}, [i]) for i in range(3)] * 2, key=str
        )


class TestFailures:
    async def test_database_failure_fails_every_waiting_request_with_503(
        self, client, db, monkeypatch
    ):
        async def unreachable(*_args: Any) -> None:
            raise sa_exc.OperationalError("INSERT", {}, ConnectionError("server closed"))

        monkeypatch.setattr(logs_repo, "insert_rows", unreachable)
        responses = await asyncio.gather(
            *(client.post("/api/v1/traffic/logs", json=traffic_row(i)) for i in range(20))
        )
        for response in responses:
            assert_problem(response, 503, "database-unavailable")
            assert response.headers["retry-after"]
        assert await count_rows(db, "traffic_logs") == 0

        monkeypatch.undo()  # the writer survives the failure and serves the next request
        response = await client.post("/api/v1/traffic/logs", json=traffic_row(1))
        assert response.status_code == 201
        assert await count_rows(db, "traffic_logs") == 1

    async def test_full_queue_pushes_back_with_503_instead_of_growing(self, client):
        release = asyncio.Event()
        written: list[int] = []

        async def slow_write(_session: AsyncSession, rows: list[dict[str, Any]]) -> None:
            await release.wait()
            written.append(len(rows))

        state = client.app.state.store
        writer = GroupCommitWriter(
            "test", state.sessionmaker, slow_write, max_pending_rows=10, wait_timeout=0.05
        )
        async with writer.running():
            first = asyncio.create_task(writer.submit([{}] * 10))
            while writer.pending_rows < 10:
                await asyncio.sleep(0)
            with pytest.raises(DatabaseUnavailable):
                await writer.submit([{}])
            release.set()
            assert await first is None
            assert await writer.submit([{}] * 3) is None  # room again once the flush is done
        assert written == [10, 3]

    async def test_a_disconnected_client_does_not_cancel_its_rows(self, client):
        release = asyncio.Event()
        written: list[int] = []

        async def slow_write(_session: AsyncSession, rows: list[dict[str, Any]]) -> None:
            await release.wait()
            written.append(len(rows))

        writer = GroupCommitWriter("test", client.app.state.store.sessionmaker, slow_write)
        async with writer.running():
            waiting = asyncio.create_task(writer.submit([{}] * 4))
            while writer.pending_rows < 4:
                await asyncio.sleep(0)
            waiting.cancel()
            release.set()
        assert written == [4]


class TestShutdown:
    async def test_leaving_the_lifespan_writes_pending_rows_first(self, settings_factory, db):
        app = create_app(settings_factory(DB_POOL_TIMEOUT=20))
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test", headers=auth()
        )
        state = app.state.store
        writer = state.runtime.writers.traffic_logs
        async with table_write_lock(db, "traffic_logs"):
            posts = [
                asyncio.create_task(client.post("/api/v1/traffic/logs", json=traffic_row(i)))
                for i in range(30)
            ]

            async def blocked() -> None:
                while writer.pending_rows < 30 or not state.engine.pool.checkedout():
                    await asyncio.sleep(0.01)

            await asyncio.wait_for(blocked(), 10)
            # 30 requests wait, but only the writer's flushes hold connections.
            assert state.engine.pool.checkedout() <= writer.concurrency
            stopping = asyncio.create_task(lifespan.__aexit__(None, None, None))
            await asyncio.sleep(0.05)
            assert not stopping.done()
        await asyncio.wait_for(stopping, 30)
        assert await count_rows(db, "traffic_logs") == 30  # written before the lifespan ended
        responses = await asyncio.wait_for(asyncio.gather(*posts), 5)
        assert {r.status_code for r in responses} == {201}

        late = await client.post("/api/v1/traffic/logs", json=traffic_row(99))
        assert_problem(late, 503, "database-unavailable")
        assert await count_rows(db, "traffic_logs") == 30
        await client.aclose()
