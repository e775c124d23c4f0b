"""GET /api/v1/symbols/export: the contract streamed in the format PUT /api/v1/symbols loads, so
that a round trip gives the same contract; one exchange alone; both formats."""

from __future__ import annotations

from datetime import date
from typing import Any

import orjson
import pytest
from sqlalchemy import text

from service.symbol_index import COLUMNS
from tests.contract import generate, put_contract, row

CONTRACT = [
    *generate(3000, seed=21, base=date(2026, 11, 26)),
    # Text the CSV writer must quote, and fields left empty.
    row("ODD,ONE", "NSE", name='SAYS "HI", TWICE', brexchange=None, tick_size=None),
    row("EMPTY", "BSE", name=None, lotsize=None, brsymbol="EMPTY"),
]
MEDIA = {"csv": "text/csv", "ndjson": "application/x-ndjson"}


async def stored(db: Any) -> set[tuple[Any, ...]]:
    async with db.connect() as conn:
        result = await conn.execute(text(f"SELECT {', '.join(COLUMNS)} FROM symbols"))
        return {tuple(r) for r in result}


def as_tuples(rows: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
    return {tuple(r[c] for c in COLUMNS) for r in rows}


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
async def test_round_trip_gives_the_same_contract(client, db, fmt):
    assert (await put_contract(client, CONTRACT)).status_code == 200
    before = await stored(db)
    assert before == as_tuples(CONTRACT)
    response = await client.get("/api/v1/symbols/export", params={"format": fmt})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(MEDIA[fmt])
    assert "attachment" in response.headers["content-disposition"]
    exported = response.content
    assert (await client.delete("/api/v1/symbols")).json()["deleted"] == len(CONTRACT)
    assert await stored(db) == set()
    reloaded = await client.put(
        "/api/v1/symbols", content=exported, headers={"content-type": MEDIA[fmt]}
    )
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["rows"] == len(CONTRACT)
    assert await stored(db) == before
    again = await client.get("/api/v1/symbols/export", params={"format": fmt})
    assert again.content == exported


async def test_one_exchange(client):
    await put_contract(client, CONTRACT)
    response = await client.get(
        "/api/v1/symbols/export", params={"exchange": "MCX", "format": "ndjson"}
    )
    items = [orjson.loads(line) for line in response.content.splitlines()]
    expected = [r for r in CONTRACT if r["exchange"] == "MCX"]
    assert len(items) == len(expected) > 250  # more than one search block
    assert as_tuples(items) == as_tuples(expected)
    csv_body = (await client.get("/api/v1/symbols/export", params={"exchange": "MCX"})).text
    lines = csv_body.splitlines()
    assert lines[0] == ",".join(COLUMNS) and len(lines) == len(expected) + 1


async def test_an_empty_contract_exports_the_header_only(client):
    response = await client.get("/api/v1/symbols/export")
    assert response.status_code == 200
    assert response.text == ",".join(COLUMNS) + "\n"
    nothing = await client.get("/api/v1/symbols/export", params={"format": "ndjson"})
    assert nothing.content == b""


async def test_bad_format_is_422(client):
    response = await client.get("/api/v1/symbols/export", params={"format": "xml"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["query", "format"]
