"""PUT /api/v1/symbols: streamed CSV/NDJSON loads, validation by line, atomic replacement."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.repositories import symbol_load
from tests.contract import COLUMNS, Row, generate, put_contract, row, to_csv
from tests.support import RO_TOKEN, assert_problem, auth, eventually

CSV = {"content-type": "text/csv"}
HEADER = ",".join(COLUMNS)


async def db_rows(db: AsyncEngine) -> list[Row]:
    async with db.connect() as conn:
        result = await conn.execute(
            text(f"SELECT {', '.join(COLUMNS)} FROM symbols ORDER BY exchange, symbol")
        )
        return [dict(r._mapping) for r in result]


async def db_version(db: AsyncEngine) -> int | None:
    async with db.connect() as conn:
        return await conn.scalar(text("SELECT version FROM symbol_contract WHERE id = 1"))


def by_key(rows: list[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: (r["exchange"], r["symbol"]))


CONTRACT = generate(400, seed=11)


class TestLoad:
    @pytest.mark.parametrize("fmt", ["csv", "ndjson"])
    async def test_full_load_writes_every_row_and_answers_counts(self, client, db, fmt):
        response = await put_contract(client, CONTRACT, fmt)
        assert response.status_code == 200, response.text
        body = response.json()
        expected_counts: dict[str, int] = {}
        for r in CONTRACT:
            expected_counts[r["exchange"]] = expected_counts.get(r["exchange"], 0) + 1
        assert body["rows"] == 400
        assert body["exchanges"] == dict(sorted(expected_counts.items()))
        assert body["version"] == 1
        assert body["duration_ms"] > 0
        assert await db_rows(db) == by_key(CONTRACT)
        assert await db_version(db) == 1

    async def test_a_second_load_replaces_the_first_and_bumps_the_version(self, client, db):
        await put_contract(client, CONTRACT)
        other = generate(150, seed=12)
        response = await put_contract(client, other)
        assert response.status_code == 200, response.text
        assert response.json()["version"] == 2
        assert await db_rows(db) == by_key(other)
        stats = (await client.get("/api/v1/symbols/stats")).json()
        assert stats["rows"] == 150 and stats["version"] == 2

    async def test_csv_dialect_details(self, client, db):
        body = (
            "\ufeff"  # a BOM, as spreadsheets write it
            + "TICK_SIZE,Symbol,brsymbol,name,exchange,brexchange,token,expiry,strike,lotsize,"
            "instrumenttype,contract_value\r\n"
            '0.05,LT,LT-EQ,"LARSEN, TOUBRO ""L&T""",NSE,NSE,11483,,,1,EQ,ignored\r\n'
            "\r\n"
            '0.05,NIFTY28NOV2424000CE,NIFTY24NOV24000CE,"NIFTY\nFIFTY",NFO,NFO, 43512 ,'
            "28-nov-24,24000,25,CE,1\r\n"
        ).encode()
        response = await client.put("/api/v1/symbols", content=body, headers=CSV)
        assert response.status_code == 200, response.text
        assert await db_rows(db) == [
            row("NIFTY28NOV2424000CE", "NFO", brsymbol="NIFTY24NOV24000CE", name="NIFTY\nFIFTY",
                token="43512", expiry="28-NOV-24", strike=24000.0, lotsize=25,
                instrumenttype="CE"),
            row("LT", "NSE", name='LARSEN, TOUBRO "L&T"', token="11483"),
        ]  # fmt: skip

    async def test_ndjson_takes_numbers_and_nulls(self, client, db):
        body = (
            b'{"symbol": "USDINR27NOV2483.25CE", "brsymbol": "USDINR24NOV83.25CE", "name": "USDINR",'
            b' "exchange": "CDS", "brexchange": "CDS", "token": 8123, "expiry": "27-NOV-24",'
            b' "strike": 83.25, "lotsize": 1000.0, "instrumenttype": "CE", "tick_size": "0.0025"}\n'
            b"\n"
        )
        response = await client.put(
            "/api/v1/symbols", content=body, headers={"content-type": "application/x-ndjson"}
        )
        assert response.status_code == 200, response.text
        assert await db_rows(db) == [
            row("USDINR27NOV2483.25CE", "CDS", brsymbol="USDINR24NOV83.25CE", name="USDINR",
                token="8123", expiry="27-NOV-24", strike=83.25, lotsize=1000,
                instrumenttype="CE", tick_size=0.0025),
        ]  # fmt: skip

    async def test_a_chunked_body_arriving_in_pieces(self, client, db):
        rows = [*CONTRACT, row("ÉCLAIR", name="SOCIÉTÉ ₹ GÉNÉRALE"), row("ZÜRICH", "BSE")]
        payload = to_csv(rows)

        async def pieces():
            for at in range(0, len(payload), 777):  # cuts lines, and UTF-8 sequences, anywhere
                yield payload[at : at + 777]

        response = await client.put("/api/v1/symbols", content=pieces(), headers=CSV)
        assert response.status_code == 200, response.text
        assert await db_rows(db) == by_key(rows)

    async def test_large_loads_log_progress(self, client, caplog, monkeypatch):
        monkeypatch.setattr(symbol_load, "PROGRESS_ROWS", 100)
        payload = to_csv(CONTRACT)

        async def pieces():
            for at in range(0, len(payload), 4096):
                yield payload[at : at + 4096]

        with caplog.at_level(logging.INFO, logger="service.symbols"):
            response = await client.put("/api/v1/symbols", content=pieces(), headers=CSV)
        assert response.status_code == 200
        progress = [
            int(r.getMessage().split()[2])
            for r in caplog.records
            if "rows parsed" in r.getMessage()
        ]
        assert len(progress) >= 3 and progress == sorted(progress) and progress[-1] == 400
        assert any("symbols loaded: 400 rows, version 1" in r.getMessage() for r in caplog.records)

    async def test_read_only_token_cannot_load(self, client, db):
        response = await client.put(
            "/api/v1/symbols", content=to_csv(CONTRACT[:5]), headers={**CSV, **auth(RO_TOKEN)}
        )
        assert_problem(response, 403, "forbidden")
        assert await db_rows(db) == []


class TestPartialLoad:
    async def test_only_the_named_exchanges_are_replaced(self, client, db):
        await put_contract(client, CONTRACT)
        nfo = [r for r in generate(600, seed=13) if r["exchange"] == "NFO"][:30]
        cds = [r for r in generate(600, seed=13) if r["exchange"] == "CDS"][:5]
        response = await put_contract(client, nfo + cds, exchanges=["NFO", "CDS", "MCX"])
        assert response.status_code == 200, response.text
        assert response.json()["exchanges"] == {"CDS": 5, "MCX": 0, "NFO": 30}
        kept = [r for r in CONTRACT if r["exchange"] not in ("NFO", "CDS", "MCX")]
        assert await db_rows(db) == by_key(kept + nfo + cds)

    async def test_a_row_of_another_exchange_is_422_and_changes_nothing(self, client, db):
        await put_contract(client, CONTRACT)
        rows = [row("AAA", "NSE"), row("BBB", "BSE")]
        response = await put_contract(client, rows, exchanges=["NSE"])
        problem = assert_problem(response, 422, "validation")
        assert problem["errors"] == [
            {
                "loc": ["body", 3, "exchange"],
                "msg": "'BSE' is not among the exchanges replaced (NSE)",
                "type": "value_error",
            }
        ]
        assert await db_rows(db) == by_key(CONTRACT)
        assert await db_version(db) == 1

    async def test_an_empty_exchange_parameter_is_422(self, client, db):
        response = await client.put(
            "/api/v1/symbols?exchange=", content=to_csv([row("AAA")]), headers=CSV
        )
        assert_problem(response, 422, "validation")
        assert await db_rows(db) == []


def _csv(*lines: str) -> bytes:
    return ("\n".join([HEADER, *lines]) + "\n").encode()


GOOD = "RELIANCE,RELIANCE-EQ,RELIANCE INDUSTRIES,NSE,NSE,2885,,,1,EQ,0.05"


class TestBadInput:
    @pytest.mark.parametrize(
        "body, errors",
        [
            (
                b"symbol,brsymbol,name,exchange,token,expiry,strike,lotsize,instrumenttype,tick_size\n"
                + GOOD.encode(),
                [(["body", 1, "brexchange"], "missing column")],
            ),
            (
                _csv(GOOD, "NIFTY24FUT,NIFTY24FUT,NIFTY,NFO,NFO,77,28-NOV-24,abc,25,FUT,0.05"),
                [(["body", 3, "strike"], "must be a number")],
            ),
            (
                _csv("X,X,X,NSE,NSE,1,,,one,EQ,0.05", "Y,Y,Y,NSE,NSE,2,,,1,EQ,tiny"),
                [
                    (["body", 2, "lotsize"], "must be a whole number"),
                    (["body", 3, "tick_size"], "must be a number"),
                ],
            ),
            (
                _csv(GOOD, " ,X,X,NSE,NSE,1,,,1,EQ,0.05"),
                [(["body", 3, "symbol"], "must not be empty")],
            ),
            (
                _csv(GOOD, "X,X,X,,NSE,1,,,1,EQ,0.05"),
                [(["body", 3, "exchange"], "must not be empty")],
            ),
            (
                _csv(GOOD, "INFY,INFY-EQ,INFOSYS,NSE,NSE,1594,,,1,EQ,0.05", GOOD),
                [(["body", 4, "symbol"], "('RELIANCE', 'NSE') repeats line 2")],
            ),
            (
                _csv(GOOD, "X,X,X,NFO,NFO,1,31-FEB-24,100,1,CE,0.05"),
                [(["body", 3, "expiry"], "must be a date like 28-NOV-24")],
            ),
            (
                _csv(GOOD, "X,X,X,NFO,NFO,1,28-NOV-24,nan,1,CE,0.05"),
                [(["body", 3, "strike"], "must be a finite number")],
            ),
            (_csv(GOOD, "X,X,X,NSE"), [(["body", 3], "expected 11 fields, found 4")]),
            (_csv(), [(["body"], "the body has no rows (use DELETE to empty the contract)")]),
            (b"", [(["body"], "the body is empty: expected a header row and rows")]),
            (_csv(GOOD) + b"\xff\xfe\n", [(["body", 3], "the body is not valid UTF-8")]),
            (_csv('"X,X,X,NSE,NSE,1,,,1,EQ,0.05'), [(["body", 2], "a quoted field is not closed")]),
        ],
    )
    async def test_a_bad_csv_is_422_naming_lines_and_keeps_the_old_contract(
        self, client, db, body, errors
    ):
        await put_contract(client, CONTRACT)
        response = await client.put("/api/v1/symbols", content=body, headers=CSV)
        problem = assert_problem(response, 422, "validation")
        assert [(e["loc"], e["msg"]) for e in problem["errors"]] == errors
        assert await db_rows(db) == by_key(CONTRACT)
        assert await db_version(db) == 1
        lookup = await client.get(
            "/api/v1/tokens/lookup",
            params={"symbol": CONTRACT[0]["symbol"], "exchange": CONTRACT[0]["exchange"]},
        )
        assert lookup.json()["token"] == CONTRACT[0]["token"]

    @pytest.mark.parametrize(
        "line, errors",
        [
            (b"{not json}", [(["body", 2], "not a JSON object")]),
            (b"[1, 2]", [(["body", 2], "not a JSON object")]),
            (
                b'{"symbol": "X"}',
                [(["body", 2, c], "missing field") for c in COLUMNS if c != "symbol"],
            ),
            (
                b'{"symbol": "X", "brsymbol": "X", "name": null, "exchange": "NSE", "brexchange": null,'
                b' "token": true, "expiry": null, "strike": "1e999", "lotsize": 1.5,'
                b' "instrumenttype": ["EQ"], "tick_size": null}',
                [
                    (["body", 2, "token"], "must be a string"),
                    (["body", 2, "strike"], "must be a finite number"),
                    (["body", 2, "lotsize"], "must be a whole number"),
                    (["body", 2, "instrumenttype"], "must be a string"),
                ],
            ),
        ],
    )
    async def test_a_bad_ndjson_line_is_422(self, client, db, line, errors):
        good = b'{"symbol": "A", "brsymbol": "A", "name": null, "exchange": "NSE", "brexchange": null, "token": "1", "expiry": null, "strike": null, "lotsize": null, "instrumenttype": null, "tick_size": null}'
        response = await client.put(
            "/api/v1/symbols",
            content=good + b"\n" + line + b"\n",
            headers={"content-type": "application/x-ndjson"},
        )
        problem = assert_problem(response, 422, "validation")
        assert [(e["loc"], e["msg"]) for e in problem["errors"]] == errors
        assert await db_rows(db) == []
        assert await db_version(db) is None

    async def test_problems_are_capped_and_the_body_is_read_to_its_end(self, client, db):
        lines = [f"S{n},S{n},N,NSE,NSE,{n},,,x,EQ,0.05" for n in range(500)]
        response = await client.put("/api/v1/symbols", content=_csv(*lines), headers=CSV)
        problem = assert_problem(response, 422, "validation")
        assert len(problem["errors"]) == symbol_load.MAX_ERRORS
        assert problem["errors"][0]["loc"] == ["body", 2, "lotsize"]
        assert problem["detail"] == "line 2, lotsize: must be a whole number (and 19+ more)"
        assert await db_rows(db) == []

    @pytest.mark.parametrize(
        "content_type", ["application/json", "text/plain", "text/csv; charset=latin-1", None]
    )
    async def test_other_media_types_are_415(self, client, db, content_type):
        headers = {"content-type": content_type} if content_type else {}
        response = await client.put("/api/v1/symbols", content=_csv(GOOD), headers=headers)
        assert_problem(response, 415, "unsupported-media-type")
        assert await db_rows(db) == []

    async def test_a_body_over_the_upload_limit_is_413(self, client_factory, db):
        small = await client_factory(MAX_UPLOAD_BYTES=4096)
        rows = generate(200, seed=1)
        response = await put_contract(small, rows)
        assert_problem(response, 413, "payload-too-large")

        async def streamed():  # no Content-Length: the limit holds while streaming too
            yield to_csv(rows)

        response = await small.put("/api/v1/symbols", content=streamed(), headers=CSV)
        assert_problem(response, 413, "payload-too-large")
        assert await db_rows(db) == []


class TestAtomicity:
    async def test_readers_see_the_old_contract_or_the_new_one_never_a_mix(self, client, db):
        """A reader loop (batch lookups from memory, row counts from the database) runs while
        a load commits: every answer is wholly the old contract or wholly the new one."""
        old = generate(3000, seed=21)
        new = [{**r, "token": f"N{r['token']}"} for r in old]  # same symbols, new tokens
        await put_contract(client, old)
        sample = old[::97]
        batch = {"items": [{"symbol": r["symbol"], "exchange": r["exchange"]} for r in sample]}
        old_tokens = [r["token"] for r in sample]
        new_tokens = [r["token"] for r in new[::97]]
        seen: dict[str, int] = {"old": 0, "new": 0}
        counts: set[int] = set()
        done = asyncio.Event()

        async def memory_reader() -> None:
            while not done.is_set():
                answer = (await client.post("/api/v1/tokens/lookup", json=batch)).json()
                tokens = [item["token"] for item in answer["items"]]  # a miss would be None
                assert tokens in (old_tokens, new_tokens), tokens
                seen["old" if tokens == old_tokens else "new"] += 1
                await asyncio.sleep(0)

        async def database_reader() -> None:
            while not done.is_set():
                async with db.connect() as conn:
                    total, renewed = (
                        await conn.execute(
                            text(
                                "SELECT count(*), sum(CASE WHEN token LIKE 'N%' THEN 1 ELSE 0 END)"
                                " FROM symbols"
                            )
                        )
                    ).one()
                    counts.add(total * 10**6 + renewed)
                await asyncio.sleep(0.001)

        async def load() -> None:
            try:

                async def both_read_the_old_one() -> bool:
                    return bool(seen["old"] and counts)

                assert await eventually(both_read_the_old_one, timeout=10)
                response = await put_contract(client, new)
                assert response.status_code == 200, response.text

                async def both_saw_the_new_one() -> bool:
                    return bool(seen["new"]) and 3000 * 10**6 + 3000 in counts

                assert await eventually(both_saw_the_new_one, timeout=10)
            finally:
                done.set()

        await asyncio.gather(memory_reader(), database_reader(), load())
        assert counts == {3000 * 10**6, 3000 * 10**6 + 3000}, counts

    @pytest.mark.postgres_only
    async def test_schema_after_a_swap_still_matches_the_models(self, client, db):
        from alembic.autogenerate import compare_metadata
        from alembic.migration import MigrationContext

        from service.models import Base
        from service.models.base import compared

        await put_contract(client, CONTRACT)
        await put_contract(client, CONTRACT[:100], exchanges=["NFO"])

        def diff(sync: Any) -> list[Any]:
            context = MigrationContext.configure(
                sync, opts={"compare_type": True, "include_object": compared}
            )
            return [d for d in compare_metadata(context, Base.metadata) if "symbol" in repr(d)]

        async with db.connect() as conn:
            assert await conn.run_sync(diff) == []
            indexes = await conn.scalars(
                text("SELECT indexname FROM pg_indexes WHERE tablename = 'symbols' ORDER BY 1")
            )
            assert list(indexes) == [
                "ix_symbols_brsymbol_exchange",
                "ix_symbols_rank",
                "ix_symbols_search",
                "ix_symbols_token_exchange",
                "pk_symbols",
            ]


class TestInstances:
    async def test_a_new_instance_builds_its_index_from_the_database(self, client_factory, db):
        first = await client_factory()
        await put_contract(first, CONTRACT)
        second = await client_factory()
        target = CONTRACT[-1]
        response = await second.get(
            "/api/v1/tokens/lookup",
            params={"token": target["token"], "exchange": target["exchange"]},
        )
        assert response.status_code == 200
        assert response.json()["symbol"] == target["symbol"]
        assert (await second.get("/api/v1/symbols/stats")).json()["version"] == 1

    @pytest.mark.postgres_only
    async def test_a_load_through_one_instance_is_seen_by_another(self, client_factory):
        one = await client_factory()
        two = await client_factory()
        replacement = [{**r, "token": f"T{r['token']}"} for r in CONTRACT[:50]]

        def seen_by_two(target: Row):
            params = {"symbol": target["symbol"], "exchange": target["exchange"]}

            async def check() -> bool:
                response = await two.get("/api/v1/tokens/lookup", params=params)
                return response.status_code == 200 and response.json()["token"] == target["token"]

            return check

        await put_contract(one, CONTRACT)  # through `one` only
        assert await eventually(seen_by_two(CONTRACT[7]))
        response = await put_contract(one, replacement)
        assert response.status_code == 200
        assert await eventually(seen_by_two(replacement[7]))
        stats = (await two.get("/api/v1/symbols/stats")).json()
        assert stats["version"] == 2 and stats["rows"] == 50
