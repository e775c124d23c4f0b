"""symbols: one row, expiries, statistics, deletes, and the OpenAPI description."""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.contract import put_contract, row
from tests.support import RO_TOKEN, assert_problem, auth


def fut(name: str, expiry: str, exchange: str = "NFO") -> dict:
    day, month, year = expiry.split("-")
    return row(f"{name}{day}{month}{year}FUT", exchange, name=name, expiry=expiry, strike=0.0,
               instrumenttype="FUT")  # fmt: skip


def opt(name: str, expiry: str, strike: int, kind: str, exchange: str = "NFO") -> dict:
    day, month, year = expiry.split("-")
    return row(f"{name}{day}{month}{year}{strike}{kind}", exchange, name=name, expiry=expiry,
               strike=float(strike), instrumenttype=kind)  # fmt: skip


ROWS = [
    row("RELIANCE", "NSE", name="RELIANCE INDUSTRIES LTD", token="2885"),
    row("RELIANCE", "BSE", token="500325"),
    row("M&M", "NSE", token="2031"),
    row("A/B", "NSE", token="1"),
    # Expiries across a year end, given out of order; one only for options, one on BFO.
    fut("NIFTY", "30-JAN-25"),
    fut("NIFTY", "26-DEC-24"),
    fut("NIFTY", "28-NOV-24"),
    opt("NIFTY", "05-DEC-24", 24000, "CE"),
    opt("NIFTY", "05-DEC-24", 24000, "PE"),
    opt("NIFTY", "28-NOV-24", 24000, "CE"),
    opt("NIFTY", "02-JAN-25", 24000, "PE"),
    fut("BANKNIFTY", "26-DEC-24"),
    fut("SENSEX", "27-DEC-24", "BFO"),
]


async def symbol_count(db: AsyncEngine, exchange: str | None = None) -> int:
    async with db.connect() as conn:
        if exchange is None:
            return await conn.scalar(text("SELECT count(*) FROM symbols"))
        return await conn.scalar(
            text("SELECT count(*) FROM symbols WHERE exchange = :e"), {"e": exchange}
        )


class TestGetSymbol:
    async def test_one_row_by_exchange_and_symbol(self, client):
        await put_contract(client, ROWS)
        response = await client.get("/api/v1/symbols/NSE/RELIANCE")
        assert response.status_code == 200
        assert response.json() == {
            "symbol": "RELIANCE",
            "brsymbol": "RELIANCE-EQ",
            "name": "RELIANCE INDUSTRIES LTD",
            "exchange": "NSE",
            "brexchange": "NSE",
            "token": "2885",
            "expiry": None,
            "strike": None,
            "lotsize": 1,
            "instrumenttype": "EQ",
            "tick_size": 0.05,
        }

    @pytest.mark.parametrize("path, symbol", [("NSE/M%26M", "M&M"), ("NSE/A/B", "A/B")])
    async def test_symbols_with_reserved_characters(self, client, path, symbol):
        await put_contract(client, ROWS)
        response = await client.get(f"/api/v1/symbols/{path}")
        assert response.status_code == 200
        assert response.json()["symbol"] == symbol

    @pytest.mark.parametrize("path", ["NFO/RELIANCE", "NSE/reliance", "NSE/NOPE"])
    async def test_unknown_is_404(self, client, path):
        await put_contract(client, ROWS)
        assert_problem(await client.get(f"/api/v1/symbols/{path}"), 404, "not-found")


class TestExpiries:
    @pytest.mark.parametrize(
        "params, expected",
        [
            (
                {"name": "NIFTY", "exchange": "NFO"},
                ["28-NOV-24", "05-DEC-24", "26-DEC-24", "02-JAN-25", "30-JAN-25"],
            ),
            ({"name": "NIFTY", "exchange": "NFO", "instrumenttype": "FUT"},
             ["28-NOV-24", "26-DEC-24", "30-JAN-25"]),
            ({"name": "NIFTY", "instrumenttype": "PE"}, ["05-DEC-24", "02-JAN-25"]),
            ({"exchange": "BFO"}, ["27-DEC-24"]),
            ({"instrumenttype": "FUT"}, ["28-NOV-24", "26-DEC-24", "27-DEC-24", "30-JAN-25"]),
            ({"name": "NIFTY", "exchange": "BFO"}, []),
            ({"name": "RELIANCE"}, []),
        ],
    )  # fmt: skip
    async def test_distinct_expiries_in_date_order(self, client, params, expected):
        await put_contract(client, ROWS)
        response = await client.get(
            "/api/v1/symbols/expiries", params={**params, "include_expired": "true"}
        )
        assert response.status_code == 200
        assert response.json() == {"items": expected}


class TestStats:
    async def test_before_any_load(self, client):
        response = await client.get("/api/v1/symbols/stats")
        assert response.status_code == 200
        assert response.json() == {"rows": 0, "exchanges": {}, "version": 0, "loaded_at": None}

    async def test_after_a_load(self, client, db):
        before = datetime.now().astimezone()
        await put_contract(client, ROWS)
        body = (await client.get("/api/v1/symbols/stats")).json()
        assert body["rows"] == len(ROWS) == await symbol_count(db)
        assert body["exchanges"] == {"BFO": 1, "BSE": 1, "NFO": 8, "NSE": 3}
        assert body["version"] == 1
        loaded_at = datetime.fromisoformat(body["loaded_at"])
        assert loaded_at.tzinfo is not None and loaded_at >= before.replace(microsecond=0)


class TestDelete:
    async def test_deleting_exchanges_removes_their_rows_only(self, client, db):
        await put_contract(client, ROWS)
        response = await client.delete(
            "/api/v1/symbols", params=[("exchange", "NSE"), ("exchange", "BFO")]
        )
        assert response.status_code == 200
        assert response.json() == {"deleted": 4}
        assert await symbol_count(db, "NSE") == 0 and await symbol_count(db, "NFO") == 8
        stats = (await client.get("/api/v1/symbols/stats")).json()
        assert stats["exchanges"] == {"BSE": 1, "NFO": 8} and stats["version"] == 2
        gone = await client.get(
            "/api/v1/tokens/lookup", params={"token": "2885", "exchange": "NSE"}
        )
        assert_problem(gone, 404, "not-found")  # this instance's index caught up at once
        kept = await client.get(
            "/api/v1/tokens/lookup", params={"token": "500325", "exchange": "BSE"}
        )
        assert kept.status_code == 200

    async def test_deleting_without_exchange_empties_the_contract(self, client, db):
        await put_contract(client, ROWS)
        response = await client.delete("/api/v1/symbols")
        assert response.json() == {"deleted": len(ROWS)}
        assert await symbol_count(db) == 0
        assert (await client.get("/api/v1/symbols/stats")).json()["rows"] == 0

    async def test_deleting_nothing_keeps_the_version(self, client):
        await put_contract(client, ROWS)
        response = await client.delete("/api/v1/symbols", params={"exchange": "MCX"})
        assert response.json() == {"deleted": 0}
        assert (await client.get("/api/v1/symbols/stats")).json()["version"] == 1

    async def test_a_read_only_token_cannot_delete(self, client, db):
        await put_contract(client, ROWS)
        response = await client.delete("/api/v1/symbols", headers=auth(RO_TOKEN))
        assert_problem(response, 403, "forbidden")
        assert await symbol_count(db) == len(ROWS)


class TestOpenApi:
    async def test_every_route_is_described_with_its_problems(self, client):
        spec = (await client.get("/openapi.json")).json()
        paths = spec["paths"]
        expected = {
            ("/api/v1/symbols", "put"): {"200", "413", "415", "422"},
            ("/api/v1/symbols", "delete"): {"200", "422"},
            ("/api/v1/symbols/search", "get"): {"200", "422"},
            ("/api/v1/symbols/expiries", "get"): {"200"},
            ("/api/v1/symbols/stats", "get"): {"200"},
            ("/api/v1/symbols/underlyings", "get"): {"200", "422"},
            ("/api/v1/symbols/option-chain", "get"): {"200", "404", "422"},
            ("/api/v1/symbols/status", "get"): {"200"},
            ("/api/v1/symbols/status/{broker}", "get"): {"200", "404", "422"},
            ("/api/v1/symbols/status/{broker}", "put"): {"200", "422"},
            ("/api/v1/symbols/{exchange}/{symbol}", "get"): {"200", "404"},
            ("/api/v1/tokens/lookup", "get"): {"200", "404", "422"},
            ("/api/v1/tokens/lookup", "post"): {"200", "400", "413", "422"},
        }
        for (path, method), statuses in expected.items():
            operation = paths[path][method]
            assert statuses <= set(operation["responses"]), (path, method)
            assert operation["summary"] and operation.get("description"), (path, method)
            assert "$ref" in str(operation["responses"]["200"]), (path, method)
        upload = paths["/api/v1/symbols"]["put"]["requestBody"]["content"]
        assert set(upload) == {"text/csv", "application/x-ndjson"}


class TestStartUp:
    async def test_a_new_instance_builds_its_index_once(self, client, client_factory, caplog):
        """The listener's first connect and the warm-up both ask for the index; with 200k rows a
        second build would double the time to ready."""
        await put_contract(client, [row("RELIANCE", "NSE", token="2885")])
        caplog.set_level("INFO", logger="service.symbols")
        caplog.clear()
        second = await client_factory()
        lookup = await second.get("/api/v1/tokens/lookup?exchange=NSE&symbol=RELIANCE")
        assert lookup.json()["token"] == "2885"
        builds = [r for r in caplog.records if r.getMessage().startswith("symbol index at")]
        assert len(builds) == 1, [r.getMessage() for r in builds]
