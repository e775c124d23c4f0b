"""strategies and chartink: strategies, their symbol mappings, and the cached by-webhook lookup.

Both families share one implementation, so every shared behaviour runs against both (the
`family` fixture); what only one family has is tested on its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.repositories import strategies as strategies_repo
from tests.conftest import ClientFactory
from tests.support import RO_TOKEN, assert_problem, auth, eventually


@dataclass(frozen=True)
class Family:
    name: str
    path: str
    table: str
    mapping_table: str
    symbol: str  # the mapping's symbol field, on the wire and as a column
    defaults: dict[str, Any] = field(default_factory=dict)  # fields only this family has

    def mapping(self, symbol: str = "RELIANCE", /, **overrides: Any) -> dict[str, Any]:
        return {
            self.symbol: symbol,
            "exchange": "NSE",
            "quantity": 10,
            "product_type": "MIS",
            **overrides,
        }


STRATEGIES = Family(
    "strategies",
    "/api/v1/strategies",
    "strategies",
    "strategy_symbol_mappings",
    "symbol",
    {"platform": "tradingview", "trading_mode": "LONG"},
)
CHARTINK = Family(
    "chartink",
    "/api/v1/chartink/strategies",
    "chartink_strategies",
    "chartink_symbol_mappings",
    "chartink_symbol",
)

INTRADAY = {
    "name": "Momentum",
    "user_id": "alice",
    "start_time": "09:15",
    "end_time": "15:00",
    "squareoff_time": "15:15",
}
STRATEGY_FIELDS = {
    "id",
    "name",
    "webhook_id",
    "user_id",
    "is_active",
    "is_intraday",
    "start_time",
    "end_time",
    "squareoff_time",
    "definition",
    "created_at",
    "updated_at",
}


@pytest.fixture(params=[STRATEGIES, CHARTINK], ids=lambda f: f.name)
def family(request: pytest.FixtureRequest) -> Family:
    return request.param  # type: ignore[no-any-return]


async def create(client: httpx.AsyncClient, family: Family, **fields: Any) -> dict[str, Any]:
    response = await client.post(family.path, json={**INTRADAY, **fields})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def add(
    client: httpx.AsyncClient, family: Family, strategy_id: int, body: Any
) -> list[dict[str, Any]]:
    response = await client.post(f"{family.path}/{strategy_id}/symbols", json=body)
    assert response.status_code == 201, response.text
    return response.json()["items"]  # type: ignore[no-any-return]


async def rows(db: AsyncEngine, table: str, order: str = "id") -> list[dict[str, Any]]:
    async with db.connect() as conn:
        result = await conn.execute(text(f"SELECT * FROM {table} ORDER BY {order}"))
        return [dict(r._mapping) for r in result]


async def execute(db: AsyncEngine, statement: str, **params: Any) -> None:
    async with db.begin() as conn:
        await conn.execute(text(statement), params)


async def insert_strategy(db: AsyncEngine, family: Family, symbols: Sequence[str] = ("A",)) -> str:
    """A strategy and its mappings, written directly (no notification); returns its webhook id."""
    values = {
        **INTRADAY,
        **family.defaults,
        "webhook_id": str(uuid.uuid4()),
        "is_active": True,
        "is_intraday": True,
    }
    async with db.begin() as conn:
        strategy_id = (
            await conn.execute(
                text(
                    f"INSERT INTO {family.table} ({', '.join(values)}, updated_at)"
                    f" VALUES ({', '.join(':' + c for c in values)}, CURRENT_TIMESTAMP)"
                    " RETURNING id"
                ),
                values,
            )
        ).scalar_one()
        await conn.execute(
            text(
                f"INSERT INTO {family.mapping_table} (strategy_id, {family.symbol}, exchange,"
                " quantity, product_type) VALUES (:id, :symbol, 'NSE', 1, 'MIS')"
            ),
            [{"id": strategy_id, "symbol": symbol} for symbol in symbols],
        )
    return values["webhook_id"]


class TestCreateStrategy:
    async def test_created_with_a_uuid4_webhook_id(self, client, db, family):
        response = await client.post(family.path, json=INTRADAY)
        assert response.status_code == 201
        body = response.json()
        assert set(body) == STRATEGY_FIELDS | set(family.defaults)
        assert body == {
            **INTRADAY,
            **family.defaults,
            "id": body["id"],
            "webhook_id": body["webhook_id"],
            "is_active": True,
            "is_intraday": True,
            "definition": None,
            "created_at": body["created_at"],
            "updated_at": body["updated_at"],
        }
        assert uuid.UUID(body["webhook_id"]).version == 4
        assert datetime.fromisoformat(body["created_at"]).utcoffset() is not None
        [row] = await rows(db, family.table)
        assert row["id"] == body["id"] and row["webhook_id"] == body["webhook_id"]
        assert row["name"] == "Momentum" and row["squareoff_time"] == "15:15"

    async def test_every_strategy_gets_its_own_webhook_id(self, client, family):
        webhook_ids = {(await create(client, family))["webhook_id"] for _ in range(5)}
        assert len(webhook_ids) == 5

    async def test_a_positional_strategy_needs_no_times(self, client, family):
        body = await create(
            client,
            family,
            is_intraday=False,
            start_time=None,
            end_time=None,
            squareoff_time=None,
        )
        assert body["is_intraday"] is False and body["start_time"] is None

    async def test_end_may_equal_squareoff(self, client, family):
        body = await create(client, family, end_time="15:15", squareoff_time="15:15")
        assert body["end_time"] == body["squareoff_time"] == "15:15"

    @pytest.mark.parametrize(
        "change, field",
        [
            ({"name": ""}, "name"),
            ({"name": "   "}, "name"),
            ({"name": "x" * 256}, "name"),
            ({"user_id": None}, "user_id"),
            ({"user_id": ""}, "user_id"),
            ({"start_time": "9:15"}, "start_time"),
            ({"start_time": "24:00"}, "start_time"),
            ({"end_time": "12:60"}, "end_time"),
            ({"squareoff_time": "15:15:00"}, "squareoff_time"),
            ({"start_time": None}, "start_time"),
            ({"squareoff_time": None}, "squareoff_time"),
            ({"start_time": "15:00"}, "end_time"),  # start == end
            ({"start_time": "15:01"}, "end_time"),  # start after end
            ({"squareoff_time": "14:59"}, "squareoff_time"),  # squareoff before end
            ({"is_intraday": "sometimes"}, "is_intraday"),
            ({"webhook_id": str(uuid.uuid4())}, "webhook_id"),  # the service makes it
            ({"colour": "red"}, "colour"),
        ],
    )
    async def test_bad_input_is_422_naming_the_field_and_writes_nothing(
        self, client, db, family, change, field
    ):
        body = {**INTRADAY, **change}
        if change.get("user_id", "") is None:
            del body["user_id"]
        response = await client.post(family.path, json=body)
        problem = assert_problem(response, 422, "validation")
        assert problem["errors"][0]["loc"] == ["body", field]
        assert await rows(db, family.table) == []

    @pytest.mark.parametrize(
        "change, field",
        [
            ({"platform": "telegram"}, "platform"),
            ({"trading_mode": "long"}, "trading_mode"),
            ({"trading_mode": "SIDEWAYS"}, "trading_mode"),
        ],
    )
    async def test_strategies_check_platform_and_trading_mode(self, client, db, change, field):
        response = await client.post(STRATEGIES.path, json={**INTRADAY, **change})
        problem = assert_problem(response, 422, "validation")
        assert problem["errors"][0]["loc"] == ["body", field]
        assert await rows(db, STRATEGIES.table) == []

    async def test_strategies_take_platform_and_trading_mode(self, client):
        body = await create(client, STRATEGIES, platform="amibroker", trading_mode="BOTH")
        assert body["platform"] == "amibroker" and body["trading_mode"] == "BOTH"

    @pytest.mark.parametrize("extra", [{"platform": "tradingview"}, {"trading_mode": "LONG"}])
    async def test_chartink_has_no_platform_or_trading_mode(self, client, db, extra):
        response = await client.post(CHARTINK.path, json={**INTRADAY, **extra})
        problem = assert_problem(response, 422, "validation")
        assert problem["errors"][0]["loc"] == ["body", next(iter(extra))]
        assert await rows(db, CHARTINK.table) == []

    async def test_read_only_token_cannot_create(self, client, db, family):
        response = await client.post(family.path, json=INTRADAY, headers=auth(RO_TOKEN))
        assert_problem(response, 403, "forbidden")
        assert await rows(db, family.table) == []


class TestListStrategies:
    async def test_empty(self, client, family):
        response = await client.get(family.path)
        assert response.status_code == 200
        assert response.json() == {"items": []}

    async def test_lists_in_creation_order_with_symbols(self, client, family):
        first = await create(client, family, name="First")
        second = await create(client, family, name="Second")
        mappings = await add(
            client, family, second["id"], [family.mapping("A"), family.mapping("B")]
        )
        response = await client.get(family.path)
        assert response.status_code == 200
        items = response.json()["items"]
        assert [i["id"] for i in items] == [first["id"], second["id"]]
        assert items[0] == {**first, "symbols": []}
        assert items[1] == {**second, "symbols": mappings}

    async def test_filters_by_user_and_active_flag(self, client, family):
        alice_on = await create(client, family, user_id="alice")
        alice_off = await create(client, family, user_id="alice", is_active=False)
        bob_on = await create(client, family, user_id="bob")

        async def ids(**params: Any) -> list[int]:
            response = await client.get(family.path, params=params)
            assert response.status_code == 200
            return [i["id"] for i in response.json()["items"]]

        assert await ids(user_id="alice") == [alice_on["id"], alice_off["id"]]
        assert await ids(is_active="true") == [alice_on["id"], bob_on["id"]]
        assert await ids(user_id="alice", is_active="false") == [alice_off["id"]]
        assert await ids(user_id="carol") == []

    async def test_bad_filter_is_422(self, client, family):
        response = await client.get(family.path, params={"is_active": "perhaps"})
        problem = assert_problem(response, 422, "validation")
        assert problem["errors"][0]["loc"] == ["query", "is_active"]


class TestGetStrategy:
    async def test_with_its_symbols_in_order(self, client, family):
        strategy = await create(client, family)
        mappings = await add(
            client, family, strategy["id"], [family.mapping("TCS"), family.mapping("INFY")]
        )
        response = await client.get(f"{family.path}/{strategy['id']}")
        assert response.status_code == 200
        assert response.json() == {**strategy, "symbols": mappings}
        assert [m[family.symbol] for m in mappings] == ["TCS", "INFY"]

    async def test_missing_is_404(self, client, family):
        assert_problem(await client.get(f"{family.path}/12345"), 404, "not-found")

    @pytest.mark.parametrize("bad_id", ["0", "abc", str(2**31)])
    async def test_impossible_id_is_422(self, client, family, bad_id):
        response = await client.get(f"{family.path}/{bad_id}")
        problem = assert_problem(response, 422, "validation")
        assert problem["errors"][0]["loc"] == ["path", "strategy_id"]

    async def test_the_families_are_separate(self, client):
        strategy = await create(client, STRATEGIES)
        assert_problem(await client.get(f"{CHARTINK.path}/{strategy['id']}"), 404, "not-found")


class TestUpdateStrategy:
    async def test_partial_update_keeps_the_rest(self, client, db, family):
        strategy = await create(client, family)
        response = await client.patch(
            f"{family.path}/{strategy['id']}", json={"name": "Renamed", "is_active": False}
        )
        assert response.status_code == 200
        body = response.json()
        assert body == {
            **strategy,
            "name": "Renamed",
            "is_active": False,
            "updated_at": body["updated_at"],
        }
        assert datetime.fromisoformat(body["updated_at"]) >= datetime.fromisoformat(
            strategy["updated_at"]
        )
        [row] = await rows(db, family.table)
        assert row["name"] == "Renamed" and not row["is_active"]

    async def test_times_checked_against_the_merged_result(self, client, db, family):
        strategy = await create(client, family)  # 09:15 / 15:00 / 15:15
        url = f"{family.path}/{strategy['id']}"
        # Valid only together: end moves past the old squareoff, squareoff follows it.
        response = await client.patch(url, json={"end_time": "15:20", "squareoff_time": "15:25"})
        assert response.status_code == 200
        assert response.json()["end_time"] == "15:20"

        alone = await client.patch(url, json={"end_time": "15:30"})
        problem = assert_problem(alone, 422, "validation")
        assert problem["errors"][0]["loc"] == ["body", "squareoff_time"]

        before_start = await client.patch(url, json={"end_time": "09:00"})
        assert assert_problem(before_start, 422)["errors"][0]["loc"] == ["body", "end_time"]
        [row] = await rows(db, family.table)
        assert (row["start_time"], row["end_time"], row["squareoff_time"]) == (
            "09:15",
            "15:20",
            "15:25",
        )

    async def test_becoming_intraday_needs_the_times(self, client, db, family):
        strategy = await create(
            client, family, is_intraday=False, start_time=None, end_time=None, squareoff_time=None
        )
        url = f"{family.path}/{strategy['id']}"
        problem = assert_problem(await client.patch(url, json={"is_intraday": True}), 422)
        assert problem["errors"][0]["loc"] == ["body", "start_time"]
        assert not (await rows(db, family.table))[0]["is_intraday"]

        response = await client.patch(
            url,
            json={
                "is_intraday": True,
                "start_time": "10:00",
                "end_time": "14:00",
                "squareoff_time": "14:30",
            },
        )
        assert response.status_code == 200
        assert response.json()["is_intraday"] is True

    async def test_clearing_a_time_of_an_intraday_strategy_is_422(self, client, db, family):
        strategy = await create(client, family)
        response = await client.patch(f"{family.path}/{strategy['id']}", json={"end_time": None})
        assert assert_problem(response, 422)["errors"][0]["loc"] == ["body", "end_time"]
        assert (await rows(db, family.table))[0]["end_time"] == "15:00"

    @pytest.mark.parametrize(
        "body, field",
        [
            ({"name": None}, "name"),
            ({"name": ""}, "name"),
            ({"is_active": None}, "is_active"),
            ({"start_time": "25:00"}, "start_time"),
            ({"user_id": "mallory"}, "user_id"),
            ({"webhook_id": str(uuid.uuid4())}, "webhook_id"),
        ],
    )
    async def test_bad_input_is_422_and_writes_nothing(self, client, db, family, body, field):
        strategy = await create(client, family)
        before = await rows(db, family.table)
        response = await client.patch(f"{family.path}/{strategy['id']}", json=body)
        problem = assert_problem(response, 422, "validation")
        assert field in str(problem["errors"])
        assert await rows(db, family.table) == before

    async def test_trading_mode_is_a_strategies_field(self, client, db):
        strategy = await create(client, STRATEGIES)
        response = await client.patch(
            f"{STRATEGIES.path}/{strategy['id']}", json={"trading_mode": "SHORT"}
        )
        assert response.status_code == 200 and response.json()["trading_mode"] == "SHORT"
        bad = await client.patch(f"{STRATEGIES.path}/{strategy['id']}", json={"trading_mode": None})
        assert assert_problem(bad, 422)["errors"][0]["loc"][0] == "body"

        chartink = await create(client, CHARTINK)
        response = await client.patch(
            f"{CHARTINK.path}/{chartink['id']}", json={"trading_mode": "SHORT"}
        )
        assert assert_problem(response, 422)["errors"][0]["loc"] == ["body", "trading_mode"]

    async def test_missing_is_404(self, client, family):
        response = await client.patch(f"{family.path}/999", json={"name": "x"})
        assert_problem(response, 404, "not-found")


class TestDeleteStrategy:
    async def test_deletes_it_and_its_mappings(self, client, db, family):
        keep = await create(client, family)
        kept = await add(client, family, keep["id"], family.mapping("KEEP"))
        gone = await create(client, family)
        await add(client, family, gone["id"], [family.mapping("A"), family.mapping("B")])

        response = await client.delete(f"{family.path}/{gone['id']}")
        assert response.status_code == 204
        assert response.content == b""
        assert [r["id"] for r in await rows(db, family.table)] == [keep["id"]]
        assert [r["id"] for r in await rows(db, family.mapping_table)] == [kept[0]["id"]]
        assert_problem(await client.get(f"{family.path}/{gone['id']}"), 404)
        assert_problem(await client.delete(f"{family.path}/{gone['id']}"), 404)

    async def test_the_database_cascades_on_its_own(self, client, db, family):
        strategy = await create(client, family)
        await add(client, family, strategy["id"], family.mapping())
        await execute(db, f"DELETE FROM {family.table} WHERE id = :id", id=strategy["id"])
        assert await rows(db, family.mapping_table) == []

    async def test_a_webhook_id_is_never_reused(self, client, family):
        first = await create(client, family)
        await client.delete(f"{family.path}/{first['id']}")
        second = await create(client, family)
        assert second["webhook_id"] != first["webhook_id"]
        response = await client.get(f"{family.path}/by-webhook/{first['webhook_id']}")
        assert_problem(response, 404)


class TestSymbols:
    async def test_add_one(self, client, db, family):
        strategy = await create(client, family)
        response = await client.post(
            f"{family.path}/{strategy['id']}/symbols", json=family.mapping("SBIN", quantity=5)
        )
        assert response.status_code == 201
        [item] = response.json()["items"]
        assert item == {
            "id": item["id"],
            "strategy_id": strategy["id"],
            family.symbol: "SBIN",
            "exchange": "NSE",
            "quantity": 5,
            "product_type": "MIS",
        }
        [row] = await rows(db, family.mapping_table)
        assert row[family.symbol] == "SBIN" and row["strategy_id"] == strategy["id"]

    async def test_add_a_batch_and_list_it(self, client, family):
        strategy = await create(client, family)
        batch = [
            family.mapping("SBIN"),
            family.mapping("SBIN", exchange="BSE"),  # same symbol, other exchange
            family.mapping("NIFTY24DECFUT", exchange="NFO", product_type="NRML", quantity=50),
            family.mapping("TCS", product_type="CNC"),
        ]
        items = await add(client, family, strategy["id"], batch)
        assert [{k: i[k] for k in batch[0]} for i in items] == batch
        listed = await client.get(f"{family.path}/{strategy['id']}/symbols")
        assert listed.status_code == 200
        assert listed.json() == {"items": items}

    async def test_duplicate_of_an_existing_mapping_is_409_and_writes_nothing(
        self, client, db, family
    ):
        strategy = await create(client, family)
        await add(client, family, strategy["id"], family.mapping("SBIN"))
        before = await rows(db, family.mapping_table)
        response = await client.post(
            f"{family.path}/{strategy['id']}/symbols",
            json=[family.mapping("TCS"), family.mapping("SBIN", quantity=99)],
        )
        problem = assert_problem(response, 409, "conflict")
        assert "Item 1" in problem["detail"]
        assert await rows(db, family.mapping_table) == before

    async def test_duplicate_inside_the_batch_is_409_and_writes_nothing(self, client, db, family):
        strategy = await create(client, family)
        response = await client.post(
            f"{family.path}/{strategy['id']}/symbols",
            json=[family.mapping("TCS"), family.mapping("INFY"), family.mapping("TCS")],
        )
        problem = assert_problem(response, 409, "conflict")
        assert "0 and 2" in problem["detail"]
        assert await rows(db, family.mapping_table) == []

    async def test_the_same_symbol_may_map_to_two_strategies(self, client, family):
        one = await create(client, family)
        two = await create(client, family)
        await add(client, family, one["id"], family.mapping("SBIN"))
        await add(client, family, two["id"], family.mapping("SBIN"))

    @pytest.mark.parametrize(
        "change, field",
        [
            ({"quantity": 0}, "quantity"),
            ({"quantity": -5}, "quantity"),
            ({"quantity": 2**31}, "quantity"),
            ({"quantity": "ten"}, "quantity"),
            ({"product_type": "BO"}, "product_type"),
            ({"product_type": "mis"}, "product_type"),
            ({"exchange": ""}, "exchange"),
            ({"exchange": "X" * 21}, "exchange"),
            ({"SYMBOL": ""}, "SYMBOL"),
            ({"SYMBOL": "S" * 51}, "SYMBOL"),
            ({"strategy_id": 5}, "strategy_id"),
        ],
    )
    async def test_a_bad_item_is_422_naming_its_index_and_writes_nothing(
        self, client, db, family, change, field
    ):
        if "SYMBOL" in change:
            change = {family.symbol: change["SYMBOL"]}
            field = family.symbol
        strategy = await create(client, family)
        batch = [family.mapping("TCS"), family.mapping("INFY", **change)]
        response = await client.post(f"{family.path}/{strategy['id']}/symbols", json=batch)
        problem = assert_problem(response, 422, "validation")
        assert problem["errors"][0]["loc"] == ["body", 1, field]
        assert await rows(db, family.mapping_table) == []

    async def test_a_bad_single_mapping_is_item_0(self, client, db, family):
        strategy = await create(client, family)
        response = await client.post(
            f"{family.path}/{strategy['id']}/symbols", json=family.mapping(quantity=0)
        )
        assert assert_problem(response, 422)["errors"][0]["loc"] == ["body", 0, "quantity"]
        assert await rows(db, family.mapping_table) == []

    async def test_the_other_familys_symbol_field_is_rejected(self, client, db, family):
        strategy = await create(client, family)
        other = "chartink_symbol" if family.symbol == "symbol" else "symbol"
        body = {other: "SBIN", "exchange": "NSE", "quantity": 1, "product_type": "MIS"}
        response = await client.post(f"{family.path}/{strategy['id']}/symbols", json=body)
        locs = [e["loc"] for e in assert_problem(response, 422)["errors"]]
        assert ["body", 0, family.symbol] in locs and ["body", 0, other] in locs
        assert await rows(db, family.mapping_table) == []

    @pytest.mark.parametrize("body", [[], 7, "SBIN"])
    async def test_not_a_mapping_is_422(self, client, db, family, body):
        strategy = await create(client, family)
        response = await client.post(f"{family.path}/{strategy['id']}/symbols", json=body)
        assert_problem(response, 422, "validation")
        assert await rows(db, family.mapping_table) == []

    async def test_more_than_1000_is_413_and_writes_nothing(self, client, db, family):
        strategy = await create(client, family)
        batch = [family.mapping(f"S{i}") for i in range(1001)]
        response = await client.post(f"{family.path}/{strategy['id']}/symbols", json=batch)
        assert_problem(response, 413, "payload-too-large")
        assert await rows(db, family.mapping_table) == []

    async def test_1000_is_accepted(self, client, db, family):
        strategy = await create(client, family)
        items = await add(
            client, family, strategy["id"], [family.mapping(f"S{i}") for i in range(1000)]
        )
        assert len(items) == len({i["id"] for i in items}) == 1000
        assert len(await rows(db, family.mapping_table)) == 1000

    async def test_missing_strategy_is_404(self, client, db, family):
        response = await client.post(f"{family.path}/4242/symbols", json=family.mapping())
        assert_problem(response, 404, "not-found")
        assert_problem(await client.get(f"{family.path}/4242/symbols"), 404, "not-found")
        assert await rows(db, family.mapping_table) == []

    async def test_delete_one(self, client, db, family):
        strategy = await create(client, family)
        first, second = await add(
            client, family, strategy["id"], [family.mapping("A"), family.mapping("B")]
        )
        url = f"{family.path}/{strategy['id']}/symbols/{first['id']}"
        response = await client.delete(url)
        assert response.status_code == 204
        assert [r["id"] for r in await rows(db, family.mapping_table)] == [second["id"]]
        assert_problem(await client.delete(url), 404, "not-found")

    async def test_delete_through_another_strategy_is_404(self, client, db, family):
        owner = await create(client, family)
        other = await create(client, family)
        [mapping] = await add(client, family, owner["id"], family.mapping())
        response = await client.delete(f"{family.path}/{other['id']}/symbols/{mapping['id']}")
        assert_problem(response, 404, "not-found")
        assert len(await rows(db, family.mapping_table)) == 1
        response = await client.delete(f"{family.path}/999/symbols/{mapping['id']}")
        assert_problem(response, 404, "not-found")


class TestByWebhook:
    async def test_the_strategy_with_its_symbols(self, client, family):
        strategy = await create(client, family)
        await add(client, family, strategy["id"], [family.mapping("A"), family.mapping("B")])
        response = await client.get(f"{family.path}/by-webhook/{strategy['webhook_id']}")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json() == (await client.get(f"{family.path}/{strategy['id']}")).json()

    async def test_answers_from_memory(self, client, db, family):
        strategy = await create(client, family)
        url = f"{family.path}/by-webhook/{strategy['webhook_id']}"
        assert (await client.get(url)).json()["name"] == "Momentum"
        # Changed behind the service's back: only the uncached read sees it.
        await execute(db, f"UPDATE {family.table} SET name = 'Edited'")
        assert (await client.get(url)).json()["name"] == "Momentum"
        assert (await client.get(f"{family.path}/{strategy['id']}")).json()["name"] == "Edited"

    @pytest.mark.parametrize("change", ["patch", "add", "delete_symbol", "delete_strategy"])
    async def test_every_change_is_seen_at_once(self, client, db, family, change):
        strategy = await create(client, family)
        [mapping] = await add(client, family, strategy["id"], family.mapping("A"))
        url = f"{family.path}/by-webhook/{strategy['webhook_id']}"
        before = (await client.get(url)).json()  # now cached
        base = f"{family.path}/{strategy['id']}"
        if change == "patch":
            assert (await client.patch(base, json={"is_active": False})).status_code == 200
            assert (await client.get(url)).json()["is_active"] is False
        elif change == "add":
            await add(client, family, strategy["id"], family.mapping("B"))
            symbols = (await client.get(url)).json()["symbols"]
            assert [s[family.symbol] for s in symbols] == ["A", "B"]
        elif change == "delete_symbol":
            await client.delete(f"{base}/symbols/{mapping['id']}")
            assert (await client.get(url)).json() == {**before, "symbols": []}
        else:
            await client.delete(base)
            assert_problem(await client.get(url), 404, "not-found")

    async def test_a_rejected_change_keeps_the_cached_answer(self, client, db, family):
        # Arranged in SQL: a write through the service would notify, and on PostgreSQL its
        # echo could invalidate the entry at any later moment.
        webhook_id = await insert_strategy(db, family)
        url = f"{family.path}/by-webhook/{webhook_id}"
        before = (await client.get(url)).json()
        runtime = client.app.state.store.runtime
        lookup = (
            runtime.strategy_webhooks if family.name == "strategies" else runtime.chartink_webhooks
        )
        cache = lookup.entries
        misses = cache.misses
        duplicate = await client.post(
            f"{family.path}/{before['id']}/symbols", json=family.mapping("A")
        )
        assert_problem(duplicate, 409)
        bad_times = await client.patch(f"{family.path}/{before['id']}", json={"end_time": "23:59"})
        assert_problem(bad_times, 422)
        assert (await client.get(url)).json() == before
        assert cache.misses == misses  # served from memory throughout

    async def test_a_change_during_a_fill_is_not_overwritten(self, client, db, family, monkeypatch):
        """A read that raced a committed change must not store what it read."""
        strategy = await create(client, family)
        url = f"{family.path}/by-webhook/{strategy['webhook_id']}"
        state = client.app.state.store
        original = strategies_repo.get_detail_by_webhook

        async def read_then_change_lands(*args: Any, **kwargs: Any) -> Any:
            row = await original(*args, **kwargs)
            # What a concurrent PATCH does after this read: commit, then invalidate.
            await execute(db, f"UPDATE {family.table} SET name = 'Changed'")
            state.bus.dispatch(f"{family.name}.by-webhook", strategy["webhook_id"])
            return row

        monkeypatch.setattr(strategies_repo, "get_detail_by_webhook", read_then_change_lands)
        assert (await client.get(url)).json()["name"] == "Momentum"  # read before the change
        monkeypatch.setattr(strategies_repo, "get_detail_by_webhook", original)
        assert (await client.get(url)).json()["name"] == "Changed"

    async def test_unknown_webhook_is_404(self, client, family):
        response = await client.get(f"{family.path}/by-webhook/{uuid.uuid4()}")
        assert_problem(response, 404, "not-found")
        too_long = await client.get(f"{family.path}/by-webhook/{'x' * 37}")
        assert_problem(too_long, 422, "validation")

    async def test_a_strategy_created_after_a_miss_is_found(self, client, family):
        missing = await client.get(f"{family.path}/by-webhook/{uuid.uuid4()}")
        assert_problem(missing, 404)
        strategy = await create(client, family)
        found = await client.get(f"{family.path}/by-webhook/{strategy['webhook_id']}")
        assert found.status_code == 200 and found.json()["id"] == strategy["id"]

    async def test_read_only_token_may_resolve(self, client, family):
        strategy = await create(client, family)
        response = await client.get(
            f"{family.path}/by-webhook/{strategy['webhook_id']}", headers=auth(RO_TOKEN)
        )
        assert response.status_code == 200

    @pytest.mark.postgres_only
    @pytest.mark.parametrize("change", ["patch", "add", "delete_symbol", "delete_strategy"])
    async def test_a_change_through_one_instance_reaches_another(
        self, client_factory: ClientFactory, family, change
    ):
        one = await client_factory()
        two = await client_factory()
        strategy = await create(one, family)
        [mapping] = await add(one, family, strategy["id"], family.mapping("A"))
        url = f"{family.path}/by-webhook/{strategy['webhook_id']}"
        assert (await two.get(url)).json()["is_active"] is True  # cached by two
        base = f"{family.path}/{strategy['id']}"
        if change == "patch":
            await one.patch(base, json={"is_active": False})
            expected = lambda r: r.status_code == 200 and r.json()["is_active"] is False  # noqa: E731
        elif change == "add":
            await add(one, family, strategy["id"], family.mapping("B"))
            expected = lambda r: len(r.json()["symbols"]) == 2  # noqa: E731
        elif change == "delete_symbol":
            await one.delete(f"{base}/symbols/{mapping['id']}")
            expected = lambda r: r.json()["symbols"] == []  # noqa: E731
        else:
            await one.delete(base)
            expected = lambda r: r.status_code == 404  # noqa: E731

        async def seen() -> bool:
            return bool(expected(await two.get(url)))

        assert await eventually(seen)


class TestOpenAPI:
    async def test_every_route_is_documented(self, client, family):
        schema = (await client.get("/openapi.json")).json()
        prefix = family.path
        expected = {
            prefix: {"get": {"200"}, "post": {"201"}},
            f"{prefix}/by-webhook/{{webhook_id}}": {"get": {"200", "404"}},
            f"{prefix}/{{strategy_id}}": {
                "get": {"200", "404"},
                "patch": {"200", "404"},
                "delete": {"204", "404"},
            },
            f"{prefix}/{{strategy_id}}/symbols": {
                "get": {"200", "404"},
                "post": {"201", "404", "409", "413"},
            },
            f"{prefix}/{{strategy_id}}/symbols/{{mapping_id}}": {"delete": {"204", "404"}},
        }
        for path, operations in expected.items():
            assert set(schema["paths"][path]) == set(operations), path
            for method, statuses in operations.items():
                operation = schema["paths"][path][method]
                assert operation["description"], (path, method)
                assert statuses | {"401", "403", "422"} <= set(operation["responses"])

    async def test_chartink_names_its_symbol_field_on_the_wire(self, client):
        components = (await client.get("/openapi.json")).json()["components"]["schemas"]
        for name in ("ChartinkSymbolMappingCreate", "ChartinkSymbolMappingRead"):
            assert "chartink_symbol" in components[name]["properties"]
            assert "symbol" not in components[name]["properties"]
        assert "platform" not in components["ChartinkStrategyRead"]["properties"]
        assert {"platform", "trading_mode"} <= set(components["StrategyRead"]["properties"])
