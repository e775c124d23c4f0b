"""order-logs and analyzer-logs (one implementation, two tables): ingestion, keyset pages,
stats read from the JSON, chunked retention."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.models.logs import AnalyzerLog, ApiLogColumns, OrderLog
from service.repositories import logs as logs_repo
from tests.support import BACKEND, RO_TOKEN, assert_problem, auth
from tests.test_group_commit import commits, statements

T0 = datetime(2026, 3, 2, 9, 15, tzinfo=UTC)


@pytest.fixture(
    params=[("order-logs", OrderLog), ("analyzer-logs", AnalyzerLog)], ids=lambda p: p[0]
)
def api(request: pytest.FixtureRequest) -> tuple[str, type[ApiLogColumns]]:
    path, model = request.param
    return f"/api/v1/{path}", model


def log(i: int = 0, **overrides: Any) -> dict[str, Any]:
    return {
        "api_type": "placeorder",
        "request_data": {"symbol": "SBIN", "exchange": "NSE", "quantity": i},
        "response_data": {"status": "success", "orderid": f"{i:05d}"},
        **overrides,
    }


async def stored(db: AsyncEngine, model: type[ApiLogColumns]) -> list[Any]:
    async with db.connect() as conn:
        query = select(model.__table__).order_by(model.id)  # type: ignore[attr-defined]
        return list((await conn.execute(query)).all())


async def arrange(db: AsyncEngine, model: type[ApiLogColumns], rows: list[dict[str, Any]]) -> None:
    async with db.begin() as conn:
        await conn.execute(insert(model), rows)


class TestCreateApiLogs:
    async def test_one_object_is_written_before_the_answer(self, client, db, api):
        path, model = api
        response = await client.post(path, json=log(7, created_at="2026-03-02T14:45:00+05:30"))
        assert response.status_code == 201
        [row_id] = response.json()["ids"]
        [row] = await stored(db, model)
        assert row.id == row_id
        assert row.api_type == "placeorder"
        assert row.request_data == {"symbol": "SBIN", "exchange": "NSE", "quantity": 7}
        assert row.response_data == {"status": "success", "orderid": "00007"}
        assert row.created_at == T0  # the offset is honoured and stored in UTC

    async def test_json_fields_are_stored_as_json_not_strings(self, client, db, api):
        path, model = api
        await client.post(path, json=log(1, response_data=[1, "two", None]))
        table = model.__tablename__
        query = (
            f"SELECT jsonb_typeof(request_data), jsonb_typeof(response_data) FROM {table}"
            if BACKEND == "postgresql"
            else f"SELECT json_type(request_data), json_type(response_data) FROM {table}"
        )
        async with db.connect() as conn:
            assert (await conn.execute(text(query))).one() == ("object", "array")
        listed = (await client.get(path)).json()["items"][0]
        assert listed["request_data"]["quantity"] == 1
        assert listed["response_data"] == [1, "two", None]

    async def test_any_json_value_is_accepted(self, client, db, api):
        path, model = api
        response = await client.post(path, json=log(request_data="text", response_data=None))
        assert response.status_code == 201
        [row] = await stored(db, model)
        assert (row.request_data, row.response_data) == ("text", None)

    async def test_batch_returns_ids_in_order(self, client, db, api):
        path, model = api
        response = await client.post(path, json=[log(i) for i in range(25)])
        assert response.status_code == 201
        ids = response.json()["ids"]
        rows = {row.id: row for row in await stored(db, model)}
        assert [rows[i].request_data["quantity"] for i in ids] == list(range(25))

    async def test_bad_item_rejects_the_batch_naming_its_index(self, client, db, api):
        path, model = api
        batch = [log(i) for i in range(5)]
        batch[3] = log(3, api_type="")
        response = await client.post(path, json=batch)
        problem = assert_problem(response, 422, "validation")
        assert problem["errors"][0]["loc"] == ["body", 3, "api_type"]
        assert await stored(db, model) == []

    async def test_missing_field_of_a_single_object(self, client, db, api):
        path, model = api
        body = log()
        del body["response_data"]
        problem = assert_problem(await client.post(path, json=body), 422, "validation")
        assert problem["errors"][0]["loc"] == ["body", "response_data"]
        assert await stored(db, model) == []

    @pytest.mark.parametrize(
        "overrides, field",
        [
            ({"api_type": "x" * 51}, "api_type"),
            ({"created_at": "2026-03-02T09:15:00"}, "created_at"),  # no offset
            ({"unexpected": 1}, "unexpected"),
        ],
    )
    async def test_bad_fields_are_422(self, client, db, api, overrides, field):
        path, model = api
        problem = assert_problem(await client.post(path, json=log(**overrides)), 422)
        assert problem["errors"][0]["loc"] == ["body", field]
        assert await stored(db, model) == []

    async def test_more_than_1000_items_is_413(self, client, db, api):
        path, model = api
        response = await client.post(path, json=[log(i) for i in range(1001)])
        assert_problem(response, 413, "payload-too-large")
        assert await stored(db, model) == []

    async def test_empty_batch_is_422(self, client, db, api):
        path, model = api
        assert_problem(await client.post(path, json=[]), 422, "validation")
        assert await stored(db, model) == []

    async def test_malformed_json_is_400(self, client, db, api):
        path, model = api
        response = await client.post(
            path, content=b'{"api_type": ', headers={"content-type": "application/json"}
        )
        assert_problem(response, 400, "malformed-body")
        assert await stored(db, model) == []

    async def test_read_only_token_is_403(self, client, db, api):
        path, model = api
        response = await client.post(path, json=log(), headers=auth(RO_TOKEN))
        assert_problem(response, 403, "forbidden")
        assert await stored(db, model) == []


class TestListApiLogs:
    async def test_newest_first_with_filters(self, client, db, api):
        path, model = api
        await arrange(
            db,
            model,
            [
                {
                    **log(i, api_type="placeorder" if i % 2 else "quotes"),
                    "created_at": T0 + timedelta(minutes=i),
                }
                for i in range(6)
            ],
        )
        body = (await client.get(path)).json()
        assert [item["request_data"]["quantity"] for item in body["items"]] == [5, 4, 3, 2, 1, 0]
        assert body["next_cursor"] is None

        quotes = (await client.get(path, params={"api_type": "quotes"})).json()["items"]
        assert [i["request_data"]["quantity"] for i in quotes] == [4, 2, 0]

        window = {
            "since": (T0 + timedelta(minutes=1)).isoformat(),
            "until": (T0 + timedelta(minutes=4)).isoformat(),
        }
        items = (await client.get(path, params=window)).json()["items"]
        assert [i["request_data"]["quantity"] for i in items] == [3, 2, 1]

    async def test_cursor_walks_every_row_once_while_rows_arrive(self, client, db, api):
        path, model = api
        # Ties on created_at are broken by id, so equal timestamps still page exactly.
        await arrange(
            db, model, [{**log(i), "created_at": T0 + timedelta(seconds=i // 3)} for i in range(23)]
        )
        seen: list[int] = []
        cursor = None
        while True:
            params = {"limit": 5, **({"cursor": cursor} if cursor else {})}
            body = (await client.get(path, params=params)).json()
            seen += [item["request_data"]["quantity"] for item in body["items"]]
            await client.post(path, json=log(1000 + len(seen)))  # newer than any cursor
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seen == sorted(range(23), reverse=True)

    async def test_limit_above_1000_is_422(self, client, api):
        path, _ = api
        assert_problem(await client.get(path, params={"limit": 1001}), 422, "validation")

    async def test_foreign_cursor_is_422(self, client, api):
        path, _ = api
        problem = assert_problem(await client.get(path, params={"cursor": "bm9wZQ"}), 422)
        assert problem["errors"][0]["loc"] == ["query", "cursor"]


class TestApiLogStats:
    async def test_counts_by_api_type_symbol_and_exchange(self, client, db, api):
        path, model = api
        await arrange(
            db,
            model,
            [
                {**log(1), "created_at": T0},
                {**log(2, request_data={"symbol": "INFY", "exchange": "NSE"}), "created_at": T0},
                {**log(3, api_type="quotes", request_data={"symbol": "INFY"}), "created_at": T0},
                {**log(4, api_type="cancelorder", request_data={"orderid": "9"}), "created_at": T0},
                {
                    **log(5, api_type="funds", request_data=["not", "an", "object"]),
                    "created_at": T0,
                },
                {
                    **log(6, api_type="funds", request_data="text"),
                    "created_at": T0 - timedelta(days=1),
                },
            ],
        )
        response = await client.get(f"{path}/stats")
        assert response.status_code == 200
        assert response.json() == {
            "total": 6,
            "by_api_type": {"placeorder": 2, "quotes": 1, "cancelorder": 1, "funds": 2},
            "by_symbol": {"SBIN": 1, "INFY": 2},
            "by_exchange": {"NSE": 2},
        }
        since = (await client.get(f"{path}/stats", params={"since": T0.isoformat()})).json()
        assert since["total"] == 5
        assert since["by_api_type"]["funds"] == 1

    async def test_empty(self, client, api):
        path, _ = api
        body = (await client.get(f"{path}/stats")).json()
        assert body == {"total": 0, "by_api_type": {}, "by_symbol": {}, "by_exchange": {}}


class TestDeleteApiLogs:
    async def test_before_is_required(self, client, db, api):
        path, model = api
        await arrange(db, model, [{**log(1), "created_at": T0}])
        problem = assert_problem(await client.delete(path), 422, "validation")
        assert problem["errors"][0]["loc"] == ["query", "before"]
        assert len(await stored(db, model)) == 1

    async def test_deletes_older_rows_in_bounded_chunks(self, client, db, api, monkeypatch):
        path, model = api
        monkeypatch.setattr(logs_repo, "RETENTION_CHUNK", 4)
        old = [{**log(i), "created_at": T0 - timedelta(hours=i + 1)} for i in range(10)]
        new = [{**log(100 + i), "created_at": T0 + timedelta(seconds=i)} for i in range(3)]
        await arrange(db, model, [*old, *new])
        engine = client.app.state.store.engine
        with statements(engine) as seen, commits(engine) as committed:
            response = await client.delete(path, params={"before": T0.isoformat()})
        assert response.status_code == 200
        assert response.json() == {"deleted": 10}
        deletes = [s for s in seen if s.lstrip().upper().startswith("DELETE")]
        assert len(deletes) == 3  # 4 + 4 + 2, each in its own transaction
        assert len(committed) >= 3
        remaining = await stored(db, model)
        assert sorted(r.request_data["quantity"] for r in remaining) == [100, 101, 102]

    async def test_concurrent_writes_proceed_during_retention(self, client, db, api, monkeypatch):
        path, model = api
        monkeypatch.setattr(logs_repo, "RETENTION_CHUNK", 10)
        await arrange(
            db, model, [{**log(i), "created_at": T0 - timedelta(hours=1)} for i in range(200)]
        )
        deleted, *posted = await asyncio.gather(
            client.delete(path, params={"before": T0.isoformat()}),
            *(client.post(path, json=log(1000 + i)) for i in range(20)),
        )
        assert deleted.json() == {"deleted": 200}
        assert {r.status_code for r in posted} == {201}
        assert len(await stored(db, model)) == 20
