"""Derivatives queries served from the in-memory index: F&O search, underlyings, live expiries
and option chains, with "today" pinned in IST; the same answers on a second instance."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from service.derivatives import ist_today
from service.symbol_index import parse_expiry
from tests.contract import generate, put_contract, row
from tests.support import assert_problem, eventually

TODAY = date(2026, 11, 30)  # a Monday: the November monthlies (26-NOV-26) have just expired
CONTRACT = generate(20_000, seed=3, base=date(2026, 11, 26))


def pin_today(client: Any, day: date = TODAY) -> None:
    client.app.state.store.market_clock = lambda: day


def keys(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["symbol"] for item in response.json()["items"]]


def browse_key(r: dict[str, Any]) -> tuple[Any, ...]:
    """The documented order without `q`: underlying, expiry date, strike, type, symbol."""
    expiry = parse_expiry(r["expiry"]) if r["expiry"] else date.min
    strike = -1.0 if r["strike"] is None else r["strike"]
    return (r["name"], expiry, strike, r["instrumenttype"], r["symbol"], r["exchange"])


@pytest.fixture
async def loaded(client):
    pin_today(client)
    response = await put_contract(client, CONTRACT)
    assert response.status_code == 200, response.text
    return client


class TestFnoSearch:
    async def test_filters_without_q_in_chain_order(self, loaded):
        params = {"exchange": "NFO", "underlying": "nifty", "instrumenttype": "options",
                  "expiry": "03-dec-26", "strike_min": 23900, "strike_max": 24100}  # fmt: skip
        expected = sorted(
            (r for r in CONTRACT if r["exchange"] == "NFO" and r["name"] == "NIFTY"
             and r["instrumenttype"] in ("CE", "PE") and r["expiry"] == "03-DEC-26"
             and 23900 <= r["strike"] <= 24100),
            key=browse_key,
        )  # fmt: skip
        assert len(expected) >= 6
        got = keys(await loaded.get("/api/v1/symbols/search", params=params))
        assert got == [r["symbol"] for r in expected]
        assert got[:2] == ["NIFTY03DEC2623900CE", "NIFTY03DEC2623900PE"]
        assert "NIFTY03DEC2624000CE" in got

    async def test_futures_come_chronologically(self, loaded):
        params = {"exchange": "MCX", "underlying": "CRUDEOIL", "instrumenttype": "futures"}
        got = keys(await loaded.get("/api/v1/symbols/search", params=params))
        # Text order would put 28-JAN-27 before 31-DEC-26.
        assert got == ["CRUDEOIL26NOV26FUT", "CRUDEOIL31DEC26FUT", "CRUDEOIL28JAN27FUT"]

    @pytest.mark.parametrize("exchange", ["CDS", "MCX", "NSE"])
    async def test_an_exchange_alone_lists_its_rows_up_to_limit(self, loaded, exchange):
        got = keys(
            await loaded.get("/api/v1/symbols/search", params={"exchange": exchange, "limit": 40})
        )
        rows = sorted((r for r in CONTRACT if r["exchange"] == exchange), key=browse_key)
        assert got == [r["symbol"] for r in rows[:40]]

    async def test_no_filter_at_all_answers_limit_rows(self, loaded):
        got = keys(await loaded.get("/api/v1/symbols/search", params={"limit": 7}))
        assert got == [r["symbol"] for r in sorted(CONTRACT, key=browse_key)[:7]]

    async def test_strike_range_alone(self, loaded):
        params = {"strike_min": 83.5, "strike_max": 84, "exchange": "CDS", "limit": 1000}
        response = await loaded.get("/api/v1/symbols/search", params=params)
        items = response.json()["items"]
        expected = [r for r in CONTRACT if r["exchange"] == "CDS" and 83.5 <= r["strike"] <= 84]
        assert len(items) == len(expected) > 0
        assert all(83.5 <= item["strike"] <= 84 for item in items)

    @pytest.mark.parametrize("database", [False, True], ids=["memory", "database"])
    async def test_ranking_with_q(self, client, database):
        rows = [
            row("NIFTYBEES", "NSE", name="NIPPON INDIA ETF NIFTY BEES"),
            row("NIFTY", "NSE_INDEX", name="NIFTY 50", instrumenttype="INDEX"),
            row("NIFTY03DEC2624000CE", "NFO", name="NIFTY", expiry="03-DEC-26", strike=24000.0,
                instrumenttype="CE"),
            row("NIFTY26NOV26FUT", "NFO", name="NIFTY", expiry="26-NOV-26", strike=0.0,
                instrumenttype="FUT"),
            row("NIFTYIT", "NSE_INDEX", name="NIFTY IT", instrumenttype="INDEX"),
            row("BANKNIFTY26NOV26FUT", "NFO", name="BANKNIFTY", expiry="26-NOV-26",
                strike=0.0, instrumenttype="FUT"),
            row("SETFNIF50", "NSE", name="SBI NIFTY 50 ETF"),
        ]  # fmt: skip
        await put_contract(client, rows)
        holder = client.app.state.store.runtime.symbols
        index = holder.index
        if database:
            holder.index = None
        try:
            got = keys(await client.get("/api/v1/symbols/search", params={"q": "nifty"}))
            limited = keys(
                await client.get("/api/v1/symbols/search", params={"q": "nifty", "limit": 2})
            )
        finally:
            holder.index = index
        # Exact symbol, exact underlying, underlying prefix, symbol prefix, the rest.
        assert got == ["NIFTY", "NIFTY26NOV26FUT", "NIFTY03DEC2624000CE", "NIFTYIT", "NIFTYBEES",
                       "SETFNIF50", "BANKNIFTY26NOV26FUT"]  # fmt: skip
        assert limited == got[:2]

    async def test_q_with_filters_on_real_looking_symbols(self, loaded):
        params = {"q": "NIFTY 24000", "underlying": "NIFTY", "instrumenttype": "CE",
                  "exchange": "NFO"}  # fmt: skip
        got = keys(await loaded.get("/api/v1/symbols/search", params=params))
        assert "NIFTY03DEC2624000CE" in got
        assert all(s.startswith("NIFTY") and s.endswith("24000CE") for s in got)

    @pytest.mark.parametrize(
        "params, where",
        [
            ({"expiry": "2026-12-03"}, ["query", "expiry"]),
            ({"strike_min": "inf"}, ["query", "strike_min"]),
            ({"strike_min": -1}, ["query", "strike_min"]),
            ({"underlying": "NIF\x00TY"}, ["query", "underlying"]),
            ({"instrumenttype": "C\x00E"}, ["query", "instrumenttype"]),
        ],
    )
    async def test_bad_filters_are_422(self, loaded, params, where):
        problem = assert_problem(
            await loaded.get("/api/v1/symbols/search", params=params), 422, "validation"
        )
        assert problem["errors"][0]["loc"] == where


class TestUnderlyings:
    ROWS = [
        row("CRUDEOIL26NOV265800CE", "MCX", name="CRUDEOIL", expiry="26-NOV-26", strike=5800.0,
            instrumenttype="CE"),
        row("ZINCMINI26NOV26FUT", "MCX", name="ZINCMINI", expiry="26-NOV-26", strike=0.0,
            instrumenttype="FUT"),
        row("ALUMINI31DEC26FUT", "MCX", name="ALUMINI", expiry="31-DEC-26", strike=0.0,
            instrumenttype="FUT"),
        row("USDINR04DEC2684CE", "CDS", name="USDINR", expiry="04-DEC-26", strike=84.0,
            instrumenttype="CE"),
        row("RELIANCE", "NSE", name="RELIANCE INDUSTRIES LTD"),
    ]  # fmt: skip

    @pytest.mark.parametrize(
        "day, params, expected",
        [
            (TODAY, {"exchange": "MCX"}, ["CRUDEOIL"]),
            (TODAY, {"exchange": "MCX", "include_futures": "true"}, ["ALUMINI", "CRUDEOIL"]),
            # A future expiring today still trades today.
            (date(2026, 11, 26), {"exchange": "MCX", "include_futures": "true"},
             ["ALUMINI", "CRUDEOIL", "ZINCMINI"]),
            (TODAY, {}, ["CRUDEOIL", "USDINR"]),
            (TODAY, {"exchange": "NSE", "include_futures": "true"}, []),
        ],
    )  # fmt: skip
    async def test_underlyings(self, client, day, params, expected):
        pin_today(client, day)
        await put_contract(client, self.ROWS)
        response = await client.get("/api/v1/symbols/underlyings", params=params)
        assert response.status_code == 200
        assert response.json() == {"items": expected}

    async def test_on_a_generated_contract(self, loaded):
        response = await loaded.get("/api/v1/symbols/underlyings", params={"exchange": "CDS"})
        assert response.json() == {"items": ["EURINR", "GBPINR", "JPYINR", "USDINR"]}

    def test_today_is_judged_in_india(self):
        # 19:00 UTC on the 29th is half past midnight on the 30th in Kolkata.
        assert ist_today(datetime(2026, 11, 29, 19, 0, tzinfo=UTC)) == date(2026, 11, 30)
        assert ist_today(datetime(2026, 11, 29, 18, 0, tzinfo=UTC)) == date(2026, 11, 29)


class TestExpiries:
    def expected(self, include_expired: bool, **where: Any) -> list[str]:
        found = {
            r["expiry"]
            for r in CONTRACT
            if r["expiry"] and all(r[k] in v for k, v in where.items())
        }
        dates = sorted(parse_expiry(e) for e in found)
        kept = [d for d in dates if include_expired or d >= TODAY]
        return [d.strftime("%d-%b-%y").upper() for d in kept if d is not None]

    async def test_live_ones_chronologically(self, loaded):
        params = {"underlying": "NIFTY", "exchange": "NFO"}
        response = await loaded.get("/api/v1/symbols/expiries", params=params)
        items = response.json()["items"]
        assert items == self.expected(False, name={"NIFTY"}, exchange={"NFO"})
        assert items[0] == "03-DEC-26" and "26-NOV-26" not in items

    async def test_expired_on_request(self, loaded):
        params = {"name": "CRUDEOIL", "exchange": "MCX", "include_expired": "true"}
        response = await loaded.get("/api/v1/symbols/expiries", params=params)
        assert response.json() == {"items": ["26-NOV-26", "31-DEC-26", "28-JAN-27"]}

    async def test_groups(self, loaded):
        params = {"underlying": "NIFTY", "exchange": "NFO", "instrumenttype": "futures"}
        futures = (await loaded.get("/api/v1/symbols/expiries", params=params)).json()["items"]
        assert futures == ["31-DEC-26", "28-JAN-27"]
        params["instrumenttype"] = "options"
        options = (await loaded.get("/api/v1/symbols/expiries", params=params)).json()["items"]
        assert options == self.expected(
            False, name={"NIFTY"}, exchange={"NFO"}, instrumenttype={"CE", "PE"}
        )
        assert len(options) > len(futures)


class TestOptionChain:
    def chain(self, expiry: str) -> dict[float, dict[str, str]]:
        out: dict[float, dict[str, str]] = {}
        for r in CONTRACT:
            option = r["instrumenttype"] in ("CE", "PE")
            if option and (r["exchange"], r["name"], r["expiry"]) == ("NFO", "NIFTY", expiry):
                out.setdefault(r["strike"], {})[r["instrumenttype"]] = r["symbol"]
        return out

    async def test_nearest_live_expiry_by_default(self, loaded):
        response = await loaded.get(
            "/api/v1/symbols/option-chain", params={"exchange": "NFO", "underlying": "nifty"}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["exchange"], body["underlying"], body["expiry"]) == (
            "NFO",
            "NIFTY",
            "03-DEC-26",
        )
        assert (body["lotsize"], body["tick_size"]) == (25, 0.05)
        expected = self.chain("03-DEC-26")
        assert [s["strike"] for s in body["strikes"]] == sorted(expected)
        for entry in body["strikes"]:
            for kind in ("CE", "PE"):
                leg = entry[kind]
                assert (leg and leg["symbol"]) == expected[entry["strike"]].get(kind)
        at_the_money = next(s for s in body["strikes"] if s["strike"] == 24000.0)
        assert at_the_money["CE"]["symbol"] == "NIFTY03DEC2624000CE"
        assert at_the_money["CE"]["brsymbol"] == "NIFTY26D0324000CE"
        assert at_the_money["PE"]["instrumenttype"] == "PE"

    async def test_around_keeps_the_nearest_strikes(self, loaded):
        params = {"exchange": "NFO", "underlying": "NIFTY", "expiry": "03-DEC-26",
                  "around": 24010, "count": 3}  # fmt: skip
        body = (await loaded.get("/api/v1/symbols/option-chain", params=params)).json()
        assert [s["strike"] for s in body["strikes"]] == [23950.0, 24000.0, 24050.0]

    async def test_an_expired_expiry_on_request(self, loaded):
        params = {"exchange": "NFO", "underlying": "NIFTY", "expiry": "26-nov-26"}
        body = (await loaded.get("/api/v1/symbols/option-chain", params=params)).json()
        assert body["expiry"] == "26-NOV-26"
        assert [s["strike"] for s in body["strikes"]] == sorted(self.chain("26-NOV-26"))

    @pytest.mark.parametrize(
        "params, named",
        [
            ({"exchange": "NFO", "underlying": "NOSUCH"}, "NOSUCH"),
            ({"exchange": "MCX", "underlying": "NIFTY"}, "NIFTY"),
            ({"exchange": "NFO", "underlying": "NIFTY", "expiry": "04-DEC-26"}, "04-DEC-26"),
        ],
    )
    async def test_unknown_is_404_naming_it(self, loaded, params, named):
        response = await loaded.get("/api/v1/symbols/option-chain", params=params)
        problem = assert_problem(response, 404, "not-found")
        assert named in problem["detail"]

    async def test_every_expiry_past_is_404(self, client):
        pin_today(client, date(2027, 6, 1))
        await put_contract(client, CONTRACT)
        response = await client.get(
            "/api/v1/symbols/option-chain", params={"exchange": "NFO", "underlying": "NIFTY"}
        )
        assert "past" in assert_problem(response, 404, "not-found")["detail"]

    @pytest.mark.parametrize(
        "params, where",
        [
            ({"underlying": "NIFTY"}, ["query", "exchange"]),
            ({"exchange": "NFO", "underlying": "NIFTY", "expiry": "3-DEC-26"}, ["query", "expiry"]),
            ({"exchange": "NFO", "underlying": "NIFTY", "count": 0}, ["query", "count"]),
            ({"exchange": "NFO", "underlying": "NIFTY", "around": "nan"}, ["query", "around"]),
        ],
    )
    async def test_bad_queries_are_422(self, loaded, params, where):
        response = await loaded.get("/api/v1/symbols/option-chain", params=params)
        assert assert_problem(response, 422, "validation")["errors"][0]["loc"] == where


@pytest.mark.postgres_only
async def test_a_second_instance_answers_the_same_after_a_load(client_factory):
    one = await client_factory()
    two = await client_factory()
    pin_today(one)
    pin_today(two)
    await put_contract(one, CONTRACT)
    params = {"exchange": "NFO", "underlying": "NIFTY"}

    async def caught_up() -> bool:
        response = await two.get("/api/v1/symbols/option-chain", params=params)
        return response.status_code == 200

    assert await eventually(caught_up)
    for path, query in [
        ("/api/v1/symbols/option-chain", params),
        ("/api/v1/symbols/underlyings", {"exchange": "MCX", "include_futures": "true"}),
        ("/api/v1/symbols/expiries", {"underlying": "NIFTY"}),
        ("/api/v1/symbols/search", {"underlying": "CRUDEOIL", "exchange": "MCX"}),
    ]:
        first = await one.get(path, params=query)
        second = await two.get(path, params=query)
        assert first.status_code == second.status_code == 200
        assert first.json() == second.json(), path
    await put_contract(one, [row("GOLD26NOV2676000CE", "MCX", name="GOLD", expiry="26-NOV-26",
                                 strike=76000.0, instrumenttype="CE")])  # fmt: skip

    async def replaced() -> bool:
        response = await two.get("/api/v1/symbols/option-chain", params=params)
        return response.status_code == 404

    assert await eventually(replaced)


async def test_an_option_without_a_strike_comes_last_in_its_chain(client):
    """A CE/PE row loaded without a strike (the load accepts it) is listed after the struck
    ones, never a 500."""
    pin_today(client)
    rows = [
        row("ODD03DEC2624000CE", "NFO", name="ODD", expiry="03-DEC-26", strike=24000.0,
            instrumenttype="CE"),
        row("ODD03DEC26XCE", "NFO", name="ODD", expiry="03-DEC-26", strike=None,
            instrumenttype="CE"),
        row("ODD03DEC2623000PE", "NFO", name="ODD", expiry="03-DEC-26", strike=23000.0,
            instrumenttype="PE"),
    ]  # fmt: skip
    assert (await put_contract(client, rows)).status_code == 200
    params = {"exchange": "NFO", "underlying": "ODD"}
    body = (await client.get("/api/v1/symbols/option-chain", params=params)).json()
    assert [s["strike"] for s in body["strikes"]] == [23000.0, 24000.0, None]
    assert body["strikes"][2]["CE"]["symbol"] == "ODD03DEC26XCE"
    near = await client.get(
        "/api/v1/symbols/option-chain", params={**params, "around": 0, "count": 2}
    )
    assert near.status_code == 200
    assert [s["strike"] for s in near.json()["strikes"]] == [23000.0, None]
