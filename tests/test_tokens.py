"""GET/POST /api/v1/tokens/lookup: symbol <-> broker token, answered from memory only."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event

from tests.contract import put_contract, row
from tests.support import assert_problem

ROWS = [
    row("RELIANCE", "NSE", brsymbol="RELIANCE-EQ", token="2885"),
    row("NIFTY28NOV2424000CE", "NFO", brsymbol="NIFTY24NOV24000CE", name="NIFTY", token="43512",
        expiry="28-NOV-24", strike=24000.0, lotsize=25, instrumenttype="CE"),
    # The same token on two exchanges (issue #1774 of the reference: keyed by token alone, one
    # of them vanished).
    row("USDINR27NOV24FUT", "CDS", brsymbol="USDINR24NOVFUT", token="2885", lotsize=1000,
        instrumenttype="FUT", tick_size=0.0025, brexchange=None),
]  # fmt: skip

RELIANCE = {
    "symbol": "RELIANCE",
    "brsymbol": "RELIANCE-EQ",
    "exchange": "NSE",
    "brexchange": "NSE",
    "token": "2885",
    "lotsize": 1,
    "tick_size": 0.05,
    "instrumenttype": "EQ",
}
OPTION = {
    "symbol": "NIFTY28NOV2424000CE",
    "brsymbol": "NIFTY24NOV24000CE",
    "exchange": "NFO",
    "brexchange": "NFO",
    "token": "43512",
    "lotsize": 25,
    "tick_size": 0.05,
    "instrumenttype": "CE",
}
FUTURE = {
    "symbol": "USDINR27NOV24FUT",
    "brsymbol": "USDINR24NOVFUT",
    "exchange": "CDS",
    "brexchange": None,
    "token": "2885",
    "lotsize": 1000,
    "tick_size": 0.0025,
    "instrumenttype": "FUT",
}


@contextmanager
def recorded_sql(client: Any) -> Iterator[list[str]]:
    """Collect every statement the app's engine runs meanwhile."""
    statements: list[str] = []
    engine = client.app.state.store.engine.sync_engine

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


class TestLookupOne:
    @pytest.mark.parametrize(
        "params, expected",
        [
            ({"symbol": "RELIANCE", "exchange": "NSE"}, RELIANCE),
            ({"token": "2885", "exchange": "NSE"}, RELIANCE),
            ({"token": "2885", "exchange": "CDS"}, FUTURE),
            ({"brsymbol": "NIFTY24NOV24000CE", "exchange": "NFO"}, OPTION),
            ({"symbol": "NIFTY28NOV2424000CE", "exchange": "NFO"}, OPTION),
        ],
    )
    async def test_each_key_resolves_without_touching_the_database(self, client, params, expected):
        await put_contract(client, ROWS)
        with recorded_sql(client) as statements:
            response = await client.get("/api/v1/tokens/lookup", params=params)
        assert response.status_code == 200
        assert response.json() == expected
        assert statements == []

    @pytest.mark.parametrize(
        "params",
        [
            {"symbol": "RELIANCE", "exchange": "BSE"},
            {"symbol": "reliance", "exchange": "NSE"},
            {"token": "43512", "exchange": "NSE"},
            {"brsymbol": "RELIANCE", "exchange": "NSE"},
        ],
    )
    async def test_unknown_is_404(self, client, params):
        await put_contract(client, ROWS)
        assert_problem(await client.get("/api/v1/tokens/lookup", params=params), 404, "not-found")

    @pytest.mark.parametrize(
        "params, where",
        [
            ({"exchange": "NSE"}, ["query", "symbol"]),
            (
                {"symbol": "RELIANCE", "token": "2885", "exchange": "NSE"},
                ["query", "symbol", "token"],
            ),
            ({"symbol": "RELIANCE"}, ["query", "exchange"]),
            ({"symbol": "RELIANCE", "exchange": ""}, ["query", "exchange"]),
        ],
    )
    async def test_not_exactly_one_key_is_422(self, client, params, where):
        await put_contract(client, ROWS)
        response = await client.get("/api/v1/tokens/lookup", params=params)
        problem = assert_problem(response, 422, "validation")
        assert problem["errors"][0]["loc"] == where

    async def test_a_repeated_token_resolves_to_the_row_ranked_first(self, client):
        """Within one exchange a token may repeat; the shorter symbol wins, whatever the order
        of the upload, so that every instance answers alike."""
        longer = row("SBINLONGNAME", "NSE", token="3045")
        shorter = row("SBIN", "NSE", token="3045")
        for rows in ([longer, shorter], [shorter, longer]):
            await put_contract(client, rows)
            response = await client.get(
                "/api/v1/tokens/lookup", params={"token": "3045", "exchange": "NSE"}
            )
            assert response.json()["symbol"] == "SBIN"

    async def test_a_lookup_after_a_load_sees_the_new_contract(self, client):
        await put_contract(client, ROWS)
        await put_contract(client, [{**ROWS[0], "token": "9999"}])
        response = await client.get(
            "/api/v1/tokens/lookup", params={"symbol": "RELIANCE", "exchange": "NSE"}
        )
        assert response.json()["token"] == "9999"
        gone = await client.get(
            "/api/v1/tokens/lookup", params={"token": "43512", "exchange": "NFO"}
        )
        assert_problem(gone, 404, "not-found")

    async def test_without_an_index_it_is_503_not_a_database_query(self, client):
        await put_contract(client, ROWS)
        holder = client.app.state.store.runtime.symbols
        index, holder.index = holder.index, None
        try:
            with recorded_sql(client) as statements:
                response = await client.get(
                    "/api/v1/tokens/lookup", params={"symbol": "RELIANCE", "exchange": "NSE"}
                )
        finally:
            holder.index = index
        assert_problem(response, 503, "database-unavailable")
        assert statements == []


class TestLookupMany:
    async def test_answers_in_order_with_null_for_unknown(self, client):
        await put_contract(client, ROWS)
        body = {
            "items": [
                {"symbol": "RELIANCE", "exchange": "NSE"},
                {"token": 2885, "exchange": "CDS"},  # a number is taken as its digits
                {"symbol": "NOPE", "exchange": "NSE"},
                {"brsymbol": "NIFTY24NOV24000CE", "exchange": "NFO"},
            ]
        }
        with recorded_sql(client) as statements:
            response = await client.post("/api/v1/tokens/lookup", json=body)
        assert response.status_code == 200
        assert response.json() == {"items": [RELIANCE, FUTURE, None, OPTION]}
        assert statements == []

    async def test_an_empty_batch_answers_an_empty_list(self, client):
        response = await client.post("/api/v1/tokens/lookup", json={"items": []})
        assert response.status_code == 200
        assert response.json() == {"items": []}

    @pytest.mark.parametrize(
        "item, where",
        [
            ({"symbol": "A", "token": "1", "exchange": "NSE"}, ["body", "items", 1]),
            ({"exchange": "NSE"}, ["body", "items", 1]),
            ({"symbol": "A"}, ["body", "items", 1, "exchange"]),
            ({"symbol": "A", "exchange": "NSE", "isin": "X"}, ["body", "items", 1, "isin"]),
        ],
    )
    async def test_a_bad_item_is_422_naming_it(self, client, item, where):
        body = {"items": [{"symbol": "RELIANCE", "exchange": "NSE"}, item]}
        response = await client.post("/api/v1/tokens/lookup", json=body)
        problem = assert_problem(response, 422, "validation")
        assert problem["errors"][0]["loc"] == where

    async def test_more_than_1000_items_is_413(self, client):
        body = {"items": [{"symbol": "RELIANCE", "exchange": "NSE"}] * 1001}
        response = await client.post("/api/v1/tokens/lookup", json=body)
        assert_problem(response, 413, "payload-too-large")

    async def test_1000_items_are_accepted(self, client):
        await put_contract(client, ROWS)
        body = {"items": [{"symbol": "RELIANCE", "exchange": "NSE"}] * 1000}
        response = await client.post("/api/v1/tokens/lookup", json=body)
        assert response.status_code == 200
        assert response.json()["items"] == [RELIANCE] * 1000

    async def test_malformed_json_is_400(self, client):
        response = await client.post(
            "/api/v1/tokens/lookup",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        assert_problem(response, 400, "malformed-body")


async def test_the_statement_recorder_sees_database_work(client):
    """The probe behind "never touches the database" does see statements when there are some."""
    with recorded_sql(client) as statements:
        response = await client.get("/api/v1/settings")
    assert response.status_code == 200
    assert any("platform_settings" in s for s in statements)
