"""GET /api/v1/symbols/export: the contract streamed in the format PUT /api/v1/symbols loads, so
that a round trip gives the same contract; one exchange alone; both formats. The CSV writer
against csv.writer on awkward values."""

from __future__ import annotations

import csv
import io
import random
from datetime import date
from typing import Any

import orjson
import pytest
from sqlalchemy import text

from service.contract_export import EXPORT_ROWS, export_contract
from service.symbol_index import COLUMNS, IndexBuilder, SymbolIndex
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


# --- text that needs care -----------------------------------------------------------------------

# Names the CSV must quote (comma, quote, CR, LF), or must not confuse with an empty field.
AWKWARD = [
    row("CR", "NSE", name="CARRIAGE\rRETURN"),
    row("LF", "NSE", name="TWO\nLINES", brsymbol='SAYS "A\r\nB"'),
    row("CRLF,Q", "BSE", name='"QUOTED",\r\nALL', brexchange=None),
    row("NONE", "NSE", name="None", brsymbol="None", brexchange="None"),
    row("EMPTY", "NSE", name=None, brexchange=None, lotsize=None, instrumenttype=None),
    row("ÜNICODE", "BSE", name="ÉLAN, “CURLY” ₹", token="७७७"),
    row("SPACED", "NSE", name="INNER  SPACES ,"),
]


async def test_round_trip_of_awkward_text(client, db):
    # Loaded from NDJSON: the CSV helper of tests.contract leaves a CR unquoted, as csv.writer
    # does under a "\n" line terminator, and the load would then refuse its own input.
    contract = [*generate(500, seed=5, base=date(2026, 11, 26)), *AWKWARD]
    assert (await put_contract(client, contract, "ndjson")).status_code == 200
    before = await stored(db)
    assert before == as_tuples(contract)
    exported = (await client.get("/api/v1/symbols/export")).content
    parsed = list(csv.reader(io.StringIO(exported.decode(), newline="")))
    assert parsed[0] == list(COLUMNS)
    assert {tuple(cells) for cells in parsed[1:]} == {
        tuple("" if v is None else str(v) for v in r) for r in before
    }
    await client.delete("/api/v1/symbols")
    reloaded = await client.put(
        "/api/v1/symbols", content=exported, headers={"content-type": "text/csv"}
    )
    assert reloaded.status_code == 200, reloaded.text
    assert await stored(db) == before


# --- the CSV writer against csv.writer ----------------------------------------------------------

# The pieces of the generated text: every character csv quotes, spaces at the ends, the words
# None and null, non-ASCII, empty.
PIECES = ["A", "nifty", " ", ",", '"', '""', "\r", "\n", "\r\n", "None", "null", "é", "₹", "🙂", ""]
FLOATS = [1e-05, 0.05, 24000.0, 83.25, 0.1 + 0.2, 1e16, 123456789.125, -0.5, 0.0]
INTS = [0, 1, 15, 1800, -3, 2**31 - 1]


def awkward_rows(count: int, seed: int) -> list[tuple[Any, ...]]:
    """Rows in COLUMNS order: random text of awkward pieces (None too, where the column may be
    empty), floats and ints; unique by (symbol, exchange), in search-rank order."""
    rng = random.Random(seed)

    def words(nullable: bool) -> str | None:
        if nullable and rng.random() < 0.2:
            return None
        return "".join(rng.choices(PIECES, k=rng.randint(0, 4)))

    def number(values: list[Any]) -> Any:
        return None if rng.random() < 0.25 else rng.choice(values)

    rows = {}
    for i in range(count):
        symbol = f"{words(False)}{i}"  # unique
        exchange = rng.choice(["NSE", 'N,F"O', "None"])
        rows[symbol, exchange] = (
            symbol, words(False), words(True), exchange, words(True), words(False),
            words(True), number(FLOATS), number(INTS), words(True), number(FLOATS),
        )  # fmt: skip
    return sorted(rows.values(), key=lambda r: (len(r[0]), r[0], r[3]))


def snapshot(rows: list[tuple[Any, ...]]) -> SymbolIndex:
    builder = IndexBuilder(1, None)
    builder.add_rows(rows)
    return builder.finish()


async def exported(index: SymbolIndex, exchange: str | None) -> str:
    return b"".join([chunk async for chunk in export_contract(index, exchange, "csv")]).decode()


def written(rows: list[tuple[Any, ...]], lineterminator: str) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=lineterminator)
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    return buffer.getvalue()


def parsed(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_csv_reads_back_as_csv_writer_writes(seed):
    rows = awkward_rows(3 * EXPORT_ROWS + 17, seed)  # several chunks and a short last one
    index = snapshot(rows)
    # The snapshot's values, which the export writes (equal numbers share one object in it).
    values = [tuple(index.row(i).values()) for i in range(index.size)]
    assert len(values) == len(rows)
    text = await exported(index, None)
    expected = [list(COLUMNS)] + [["" if v is None else str(v) for v in r] for r in values]
    assert parsed(text) == expected
    # csv.writer quotes a CR only when it is part of the line terminator.
    assert parsed(text) == parsed(written(values, "\r\n"))
    # Byte for byte what csv.writer writes under "\n", for the rows without a CR.
    plain = [r for r in values if not any(isinstance(v, str) and "\r" in v for v in r)]
    assert 0 < len(plain) < len(values)
    assert await exported(snapshot(plain), None) == written(plain, "\n")


async def test_csv_of_one_exchange():
    rows = awkward_rows(3 * EXPORT_ROWS, seed=4)
    index = snapshot(rows)
    for exchange in ("NSE", 'N,F"O', "None"):
        picked = [tuple(index.row(i).values()) for i in range(index.size)]
        picked = [r for r in picked if r[3] == exchange]
        assert len(picked) > EXPORT_ROWS // 2
        text = await exported(index, exchange)
        assert parsed(text) == [list(COLUMNS)] + [
            ["" if v is None else str(v) for v in r] for r in picked
        ]
    assert await exported(index, "BSE") == ",".join(COLUMNS) + "\n"


async def test_csv_of_a_single_row():
    index = snapshot([("A", "A", None, "NSE", None, "1", None, 0.05, None, "", 1e-05)])
    assert await exported(index, None) == ",".join(COLUMNS) + "\nA,A,,NSE,,1,,0.05,,,1e-05\n"
    assert await exported(index, "NSE") == await exported(index, None)
