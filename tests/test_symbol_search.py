"""GET /api/v1/symbols/search: term matching, ranking, filters; the same answers from the
in-memory index and from the database (pg_trgm on PostgreSQL), on both backends."""

from __future__ import annotations

import random
from typing import Any

import pytest
from sqlalchemy import text

from service.repositories import symbols as symbols_repo
from service.symbol_index import search_terms
from tests.contract import generate, put_contract, row
from tests.support import assert_problem


def option(symbol: str, name: str, strike: float, kind: str, expiry: str, **fields: Any):
    return row(
        symbol,
        "NFO",
        name=name,
        brsymbol=fields.pop("brsymbol", symbol.replace("28NOV24", "24NOV")),
        expiry=expiry,
        strike=strike,
        lotsize=25,
        instrumenttype=kind,
        **fields,
    )


ROWS = [
    row("NIFTY", "NSE_INDEX", brsymbol="NIFTY 50", name="NIFTY 50", token="26000", instrumenttype="INDEX"),
    row("NIFTY", "BSE_INDEX", brsymbol="NIFTY", name="NIFTY 50", token="99926000", instrumenttype="INDEX"),
    row("NIFTY28NOV24FUT", "NFO", name="NIFTY", token="35001", expiry="28-NOV-24", strike=0.0, instrumenttype="FUT"),
    option("NIFTY28NOV2424000CE", "NIFTY", 24000.0, "CE", "28-NOV-24", token="43512"),
    option("NIFTY28NOV2424000PE", "NIFTY", 24000.0, "PE", "28-NOV-24", token="43513"),
    option("NIFTY05DEC2424000CE", "NIFTY", 24000.0, "CE", "05-DEC-24", token="43620"),
    option("NIFTY28NOV2424050CE", "NIFTY", 24050.0, "CE", "28-NOV-24", token="43514"),
    # A broker whose symbols do not show the strike: only the strike column matches "24000".
    option("NIFTYW1CE", "NIFTY", 24000.0, "CE", "05-DEC-24", brsymbol="NIFTYW1CE", token="50001"),
    option("BANKNIFTY28NOV2451000CE", "BANKNIFTY", 51000.0, "CE", "28-NOV-24", token="44001"),
    row("RELIANCE", "NSE", name="RELIANCE INDUSTRIES LTD", token="2885"),
    row("RELIANCE", "BSE", brsymbol="RELIANCE", name="RELIANCE INDUSTRIES LTD", token="500325"),
    row("RELIANCE28NOV24FUT", "NFO", name="RELIANCE", token="35100", expiry="28-NOV-24", strike=0.0, instrumenttype="FUT"),
    row("TCS", "NSE", name="TATA CONSULTANCY", token="11536"),
    row("Tcs", "BSE", brsymbol="Tcs", name="tata consultancy", token="532540"),
    row("TCS28NOV24FUT", "NFO", name="TCS", token="35200", expiry="28-NOV-24", strike=0.0, instrumenttype="FUT"),
    row("M&M", "NSE", name="MAHINDRA & MAHINDRA", token="2031"),
    row("BAJAJ-AUTO", "NSE", name="BAJAJ AUTO", token="16669"),
    row("GOLDBEES", "NSE", name="100% GOLD_ETF", token="14428"),
    row("GOLD1", "NSE", name="GOLD ETF ONE", token="14429"),
    row("SOCGEN", "NSE", name="SOCIÉTÉ GÉNÉRALE", token="77001"),
    row("USDINR27NOV2483.25CE", "CDS", name="USDINR", token="8123", expiry="27-NOV-24", strike=83.25, lotsize=1000, instrumenttype="CE", tick_size=0.0025),
]  # fmt: skip


def keys(items: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(item["symbol"], item["exchange"]) for item in items]


async def search(client: Any, *, database: bool = False, **params: Any) -> Any:
    """One search through HTTP, answered by the in-memory index or (database=True) by the
    database path, which serves while no index is built."""
    holder = client.app.state.store.runtime.symbols
    index = holder.index
    if database:
        holder.index = None
    try:
        return await client.get("/api/v1/symbols/search", params=params)
    finally:
        holder.index = index


PATHS = [pytest.param(False, id="memory"), pytest.param(True, id="database")]

CASES = [
    # Exact symbol first (both exchanges, by exchange), then shorter symbols.
    (
        {"q": "nifty"},
        [("NIFTY", "BSE_INDEX"), ("NIFTY", "NSE_INDEX"), ("NIFTYW1CE", "NFO"),
         ("NIFTY28NOV24FUT", "NFO"), ("NIFTY05DEC2424000CE", "NFO"), ("NIFTY28NOV2424000CE", "NFO"),
         ("NIFTY28NOV2424000PE", "NFO"), ("NIFTY28NOV2424050CE", "NFO"),
         ("BANKNIFTY28NOV2451000CE", "NFO")],
    ),
    # Every term must match; a number also matches the strike (NIFTYW1CE shows no 24000).
    (
        {"q": "NIFTY 24000 CE"},
        [("NIFTYW1CE", "NFO"), ("NIFTY05DEC2424000CE", "NFO"), ("NIFTY28NOV2424000CE", "NFO")],
    ),
    ({"q": "24000.0"}, [("NIFTYW1CE", "NFO"), ("NIFTY05DEC2424000CE", "NFO"),
                        ("NIFTY28NOV2424000CE", "NFO"), ("NIFTY28NOV2424000PE", "NFO")]),
    ({"q": "83.25"}, [("USDINR27NOV2483.25CE", "CDS")]),
    # Case-insensitive on every field; an exact match whatever the case of the stored symbol.
    ({"q": "tcs"}, [("TCS", "NSE"), ("Tcs", "BSE"), ("TCS28NOV24FUT", "NFO")]),
    ({"q": "consultancy"}, [("TCS", "NSE"), ("Tcs", "BSE")]),
    # Token, broker symbol and name match too.
    ({"q": "2885"}, [("RELIANCE", "NSE")]),
    ({"q": "24nov24000"}, [("NIFTY28NOV2424000CE", "NFO"), ("NIFTY28NOV2424000PE", "NFO")]),
    ({"q": "industries"}, [("RELIANCE", "BSE"), ("RELIANCE", "NSE")]),
    ({"q": "SOCIÉTÉ"}, [("SOCGEN", "NSE")]),
    # % and _ are literal characters, not LIKE wildcards.
    ({"q": "100%"}, [("GOLDBEES", "NSE")]),
    ({"q": "gold_"}, [("GOLDBEES", "NSE")]),
    ({"q": "%"}, [("GOLDBEES", "NSE")]),
    ({"q": "M&M"}, [("M&M", "NSE")]),
    ({"q": "bajaj-"}, [("BAJAJ-AUTO", "NSE")]),
    # Filters and limit.
    ({"q": "NIFTY", "exchange": "NFO", "instrumenttype": "CE", "expiry": "28-nov-24"},
     [("NIFTY28NOV2424000CE", "NFO"), ("NIFTY28NOV2424050CE", "NFO"),
      ("BANKNIFTY28NOV2451000CE", "NFO")]),
    ({"q": "nifty", "limit": 3}, [("NIFTY", "BSE_INDEX"), ("NIFTY", "NSE_INDEX"), ("NIFTYW1CE", "NFO")]),
    # No terms: by underlying (name), then expiry, strike and type.
    ({"exchange": "NSE", "limit": 4}, [("GOLDBEES", "NSE"), ("BAJAJ-AUTO", "NSE"), ("GOLD1", "NSE"), ("M&M", "NSE")]),
    ({"q": "fut", "exchange": "NFO"},
     [("TCS28NOV24FUT", "NFO"), ("NIFTY28NOV24FUT", "NFO"), ("RELIANCE28NOV24FUT", "NFO")]),
    ({"q": "NIFTY RELIANCE"}, []),
    ({"q": "NIFTY", "exchange": "MCX"}, []),
]  # fmt: skip


class TestSearch:
    @pytest.mark.parametrize("database", PATHS)
    async def test_fixed_contract(self, client, database):
        """The same literal answers on both backends, from memory and from the database."""
        response = await put_contract(client, ROWS)
        assert response.status_code == 200, response.text
        for params, expected in CASES:
            if database and "q" not in params:
                continue  # the database path serves searches with terms only
            response = await search(client, database=database, **params)
            assert response.status_code == 200, (params, response.text)
            assert keys(response.json()["items"]) == expected, params

    @pytest.mark.parametrize("database", PATHS)
    async def test_rows_come_whole(self, client, database):
        await put_contract(client, ROWS)
        response = await search(client, database=database, q="USDINR")
        assert response.json() == {
            "items": [
                {
                    "symbol": "USDINR27NOV2483.25CE",
                    "brsymbol": "USDINR27NOV2483.25CE-EQ",
                    "name": "USDINR",
                    "exchange": "CDS",
                    "brexchange": "CDS",
                    "token": "8123",
                    "expiry": "27-NOV-24",
                    "strike": 83.25,
                    "lotsize": 1000,
                    "instrumenttype": "CE",
                    "tick_size": 0.0025,
                }
            ]
        }

    async def test_memory_and_database_agree_on_a_generated_contract(self, client):
        contract = generate(3000, seed=5)
        await put_contract(client, contract)
        rng = random.Random(5)
        queries: list[dict[str, Any]] = []
        for r in rng.sample(contract, 25):
            strike = f"{r['strike']:g}" if r["strike"] else ""
            queries.append({"q": f"{r['name']} {strike} {r['instrumenttype']}", "limit": 20})
            queries.append({"q": r["symbol"][:6], "exchange": r["exchange"]})
            queries.append({"q": r["token"][-3:]})
        queries += [{"q": "CE", "limit": 1000}, {"q": "BFO", "exchange": "BFO", "limit": 1000}]
        # Short prefixes: every group of the ranking large, read among the candidates.
        queries += [{"q": q, "limit": 400} for q in ("N", "NI", "S", "GOLD", "TA", "28")]
        queries += [{"q": "NIFTY", "underlying": "NIFTY", "limit": 300}]
        for params in queries:
            memory = await search(client, **params)
            database = await search(client, database=True, **params)
            assert memory.status_code == database.status_code == 200
            assert memory.json() == database.json(), params
        assert len((await search(client, q="CE", limit=1000)).json()["items"]) == 1000

    async def test_a_new_load_is_searched_at_once(self, client):
        await put_contract(client, ROWS)
        assert keys((await search(client, q="M&M")).json()["items"]) == [("M&M", "NSE")]
        await put_contract(client, [row("M&MFIN", "NSE")])
        assert keys((await search(client, q="M&M")).json()["items"]) == [("M&MFIN", "NSE")]

    @pytest.mark.parametrize(
        "params, where",
        [
            ({"q": "NIFTY", "expiry": "28-11-24"}, ["query", "expiry"]),
            ({"q": "NIFTY\x00"}, ["query", "q"]),
            ({"underlying": "NIFTY", "strike_min": "nan"}, ["query", "strike_min"]),
            ({"underlying": "NIFTY", "strike_max": "1e13"}, ["query", "strike_max"]),
            ({"q": "NIFTY", "limit": 0}, ["query", "limit"]),
            ({"q": "NIFTY", "limit": 1001}, ["query", "limit"]),
        ],
    )
    async def test_bad_queries_are_422(self, client, params, where):
        await put_contract(client, ROWS)
        problem = assert_problem(await search(client, **params), 422, "validation")
        assert problem["errors"][0]["loc"] == where

    async def test_before_any_load_nothing_is_found(self, client):
        response = await search(client, q="NIFTY")
        assert response.status_code == 200
        assert response.json() == {"items": []}


@pytest.mark.postgres_only
async def test_the_database_path_can_use_the_trigram_index(client, db):
    await put_contract(client, ROWS)
    stmt = symbols_repo.search_statement("postgresql", search_terms("NIFTY 24000"), limit=50)
    sql = str(stmt.compile(dialect=db.dialect, compile_kwargs={"literal_binds": True}))
    async with db.connect() as conn:
        await conn.execute(text("SET enable_seqscan = off"))
        plan = "\n".join((await conn.execute(text(f"EXPLAIN {sql}"))).scalars())
    assert "ix_symbols_search" in plan, plan
