"""POST /api/v1/orders/context (and its basket form) and /orders/record: one round trip per order,
answered from the caches the separate calls use, and an order's two rows written as one."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import ClientFactory
from tests.contract import put_contract, row
from tests.support import RO_TOKEN, RW_TOKEN, add_users, assert_problem, auth, eventually
from tests.test_fastlane import Lanes
from tests.test_group_commit import table_write_lock
from tests.test_group_commit_isolation import (
    Poison,
    poison,  # noqa: F401 (a fixture used here)
)

CONTEXT = "/api/v1/orders/context"
BASKET = "/api/v1/orders/context/batch"
RECORD = "/api/v1/orders/record"
VERIFY = "/api/v1/auth/api-keys/verify"
TOKEN = {"auth_token": "broker-auth-1", "feed_token": "broker-feed-1", "broker": "zerodha"}

ROWS = [
    row("RELIANCE", "NSE", brsymbol="RELIANCE-EQ", token="2885", name="RELIANCE INDUSTRIES"),
    row("NIFTY28NOV2424000CE", "NFO", brsymbol="NIFTY24NOV24000CE", name="NIFTY", token="43512",
        expiry="28-NOV-24", strike=24000.0, lotsize=25, instrumenttype="CE", brexchange="NFO"),
    row("USDINR27NOV24FUT", "CDS", brsymbol="USDINR24NOVFUT", name="USDINR", token="2885",
        lotsize=1000, instrumenttype="FUT", tick_size=0.0025, brexchange=None,
        expiry="27-NOV-24"),
]  # fmt: skip

RELIANCE = {
    "symbol": "RELIANCE",
    "brsymbol": "RELIANCE-EQ",
    "name": "RELIANCE INDUSTRIES",
    "exchange": "NSE",
    "brexchange": "NSE",
    "token": "2885",
    "expiry": None,
    "strike": None,
    "lotsize": 1,
    "instrumenttype": "EQ",
    "tick_size": 0.05,
}
OPTION = {
    "symbol": "NIFTY28NOV2424000CE",
    "brsymbol": "NIFTY24NOV24000CE",
    "name": "NIFTY",
    "exchange": "NFO",
    "brexchange": "NFO",
    "token": "43512",
    "expiry": "28-NOV-24",
    "strike": 24000.0,
    "lotsize": 25,
    "instrumenttype": "CE",
    "tick_size": 0.05,
}
FUTURE = {
    "symbol": "USDINR27NOV24FUT",
    "brsymbol": "USDINR24NOVFUT",
    "name": "USDINR",
    "exchange": "CDS",
    "brexchange": None,
    "token": "2885",
    "expiry": "27-NOV-24",
    "strike": None,
    "lotsize": 1000,
    "instrumenttype": "FUT",
    "tick_size": 0.0025,
}


async def _arrange(client: httpx.AsyncClient, db: AsyncEngine, *, token: bool = True) -> str:
    """Alice with an API key (and, with `token`, a broker token), and the contract; her key."""
    await add_users(db, "alice")
    response = await client.put("/api/v1/auth/api-keys/alice", json={})
    assert response.status_code == 200
    if token:
        assert (await client.put("/api/v1/auth/broker-tokens/alice", json=TOKEN)).is_success
    assert (await put_contract(client, ROWS)).status_code == 200
    return str(response.json()["api_key"])


@pytest.fixture
async def key(client, db) -> str:
    return await _arrange(client, db)


def _context(key: str, symbol: str = "RELIANCE", exchange: str = "NSE", **flags: bool) -> Any:
    return {"api_key": key, "symbol": symbol, "exchange": exchange, **flags}


def _basket(key: str, items: list[tuple[str, str]], **flags: bool) -> Any:
    return {"api_key": key, "items": [{"symbol": s, "exchange": e} for s, e in items], **flags}


@contextmanager
def recorded_sql(client: Any) -> Iterator[list[str]]:
    """Every statement the app's engine runs meanwhile (BEGIN/COMMIT/ROLLBACK aside)."""
    statements: list[str] = []
    engine = client.app.state.store.engine

    def on_execute(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        if not statement.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK")):
            statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", on_execute)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", on_execute)


async def _separate(client: httpx.AsyncClient, key: str, symbol: str, exchange: str) -> Any:
    """What the separate calls answer: (verify status, verify body, lookup status, lookup body,
    analyze mode)."""
    verify = await client.post(VERIFY, json={"api_key": key, "include_auth": True})
    lookup = await client.get(f"/api/v1/symbols/{exchange}/{symbol}")
    settings = await client.get("/api/v1/settings")
    return verify, lookup, settings.json()["analyze_mode"]


async def _agree(client: httpx.AsyncClient, key: str, symbol: str, exchange: str) -> Any:
    """The context and the separate calls it replaces, asked the same; asserts they agree and
    returns the context's response."""
    context = await client.post(CONTEXT, json=_context(key, symbol, exchange, include_auth=True))
    verify, lookup, analyze = await _separate(client, key, symbol, exchange)
    if verify.status_code != 200:
        assert context.status_code == verify.status_code
        assert context.json()["type"] == verify.json()["type"]
        return context
    if lookup.status_code != 200:
        assert_problem(context, 404, "symbol-unknown")
        assert lookup.status_code == 404
        return context
    assert context.status_code == 200, context.text
    assert context.json() == {
        **verify.json(),
        "analyze_mode": analyze,
        "instrument": lookup.json(),
    }
    return context


# --- POST /orders/context ----------------------------------------------------------------------


class TestContext:
    async def test_every_field_without_broker_tokens(self, client, key):
        response = await client.post(CONTEXT, json=_context(key))
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {
            "user_id": "alice",
            "order_mode": "auto",
            "broker": "zerodha",
            "broker_token": "active",
            "analyze_mode": False,
            "instrument": RELIANCE,
        }

    async def test_every_field_with_both_broker_tokens(self, client, key):
        body = _context(
            key, "NIFTY28NOV2424000CE", "NFO", include_auth=True, include_feed_token=True
        )
        response = await client.post(CONTEXT, json=body)
        assert response.status_code == 200
        assert response.json() == {
            "user_id": "alice",
            "order_mode": "auto",
            "broker": "zerodha",
            "broker_token": "active",
            "analyze_mode": False,
            "auth_token": "broker-auth-1",
            "feed_token": "broker-feed-1",
            "instrument": OPTION,
        }

    async def test_only_the_token_asked_for(self, client, key):
        response = await client.post(CONTEXT, json=_context(key, include_feed_token=True))
        assert response.status_code == 200
        assert "auth_token" not in response.json()
        assert response.json()["feed_token"] == "broker-feed-1"

    async def test_an_absent_feed_token_is_null(self, client, db):
        key = await _arrange(client, db, token=False)
        stored = await client.put(
            "/api/v1/auth/broker-tokens/alice", json={"auth_token": "a", "broker": "angel"}
        )
        assert stored.status_code == 200
        response = await client.post(CONTEXT, json=_context(key, include_feed_token=True))
        assert response.status_code == 200
        assert response.json()["feed_token"] is None
        assert response.json()["broker"] == "angel"

    async def test_null_fields_of_the_instrument(self, client, key):
        response = await client.post(CONTEXT, json=_context(key, "USDINR27NOV24FUT", "CDS"))
        assert response.status_code == 200
        assert response.json()["instrument"] == FUTURE

    async def test_without_broker_token_the_state_says_so_unless_tokens_are_asked_for(
        self, client, db
    ):
        key = await _arrange(client, db, token=False)
        response = await client.post(CONTEXT, json=_context(key))
        assert response.status_code == 200
        assert response.json() == {
            "user_id": "alice",
            "order_mode": "auto",
            "broker": None,
            "broker_token": "missing",
            "analyze_mode": False,
            "instrument": RELIANCE,
        }

    async def test_analyze_mode_and_order_mode_are_read(self, client, key):
        assert (await client.patch("/api/v1/settings", json={"analyze_mode": True})).is_success
        changed = await client.put(
            "/api/v1/auth/api-keys/alice/order-mode", json={"order_mode": "semi_auto"}
        )
        assert changed.status_code == 200
        response = await client.post(CONTEXT, json=_context(key))
        assert response.status_code == 200
        assert response.json()["analyze_mode"] is True
        assert response.json()["order_mode"] == "semi_auto"

    async def test_warm_is_served_from_memory(self, client, key):
        await client.post(CONTEXT, json=_context(key, include_auth=True))  # fills the caches
        with recorded_sql(client) as statements:
            for _ in range(3):
                response = await client.post(CONTEXT, json=_context(key, include_auth=True))
                assert response.status_code == 200
        assert statements == []

    async def test_without_write_scope_is_403(self, client_factory, client, key):
        reader = await client_factory(RO_TOKEN)
        assert_problem(await reader.post(CONTEXT, json=_context(key)), 403, "forbidden")

    async def test_without_secrets_scope_it_answers_without_tokens(self, client_factory, key):
        rw = await client_factory(RW_TOKEN)
        response = await rw.post(CONTEXT, json=_context(key))
        assert response.status_code == 200
        assert response.json()["user_id"] == "alice"


class TestContextProblems:
    async def test_unknown_key_is_401(self, client, key):
        body = assert_problem(
            await client.post(CONTEXT, json=_context("x" * 64)), 401, "api-key-unknown"
        )
        assert body["title"] == "Unknown API key"

    async def test_unknown_key_comes_before_an_unknown_symbol(self, client, key):
        response = await client.post(CONTEXT, json=_context("x" * 64, "NOPE", "NSE"))
        assert_problem(response, 401, "api-key-unknown")

    @pytest.mark.parametrize("flag", ["include_auth", "include_feed_token"])
    async def test_tokens_without_secrets_scope_are_403_before_the_key_is_looked_at(
        self, client_factory, key, flag
    ):
        rw = await client_factory(RW_TOKEN)
        body = assert_problem(
            await rw.post(CONTEXT, json=_context("x" * 64, **{flag: True})), 403, "forbidden"
        )
        assert "secrets" in body["detail"]

    async def test_no_broker_token_is_404(self, client, db):
        key = await _arrange(client, db, token=False)
        response = await client.post(CONTEXT, json=_context(key, include_auth=True))
        body = assert_problem(response, 404, "broker-token-missing")
        assert "alice" in body["detail"]

    async def test_revoked_broker_token_is_410(self, client, key):
        assert (await client.post("/api/v1/auth/broker-tokens/alice/revoke")).status_code == 200
        response = await client.post(CONTEXT, json=_context(key, include_feed_token=True))
        assert_problem(response, 410, "broker-token-revoked")
        # Not asked for: the state is in the answer, as verify gives it.
        plain = await client.post(CONTEXT, json=_context(key))
        assert plain.status_code == 200
        assert (plain.json()["broker"], plain.json()["broker_token"]) == (None, "revoked")

    async def test_broker_token_problem_comes_before_an_unknown_symbol(self, client, key):
        await client.post("/api/v1/auth/broker-tokens/alice/revoke")
        response = await client.post(CONTEXT, json=_context(key, "NOPE", "NSE", include_auth=True))
        assert_problem(response, 410, "broker-token-revoked")

    @pytest.mark.parametrize(
        ("symbol", "exchange"),
        [("NOPE", "NSE"), ("RELIANCE", "BSE"), ("reliance", "NSE"), ("RELIANCE", "XX")],
    )
    async def test_unknown_symbol_is_404_naming_symbol_and_exchange(
        self, client, key, symbol, exchange
    ):
        response = await client.post(CONTEXT, json=_context(key, symbol, exchange))
        body = assert_problem(response, 404, "symbol-unknown")
        assert body["title"] == "Unknown symbol"
        assert repr(symbol) in body["detail"] and repr(exchange) in body["detail"]

    @pytest.mark.parametrize(
        "body",
        [
            {"api_key": "k" * 40, "exchange": "NSE"},
            {"api_key": "k" * 40, "symbol": "RELIANCE"},
            {"symbol": "RELIANCE", "exchange": "NSE"},
            {"api_key": "k" * 40, "symbol": " ", "exchange": "NSE"},
            {"api_key": "k" * 40, "symbol": "RELIANCE", "exchange": "NSE", "other": 1},
            {"api_key": "k" * 40, "symbol": "RELIANCE", "exchange": "NSE", "include_auth": 1},
            {"api_key": "k" * 40, "symbol": "R" * 256, "exchange": "NSE"},
            {"api_key": "", "symbol": "RELIANCE", "exchange": "NSE"},
        ],
    )
    async def test_bad_body_is_422(self, client, key, body):
        assert_problem(await client.post(CONTEXT, json=body), 422, "validation")


class TestFastLane:
    """Warm, the context is answered in front of the middleware stack, exactly as the route
    answers it; anything else is the route's."""

    async def test_the_lane_answers_as_the_route(self, client, db, key):
        await client.post(CONTEXT, json=_context(key))  # the key is cold before
        lanes = Lanes(client)
        cases: list[tuple[Any, dict[str, str], int, bool]] = [
            (_context(key), {}, 200, True),
            (_context(key, "NIFTY28NOV2424000CE", "NFO", include_auth=True), {}, 200, True),
            (_context(key, include_auth=True, include_feed_token=True), {}, 200, True),
            (_context(key, include_auth=True), auth(RW_TOKEN), 403, False),
            (_context(key), auth(RO_TOKEN), 403, False),
            (_context(key, "NOPE", "NSE"), {}, 404, False),
            (_context("x" * 64), {}, 401, False),
            ({**_context(key), "extra": 1}, {}, 422, False),
        ]
        for body, headers, status, expect_lane in cases:
            response, laned = await lanes.same("POST", CONTEXT, json=body, headers=headers)
            assert (response.status_code, laned) == (status, expect_lane), body
        await client.post("/api/v1/auth/broker-tokens/alice/revoke")
        await client.post(CONTEXT, json=_context(key))  # refills the key's cache entry
        response, laned = await lanes.same("POST", CONTEXT, json=_context(key, include_auth=True))
        assert (response.status_code, laned) == (410, True)
        assert_problem(response, 410, "broker-token-revoked")
        await client.patch("/api/v1/settings", json={"analyze_mode": True})
        response, laned = await lanes.same("POST", CONTEXT, json=_context(key))
        assert response.json()["analyze_mode"] is True and not laned  # the settings were cold
        response, laned = await lanes.same("POST", CONTEXT, json=_context(key))
        assert response.json()["analyze_mode"] is True and laned

    async def test_the_basket_and_the_record_in_the_lane(self, client, db, key):
        await client.post(CONTEXT, json=_context(key))
        await client.get("/api/v1/settings")
        lanes = Lanes(client)
        items = [{"symbol": "RELIANCE", "exchange": "NSE"}, {"symbol": "NOPE", "exchange": "NSE"}]
        basket = {"api_key": key, "items": items}
        response, laned = await lanes.same("POST", BASKET, json=basket)
        assert (response.status_code, laned) == (200, True)
        assert response.json()["items"][1]["problem"]["status"] == 404
        for bad in ({"api_key": key, "items": []}, {**basket, "api_key": "x" * 64}):
            response, laned = await lanes.same("POST", BASKET, json=bad)
            assert response.status_code in (401, 422) and not laned
        before = len(lanes.fallbacks)
        recorded = await client.post(RECORD, json={"log": LOG, "latency": LATENCY})
        assert len(lanes.fallbacks) == before, "served by the lane"
        assert recorded.status_code == 201
        answer = recorded.json()
        assert answer["log_table"] == "order_logs"  # analyze mode off, from the settings cache
        assert [r["id"] for r in await _rows(db, "order_logs")] == [answer["log_id"]]
        assert [r["id"] for r in await _rows(db, "order_latency")] == [answer["latency_id"]]
        bad = {"log": LOG, "latency": {**LATENCY, "total_latency_ms": -1}}
        response = await client.post(RECORD, json=bad)
        assert response.status_code == 422 and len(lanes.fallbacks) == before + 1
        assert len(await _rows(db, "order_latency")) == 1


class TestContextCoherence:
    """Every write that changes what the separate calls answer changes the context alike."""

    async def test_key_rotation(self, client, key):
        await _agree(client, key, "RELIANCE", "NSE")
        new = (await client.put("/api/v1/auth/api-keys/alice", json={})).json()["api_key"]
        assert_problem(await _agree(client, key, "RELIANCE", "NSE"), 401, "api-key-unknown")
        assert (await _agree(client, new, "RELIANCE", "NSE")).status_code == 200

    async def test_key_deletion(self, client, key):
        await _agree(client, key, "RELIANCE", "NSE")
        assert (await client.delete("/api/v1/auth/api-keys/alice")).status_code == 204
        assert_problem(await _agree(client, key, "RELIANCE", "NSE"), 401, "api-key-unknown")

    async def test_broker_token_revoke_and_new_login(self, client, key):
        await _agree(client, key, "RELIANCE", "NSE")
        await client.post("/api/v1/auth/broker-tokens/alice/revoke")
        assert_problem(await _agree(client, key, "RELIANCE", "NSE"), 410, "broker-token-revoked")
        relogin = {**TOKEN, "auth_token": "broker-auth-2", "broker": "fyers"}
        assert (await client.put("/api/v1/auth/broker-tokens/alice", json=relogin)).is_success
        response = await _agree(client, key, "RELIANCE", "NSE")
        assert (response.json()["auth_token"], response.json()["broker"]) == (
            "broker-auth-2",
            "fyers",
        )

    async def test_order_mode_and_analyze_mode(self, client, key):
        await _agree(client, key, "RELIANCE", "NSE")
        await client.put("/api/v1/auth/api-keys/alice/order-mode", json={"order_mode": "semi_auto"})
        await client.patch("/api/v1/settings", json={"analyze_mode": True})
        response = await _agree(client, key, "RELIANCE", "NSE")
        assert (response.json()["order_mode"], response.json()["analyze_mode"]) == (
            "semi_auto",
            True,
        )

    async def test_contract_reload(self, client, key):
        await _agree(client, key, "NIFTY28NOV2424000CE", "NFO")
        reloaded = [{**ROWS[1], "token": "99999", "lotsize": 75}, ROWS[2]]
        assert (await put_contract(client, reloaded)).status_code == 200
        response = await _agree(client, key, "NIFTY28NOV2424000CE", "NFO")
        assert response.json()["instrument"] == {**OPTION, "token": "99999", "lotsize": 75}
        # RELIANCE left the contract.
        assert_problem(await _agree(client, key, "RELIANCE", "NSE"), 404, "symbol-unknown")

    async def test_symbols_deleted(self, client, key):
        await _agree(client, key, "RELIANCE", "NSE")
        assert (await client.delete("/api/v1/symbols", params={"exchange": "NSE"})).is_success
        assert_problem(await _agree(client, key, "RELIANCE", "NSE"), 404, "symbol-unknown")
        assert (await _agree(client, key, "USDINR27NOV24FUT", "CDS")).status_code == 200


@pytest.mark.postgres_only
class TestAcrossInstances:
    """A write on one instance reaches the other's context as it reaches its separate calls."""

    async def _pair(self, client_factory: ClientFactory, db: AsyncEngine) -> Any:
        one = await client_factory()
        two = await client_factory()
        key = await _arrange(one, db)

        async def warm() -> bool:
            response = await two.post(CONTEXT, json=_context(key, include_auth=True))
            return (
                response.status_code == 200
                and response.json()["instrument"] == RELIANCE
                and len(two.app.state.store.caches.get("api_keys")) == 1
            )

        assert await eventually(warm)
        return one, two, key

    async def test_revoke(self, client_factory, db):
        one, two, key = await self._pair(client_factory, db)
        await one.post("/api/v1/auth/broker-tokens/alice/revoke")

        async def revoked() -> bool:
            context = await two.post(CONTEXT, json=_context(key, include_auth=True))
            verify = await two.post(VERIFY, json={"api_key": key, "include_auth": True})
            return context.status_code == 410 and verify.status_code == 410

        assert await eventually(revoked)

    async def test_rotation(self, client_factory, db):
        one, two, key = await self._pair(client_factory, db)
        await one.put("/api/v1/auth/api-keys/alice", json={})

        async def refused() -> bool:
            context = await two.post(CONTEXT, json=_context(key))
            return context.status_code == 401

        assert await eventually(refused)

    async def test_contract_reload_and_analyze_mode(self, client_factory, db):
        one, two, key = await self._pair(client_factory, db)
        assert (await put_contract(one, [{**ROWS[0], "token": "7777"}])).status_code == 200
        await one.patch("/api/v1/settings", json={"analyze_mode": True})

        async def seen() -> bool:
            context = await two.post(CONTEXT, json=_context(key))
            return (
                context.status_code == 200
                and context.json()["instrument"]["token"] == "7777"
                and context.json()["analyze_mode"] is True
            )

        assert await eventually(seen)
        response = await _agree(two, key, "RELIANCE", "NSE")
        assert response.json()["instrument"]["token"] == "7777"


# --- POST /orders/context/batch ----------------------------------------------------------------


class TestBasket:
    async def test_a_mix_answers_each_item_in_order(self, client, key):
        items = [
            ("NIFTY28NOV2424000CE", "NFO"),
            ("NOPE", "NSE"),
            ("RELIANCE", "NSE"),
            ("RELIANCE", "BSE"),
            ("RELIANCE", "NSE"),
        ]
        response = await client.post(BASKET, json=_basket(key, items, include_auth=True))
        assert response.status_code == 200
        body = response.json()
        assert {k: v for k, v in body.items() if k != "items"} == {
            "user_id": "alice",
            "order_mode": "auto",
            "broker": "zerodha",
            "broker_token": "active",
            "analyze_mode": False,
            "auth_token": "broker-auth-1",
        }
        found = {"instrument": None, "problem": None}
        assert body["items"][0] == {"symbol": "NIFTY28NOV2424000CE", "exchange": "NFO",
                                    **found, "instrument": OPTION}  # fmt: skip
        assert (
            body["items"][2]
            == body["items"][4]
            == {
                "symbol": "RELIANCE",
                "exchange": "NSE",
                **found,
                "instrument": RELIANCE,
            }
        )
        for i, (symbol, exchange) in ((1, items[1]), (3, items[3])):
            item = body["items"][i]
            assert (item["symbol"], item["exchange"], item["instrument"]) == (
                symbol,
                exchange,
                None,
            )
            problem = item["problem"]
            assert problem["type"].endswith("/symbol-unknown")
            assert (problem["status"], problem["title"]) == (404, "Unknown symbol")
            assert repr(symbol) in problem["detail"] and repr(exchange) in problem["detail"]

    async def test_fifty_items(self, client, key):
        items = [("RELIANCE", "NSE")] * 25 + [("USDINR27NOV24FUT", "CDS")] * 25
        response = await client.post(BASKET, json=_basket(key, items))
        assert response.status_code == 200
        got = [item["instrument"] for item in response.json()["items"]]
        assert got == [RELIANCE] * 25 + [FUTURE] * 25
        assert "auth_token" not in response.json()

    @pytest.mark.parametrize("count", [0, 51])
    async def test_outside_1_to_50_items_is_422(self, client, key, count):
        response = await client.post(BASKET, json=_basket(key, [("RELIANCE", "NSE")] * count))
        body = assert_problem(response, 422, "validation")
        assert body["errors"][0]["loc"] == ["body", "items"]

    async def test_unknown_key_fails_the_whole_basket(self, client, key):
        response = await client.post(BASKET, json=_basket("x" * 64, [("RELIANCE", "NSE")]))
        assert_problem(response, 401, "api-key-unknown")

    async def test_revoked_broker_token_fails_the_whole_basket(self, client, key):
        await client.post("/api/v1/auth/broker-tokens/alice/revoke")
        body = _basket(key, [("RELIANCE", "NSE")], include_auth=True)
        assert_problem(await client.post(BASKET, json=body), 410, "broker-token-revoked")

    async def test_missing_broker_token_fails_the_whole_basket(self, client, db):
        key = await _arrange(client, db, token=False)
        body = _basket(key, [("RELIANCE", "NSE")], include_feed_token=True)
        assert_problem(await client.post(BASKET, json=body), 404, "broker-token-missing")

    async def test_tokens_without_secrets_scope_are_403(self, client_factory, key):
        rw = await client_factory(RW_TOKEN)
        body = _basket(key, [("RELIANCE", "NSE")], include_auth=True)
        assert_problem(await rw.post(BASKET, json=body), 403, "forbidden")

    async def test_bad_item_is_422_naming_it(self, client, key):
        body = {
            "api_key": key,
            "items": [{"symbol": "RELIANCE", "exchange": "NSE"}, {"symbol": "X"}],
        }
        problem = assert_problem(await client.post(BASKET, json=body), 422, "validation")
        assert problem["errors"][0]["loc"] == ["body", "items", 1, "exchange"]

    async def test_coherent_with_a_contract_reload(self, client, key):
        items = [("RELIANCE", "NSE"), ("USDINR27NOV24FUT", "CDS")]
        before = (await client.post(BASKET, json=_basket(key, items))).json()["items"]
        assert [i["problem"] for i in before] == [None, None]
        assert (await put_contract(client, [ROWS[2]])).status_code == 200
        after = (await client.post(BASKET, json=_basket(key, items))).json()["items"]
        assert after[0]["problem"]["status"] == 404 and after[1]["instrument"] == FUTURE
        assert (await client.get("/api/v1/symbols/NSE/RELIANCE")).status_code == 404


# --- POST /orders/record -----------------------------------------------------------------------

LOG = {
    "api_type": "placeorder",
    "request_data": {"symbol": "RELIANCE", "exchange": "NSE", "quantity": 1},
    "response_data": {"status": "success", "orderid": "240101000000001"},
}
LATENCY = {
    "order_id": "240101000000001",
    "user_id": "alice",
    "broker": "zerodha",
    "symbol": "RELIANCE",
    "order_type": "PLACE",
    "rtt_ms": 41.5,
    "validation_latency_ms": 1.25,
    "response_latency_ms": 2.0,
    "overhead_ms": 3.5,
    "total_latency_ms": 48.25,
    "request_body": {"quantity": 1},
    "response_body": {"orderid": "240101000000001"},
    "status": "success",
    "error": None,
    "timestamp": "2026-01-02T09:15:00.123456+05:30",
}


async def _rows(db: AsyncEngine, table: str) -> list[dict[str, Any]]:
    async with db.connect() as conn:
        result = await conn.execute(text(f"SELECT * FROM {table} ORDER BY id"))
        return [dict(r._mapping) for r in result]


async def _counts(db: AsyncEngine) -> tuple[int, int, int]:
    counts = []
    for table in ("order_logs", "analyzer_logs", "order_latency"):
        async with db.connect() as conn:
            counts.append(int(await conn.scalar(text(f"SELECT count(*) FROM {table}"))))
    return counts[0], counts[1], counts[2]


class TestRecord:
    async def test_writes_the_log_and_its_latency_row(self, client, db):
        response = await client.post(RECORD, json={"log": LOG, "latency": LATENCY})
        assert response.status_code == 201
        body = response.json()
        assert set(body) == {"log_table", "log_id", "latency_id"}
        assert body["log_table"] == "order_logs"
        (log,) = await _rows(db, "order_logs")
        (latency,) = await _rows(db, "order_latency")
        assert (body["log_id"], body["latency_id"]) == (log["id"], latency["id"])
        assert await _counts(db) == (1, 0, 1)
        # Read back through the API, every field as posted.
        (log_read,) = (await client.get("/api/v1/order-logs")).json()["items"]
        assert {k: log_read[k] for k in LOG} == LOG
        (latency_read,) = (await client.get("/api/v1/latency")).json()["items"]
        expected = {**LATENCY, "status": "SUCCESS", "timestamp": "2026-01-02T03:45:00.123456Z"}
        assert {k: latency_read[k] for k in LATENCY} == expected
        assert latency_read["id"] == body["latency_id"]

    async def test_integral_milliseconds_are_numbers(self, client, db):
        latency = {"order_id": "o1", "total_latency_ms": 48, "rtt_ms": 0}
        response = await client.post(RECORD, json={"log": LOG, "latency": latency})
        assert response.status_code == 201
        (timing,) = (await client.get("/api/v1/latency")).json()["items"]
        assert (timing["total_latency_ms"], timing["rtt_ms"], timing["user_id"]) == (48, 0, None)

    async def test_created_at_and_timestamp_default_to_now(self, client):
        latency = {k: v for k, v in LATENCY.items() if k != "timestamp"}
        before = datetime.now(UTC)
        response = await client.post(RECORD, json={"log": LOG, "latency": latency})
        assert response.status_code == 201
        after = datetime.now(UTC)
        (log,) = (await client.get("/api/v1/order-logs")).json()["items"]
        (timing,) = (await client.get("/api/v1/latency")).json()["items"]
        for stamp in (log["created_at"], timing["timestamp"]):
            assert before <= datetime.fromisoformat(stamp) <= after

    async def test_analyze_true_writes_the_analyzer_log(self, client, db):
        response = await client.post(RECORD, json={"log": LOG, "latency": LATENCY, "analyze": True})
        assert response.status_code == 201
        assert response.json()["log_table"] == "analyzer_logs"
        (log,) = await _rows(db, "analyzer_logs")
        assert response.json()["log_id"] == log["id"]
        assert await _counts(db) == (0, 1, 1)

    async def test_analyze_mode_on_routes_to_the_analyzer_log(self, client, db):
        assert (await client.patch("/api/v1/settings", json={"analyze_mode": True})).is_success
        for analyze in (None, "omitted"):
            body: dict[str, Any] = {"log": LOG, "latency": LATENCY}
            if analyze is None:
                body["analyze"] = None
            response = await client.post(RECORD, json=body)
            assert response.status_code == 201
            assert response.json()["log_table"] == "analyzer_logs"
        assert await _counts(db) == (0, 2, 2)

    async def test_analyze_false_keeps_a_live_order_in_the_order_log(self, client, db):
        assert (await client.patch("/api/v1/settings", json={"analyze_mode": True})).is_success
        response = await client.post(
            RECORD, json={"log": LOG, "latency": LATENCY, "analyze": False}
        )
        assert response.status_code == 201
        assert response.json()["log_table"] == "order_logs"
        assert await _counts(db) == (1, 0, 1)

    async def test_analyze_mode_off_again_is_seen(self, client, db):
        await client.patch("/api/v1/settings", json={"analyze_mode": True})
        first = await client.post(RECORD, json={"log": LOG, "latency": LATENCY})
        await client.patch("/api/v1/settings", json={"analyze_mode": False})
        second = await client.post(RECORD, json={"log": LOG, "latency": LATENCY})
        assert (first.json()["log_table"], second.json()["log_table"]) == (
            "analyzer_logs",
            "order_logs",
        )

    @pytest.mark.parametrize(
        ("latency", "loc"),
        [
            ({**LATENCY, "total_latency_ms": -1}, ["body", "latency", "total_latency_ms"]),
            ({k: v for k, v in LATENCY.items() if k != "total_latency_ms"},
             ["body", "latency", "total_latency_ms"]),
            ({**LATENCY, "order_id": ""}, ["body", "latency", "order_id"]),
            ({**LATENCY, "status": "LOST"}, ["body", "latency", "status"]),
            ({**LATENCY, "extra": 1}, ["body", "latency", "extra"]),
            ({**LATENCY, "error": "a\u0000b"}, ["body", "latency", "error"]),
        ],
    )  # fmt: skip
    async def test_a_bad_latency_part_writes_neither(self, client, db, latency, loc):
        response = await client.post(RECORD, json={"log": LOG, "latency": latency})
        body = assert_problem(response, 422, "validation")
        assert body["errors"][0]["loc"] == loc
        assert await _counts(db) == (0, 0, 0)

    @pytest.mark.parametrize(
        ("body", "loc"),
        [
            ({"log": {**LOG, "api_type": ""}, "latency": LATENCY}, ["body", "log", "api_type"]),
            ({"log": LOG}, ["body", "latency"]),
            ({"latency": LATENCY}, ["body", "log"]),
            ({"log": LOG, "latency": LATENCY, "analyze": "yes"}, ["body", "analyze"]),
            ({"log": LOG, "latency": LATENCY, "other": 1}, ["body", "other"]),
            (
                {"log": {**LOG, "request_data": {"a\u0000": 1}}, "latency": LATENCY},
                ["body", "log", "request_data", "a\u0000"],
            ),
        ],
    )
    async def test_a_bad_body_writes_nothing(self, client, db, body, loc):
        problem = assert_problem(await client.post(RECORD, json=body), 422, "validation")
        assert problem["errors"][0]["loc"] == loc
        assert await _counts(db) == (0, 0, 0)

    @pytest.mark.parametrize("raw", [b"{", b"", b'{"log": '])
    async def test_malformed_json_is_400_and_writes_nothing(self, client, db, raw):
        response = await client.post(
            RECORD, content=raw, headers={"content-type": "application/json"}
        )
        assert_problem(response, 400, "malformed-body")
        assert await _counts(db) == (0, 0, 0)

    async def test_a_latency_row_the_database_refuses_takes_its_log_with_it(
        self,
        client,
        db,
        poison: Poison,  # noqa: F811
    ):
        """Among concurrent records flushed together, the one whose latency row the database
        refuses gets 422 and neither of its rows is written; every other pair is."""
        await poison("order_latency", "order_id", "poison")
        bodies = [
            {
                "log": {**LOG, "request_data": {"n": i}},
                "latency": {**LATENCY, "order_id": "poison" if i == 7 else f"o{i}"},
            }
            for i in range(20)
        ]
        responses = await _post_together(client, db, bodies)
        problem = assert_problem(responses[7], 422, "value-refused")
        assert "poison" not in problem["detail"]
        logs = {r["id"]: r for r in await _rows(db, "order_logs")}
        latencies = {r["id"]: r for r in await _rows(db, "order_latency")}
        assert len(logs) == len(latencies) == 19
        for i, response in enumerate(responses):
            if i == 7:
                continue
            assert response.status_code == 201, response.text
            answer = response.json()
            log = logs[answer["log_id"]]
            request_data = log["request_data"]
            if isinstance(request_data, str):  # SQLite hands JSON back as text
                request_data = json.loads(request_data)
            assert request_data == {"n": i}
            assert latencies[answer["latency_id"]]["order_id"] == f"o{i}"

    async def test_concurrent_records_share_flushes_and_get_their_own_ids(self, client, db):
        bodies = [
            {"log": {**LOG, "request_data": {"n": i}}, "latency": {**LATENCY, "order_id": f"o{i}"}}
            for i in range(30)
        ]
        with recorded_sql(client) as statements:
            responses = await _post_together(client, db, bodies)
        assert all(r.status_code == 201 for r in responses)
        inserts = [s for s in statements if s.startswith("INSERT INTO order_latency")]
        assert 1 <= len(inserts) <= 4, inserts
        latencies = {r["id"]: r["order_id"] for r in await _rows(db, "order_latency")}
        assert [latencies[r.json()["latency_id"]] for r in responses] == [
            f"o{i}" for i in range(30)
        ]
        assert len({r.json()["log_id"] for r in responses}) == 30
        assert await _counts(db) == (30, 0, 30)


@asynccontextmanager
async def _queued(client: httpx.AsyncClient, db: AsyncEngine, rows: int) -> AsyncIterator[None]:
    writer = client.app.state.store.runtime.writers.orders  # type: ignore[attr-defined]
    async with table_write_lock(db, "order_logs"):
        yield

        async def queued() -> None:
            while writer.pending_rows < rows:
                await asyncio.sleep(0.005)

        await asyncio.wait_for(queued(), 10)


async def _post_together(
    client: httpx.AsyncClient, db: AsyncEngine, bodies: list[Any]
) -> list[httpx.Response]:
    """Post every body at once while the writer is blocked, so they queue into few flushes."""
    async with _queued(client, db, 2 * len(bodies)):
        posts = [asyncio.create_task(client.post(RECORD, json=body)) for body in bodies]
    return await asyncio.wait_for(asyncio.gather(*posts), 30)
