"""A realistic master contract at any size, deterministic by seed (for tests and benchmarks).

Rows are in the platform's symbol format: equities `RELIANCE`, futures `NIFTY28NOV24FUT`, options
`NIFTY28NOV2424000CE` (`USDINR27NOV2483.25CE` for decimal strikes), expiries `28-NOV-24`, over
NSE, BSE, NFO, BFO, MCX, CDS, NSE_INDEX and BSE_INDEX in roughly the proportions of a real
broker download (derivatives ~90 %). Broker symbols follow Zerodha's style (`NIFTY24NOV24000CE`,
weekly `NIFTY24D0524000CE`). The same `(rows, seed)` always gives the same rows in the same order.

    rows = generate(200_000, seed=7)
    write_csv("contract.csv", rows)          # or to_csv(rows) -> bytes, write_ndjson / to_ndjson
"""

from __future__ import annotations

import csv
import io
import itertools
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import IO, Any

import orjson

from service.symbol_index import COLUMNS  # the contract's own column order

Row = dict[str, Any]

# Share of rows per exchange (AliceBlue's 165k-row download, issue #1774, BCD folded into CDS).
_SHARES = {
    "NFO": 0.46,
    "BFO": 0.24,
    "MCX": 0.10,
    "BSE": 0.08,
    "CDS": 0.10,
    "NSE": 0.02,
}
_INDEX_ROWS = {"NSE_INDEX": 57, "BSE_INDEX": 53}

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_WEEKLY_CODE = "123456789OND"  # Zerodha's month letter in weekly option symbols
_BASE = date(2024, 11, 28)  # a Thursday: NIFTY's monthly expiry in November 2024

_EQUITIES = (
    ("RELIANCE", "RELIANCE INDUSTRIES LTD", 1280.0),
    ("TCS", "TATA CONSULTANCY SERV LT", 4150.0),
    ("HDFCBANK", "HDFC BANK LTD", 1790.0),
    ("INFY", "INFOSYS LIMITED", 1870.0),
    ("ICICIBANK", "ICICI BANK LTD.", 1300.0),
    ("SBIN", "STATE BANK OF INDIA", 840.0),
    ("ITC", "ITC LTD", 470.0),
    ("LT", "LARSEN & TOUBRO LTD.", 3650.0),
    ("AXISBANK", "AXIS BANK LIMITED", 1150.0),
    ("KOTAKBANK", "KOTAK MAHINDRA BANK LTD", 1760.0),
    ("BHARTIARTL", "BHARTI AIRTEL LIMITED", 1600.0),
    ("HINDUNILVR", "HINDUSTAN UNILEVER LTD.", 2400.0),
    ("BAJFINANCE", "BAJAJ FINANCE LIMITED", 6800.0),
    ("MARUTI", "MARUTI SUZUKI INDIA LTD.", 11100.0),
    ("TATAMOTORS", "TATA MOTORS LIMITED", 790.0),
    ("TATASTEEL", "TATA STEEL LIMITED", 142.0),
    ("WIPRO", "WIPRO LTD", 290.0),
    ("SUNPHARMA", "SUN PHARMACEUTICAL IND L", 1800.0),
    ("NTPC", "NTPC LTD", 360.0),
    ("ONGC", "OIL AND NATURAL GAS CORP.", 255.0),
    ("ADANIENT", "ADANI ENTERPRISES LIMITED", 2400.0),
    ("ASIANPAINT", "ASIAN PAINTS LIMITED", 2450.0),
    ("TITAN", "TITAN COMPANY LIMITED", 3250.0),
    ("ULTRACEMCO", "ULTRATECH CEMENT LIMITED", 11300.0),
    ("NESTLEIND", "NESTLE INDIA LIMITED", 2250.0),
    ("POWERGRID", "POWER GRID CORP. LTD.", 330.0),
    ("M&M", "MAHINDRA & MAHINDRA LTD", 2950.0),
    ("BAJAJ-AUTO", "BAJAJ AUTO LIMITED", 9400.0),
    ("HCLTECH", "HCL TECHNOLOGIES LTD", 1850.0),
    ("TECHM", "TECH MAHINDRA LIMITED", 1720.0),
)
_SYLLABLES = (
    "AB", "AD", "AL", "AM", "AN", "AR", "BA", "BE", "BH", "CH", "DA", "DE", "DI", "GA", "GO", "HI",
    "IN", "JA", "JI", "KA", "KE", "KO", "LA", "LI", "MA", "ME", "MI", "NA", "NI", "NO", "PA", "PO",
    "RA", "RE", "RO", "SA", "SH", "SI", "SU", "TA", "TE", "TI", "UL", "VA", "VE", "VI", "YA", "ZE",
)  # fmt: skip
_SUFFIXES = ("LTD", "LIMITED", "INDUSTRIES LTD", "FINANCE LTD", "PHARMA LTD", "INFRA LTD")
_NSE_INDICES = (
    ("NIFTY", "NIFTY 50"),
    ("BANKNIFTY", "NIFTY BANK"),
    ("FINNIFTY", "NIFTY FIN SERVICE"),
    ("MIDCPNIFTY", "NIFTY MID SELECT"),
    ("NIFTYNXT50", "NIFTY NEXT 50"),
    ("INDIAVIX", "INDIA VIX"),
    ("NIFTYIT", "NIFTY IT"),
    ("NIFTYPHARMA", "NIFTY PHARMA"),
)
_BSE_INDICES = (("SENSEX", "SENSEX"), ("BANKEX", "BANKEX"), ("SENSEX50", "SNSX50"))


@dataclass(frozen=True)
class _Underlying:
    name: str
    spot: float
    step: float
    lotsize: int
    tick: float
    weekly: bool = False
    weekday: int = 3  # expiry weekday (Thursday)


_NFO_INDICES = (
    _Underlying("NIFTY", 24000, 50, 25, 0.05, weekly=True),
    _Underlying("BANKNIFTY", 51000, 100, 15, 0.05),
    _Underlying("FINNIFTY", 23800, 50, 25, 0.05),
    _Underlying("MIDCPNIFTY", 12000, 25, 50, 0.05),
)
_BFO_INDICES = (
    _Underlying("SENSEX", 80000, 100, 10, 0.05, weekly=True, weekday=4),
    _Underlying("BANKEX", 58000, 100, 15, 0.05),
)
_MCX = (
    _Underlying("GOLD", 76000, 100, 1, 1.0),
    _Underlying("GOLDM", 76000, 100, 10, 1.0),
    _Underlying("SILVER", 90000, 250, 1, 1.0),
    _Underlying("SILVERM", 90000, 250, 5, 1.0),
    _Underlying("CRUDEOIL", 5800, 50, 100, 1.0),
    _Underlying("NATURALGAS", 250, 5, 1250, 0.1),
    _Underlying("COPPER", 800, 5, 2500, 0.05),
    _Underlying("ZINC", 270, 2.5, 5000, 0.05),
)
_CDS = (
    _Underlying("USDINR", 84.0, 0.25, 1000, 0.0025, weekly=True, weekday=4),
    _Underlying("EURINR", 89.0, 0.25, 1000, 0.0025),
    _Underlying("GBPINR", 107.0, 0.25, 1000, 0.0025),
    _Underlying("JPYINR", 55.5, 0.25, 1000, 0.0025),
)


def generate(rows: int, seed: int = 0, base: date = _BASE) -> list[Row]:
    """`rows` instruments (exactly), unique by (symbol, exchange), the same for the same seed.
    Expiries start at `base` (a Thursday: the month's last for monthly expiries)."""
    return list(iter_rows(rows, seed, base))


def iter_rows(rows: int, seed: int = 0, base: date = _BASE) -> Iterator[Row]:
    rng = random.Random(seed)
    counts = _allocate(rows)
    equities = _equity_universe(rng, max(counts["NSE"], counts["BSE"], 200))
    tokens = _Tokens(rng)
    yield from itertools.islice(
        _indices("NSE_INDEX", "NSE", _NSE_INDICES, tokens), counts["NSE_INDEX"]
    )
    yield from itertools.islice(
        _indices("BSE_INDEX", "BSE", _BSE_INDICES, tokens), counts["BSE_INDEX"]
    )
    yield from itertools.islice(_equities("NSE", equities, tokens), counts["NSE"])
    yield from itertools.islice(_equities("BSE", equities, tokens), counts["BSE"])
    stocks = [
        _Underlying(
            sym, spot, _strike_step(spot), rng.choice((125, 250, 300, 500, 700, 1100)), 0.05
        )
        for sym, _name, spot in equities[:180]
    ]
    yield from itertools.islice(
        _derivatives("NFO", _NFO_INDICES + tuple(stocks), tokens, base), counts["NFO"]
    )
    yield from itertools.islice(
        _derivatives("BFO", _BFO_INDICES + tuple(stocks[:40]), tokens, base), counts["BFO"]
    )
    yield from itertools.islice(_derivatives("MCX", _MCX, tokens, base), counts["MCX"])
    yield from itertools.islice(_derivatives("CDS", _CDS, tokens, base), counts["CDS"])


def _allocate(rows: int) -> dict[str, int]:
    counts = {name: min(n, rows // 1000) for name, n in _INDEX_ROWS.items()}
    rest = rows - sum(counts.values())
    shares = {name: rest * share for name, share in _SHARES.items()}
    counts.update({name: int(value) for name, value in shares.items()})
    # Largest remainder, so the total is exactly `rows`.
    by_remainder = sorted(_SHARES, key=lambda n: shares[n] - int(shares[n]), reverse=True)
    for name in by_remainder[: rows - sum(counts.values())]:
        counts[name] += 1
    return counts


class _Tokens:
    """Unique numeric tokens per exchange, in a seeded but irregular order."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._next: dict[str, int] = {}

    def __call__(self, exchange: str) -> str:
        base = self._next.get(exchange, 1000 + 100_000 * (_stable_hash(exchange) % 9))
        value = base + 1 + int(self._rng.random() * 7)
        self._next[exchange] = value
        return str(value)


def _stable_hash(exchange: str) -> int:
    return sum(map(ord, exchange))  # stable across processes, unlike hash()


def _equity_universe(rng: random.Random, count: int) -> list[tuple[str, str, float]]:
    universe = list(_EQUITIES)
    seen = {sym for sym, _, _ in universe}
    while len(universe) < count:
        word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))
        if word in seen:
            continue
        seen.add(word)
        name = f"{word} {rng.choice(_SUFFIXES)}"
        universe.append((word, name, round(rng.uniform(20, 5000), 1)))
    return universe


def _indices(
    exchange: str, brexchange: str, known: tuple[tuple[str, str], ...], tokens: _Tokens
) -> Iterator[Row]:
    for n in itertools.count():
        symbol, name = (
            known[n] if n < len(known) else (f"{known[0][0]}IDX{n}", f"{known[0][1]} {n}")
        )
        yield _row(
            symbol, name, name, exchange, brexchange, tokens(exchange), None, None, 1, "INDEX", 0.05
        )


def _equities(
    exchange: str, universe: list[tuple[str, str, float]], tokens: _Tokens
) -> Iterator[Row]:
    for symbol, name, _spot in universe:
        brsymbol = f"{symbol}-EQ" if exchange == "NSE" else symbol
        tick = 0.05 if exchange == "NSE" else 0.01
        yield _row(
            symbol, brsymbol, name, exchange, exchange, tokens(exchange), None, None, 1, "EQ", tick
        )


@dataclass(frozen=True)
class _Expiry:
    text: str  # 28-NOV-24
    symbol_part: str  # 28NOV24
    broker_part: str  # 24NOV (monthly) or 24N28 (weekly)
    monthly: bool

    @classmethod
    def of(cls, d: date, monthly: bool) -> _Expiry:
        dd, mon, yy = f"{d.day:02d}", _MONTHS[d.month - 1], f"{d.year % 100:02d}"
        broker = f"{yy}{mon}" if monthly else f"{yy}{_WEEKLY_CODE[d.month - 1]}{dd}"
        return cls(f"{dd}-{mon}-{yy}", f"{dd}{mon}{yy}", broker, monthly)


def _derivatives(
    exchange: str, underlyings: tuple[_Underlying, ...], tokens: _Tokens, base: date = _BASE
) -> Iterator[Row]:
    expiries = {
        u.name: [_Expiry.of(d, monthly) for d, monthly in _expiry_dates(u, base)]
        for u in underlyings
    }
    for u in underlyings:  # a future per monthly expiry
        for expiry in expiries[u.name]:
            if expiry.monthly:
                yield _future(exchange, u, expiry, tokens(exchange))
    # Then options, nearest strikes first, spread over every underlying and expiry.
    for k in itertools.count():
        offset = (k + 1) // 2 * (1 if k % 2 else -1)
        for u in underlyings:
            strike = u.spot + offset * u.step
            if strike <= 0:
                continue
            strike_text = _strike_text(strike)
            for expiry in expiries[u.name]:
                for kind in ("CE", "PE"):
                    yield _row(
                        f"{u.name}{expiry.symbol_part}{strike_text}{kind}",
                        f"{u.name}{expiry.broker_part}{strike_text}{kind}",
                        u.name, exchange, exchange, tokens(exchange), expiry.text, strike,
                        u.lotsize, kind, u.tick,
                    )  # fmt: skip


def _expiry_dates(u: _Underlying, base: date = _BASE) -> list[tuple[date, bool]]:
    """(expiry, is_monthly): three monthly expiries, plus weekly ones for weekly underlyings."""
    monthly = []
    year, month = base.year, base.month
    for _ in range(3):
        monthly.append(_last_weekday(year, month, u.weekday))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    out = dict.fromkeys(monthly, True)
    if u.weekly:
        first = base + timedelta(days=(u.weekday - base.weekday()) % 7)
        for week in range(10):
            out.setdefault(first + timedelta(weeks=week), False)
    return sorted(out.items())


def _last_weekday(year: int, month: int, weekday: int) -> date:
    nxt = date(year + (month == 12), month % 12 + 1, 1)
    last = nxt - timedelta(days=1)
    return last - timedelta(days=(last.weekday() - weekday) % 7)


def _strike_step(spot: float) -> float:
    for limit, step in (
        (100, 1.0),
        (250, 2.5),
        (500, 5.0),
        (1000, 10.0),
        (2500, 20.0),
        (5000, 50.0),
    ):
        if spot < limit:
            return step
    return 100.0


def _strike_text(strike: float) -> str:
    return str(int(strike)) if strike == int(strike) else f"{strike:g}"


def _future(exchange: str, u: _Underlying, expiry: _Expiry, token: str) -> Row:
    return _row(
        f"{u.name}{expiry.symbol_part}FUT", f"{u.name}{expiry.broker_part}FUT", u.name, exchange,
        exchange, token, expiry.text, 0.0, u.lotsize, "FUT", u.tick,
    )  # fmt: skip


def _row(
    symbol: str,
    brsymbol: str,
    name: str | None,
    exchange: str,
    brexchange: str | None,
    token: str,
    expiry: str | None,
    strike: float | None,
    lotsize: int | None,
    instrumenttype: str | None,
    tick_size: float | None,
) -> Row:
    return dict(
        zip(
            COLUMNS,
            (
                symbol,
                brsymbol,
                name,
                exchange,
                brexchange,
                token,
                expiry,
                strike,
                lotsize,
                instrumenttype,
                tick_size,
            ),
            strict=True,
        )
    )


# --- writers -----------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return _strike_text(value) if value == int(value) else repr(value)
    return str(value)


def write_csv_to(stream: IO[str], rows: Iterable[Row]) -> None:
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_cell(row[c]) for c in COLUMNS])


def write_ndjson_to(stream: IO[bytes], rows: Iterable[Row]) -> None:
    for row in rows:
        stream.write(orjson.dumps(row) + b"\n")


def to_csv(rows: Iterable[Row]) -> bytes:
    buffer = io.StringIO()
    write_csv_to(buffer, rows)
    return buffer.getvalue().encode()


def to_ndjson(rows: Iterable[Row]) -> bytes:
    buffer = io.BytesIO()
    write_ndjson_to(buffer, rows)
    return buffer.getvalue()


def write_csv(path: str | Path, rows: Iterable[Row]) -> Path:
    path = Path(path)
    with path.open("w", newline="") as stream:
        write_csv_to(stream, rows)
    return path


def write_ndjson(path: str | Path, rows: Iterable[Row]) -> Path:
    path = Path(path)
    with path.open("wb") as stream:
        write_ndjson_to(stream, rows)
    return path


# --- for tests ---------------------------------------------------------------------------------


def row(symbol: str, exchange: str = "NSE", **fields: Any) -> Row:
    """One hand-written row: an equity unless fields say otherwise."""
    values: Row = {
        "symbol": symbol,
        "brsymbol": f"{symbol}-EQ",
        "name": symbol,
        "exchange": exchange,
        "brexchange": exchange,
        "token": str(1000 + sum(map(ord, symbol + exchange))),
        "expiry": None,
        "strike": None,
        "lotsize": 1,
        "instrumenttype": "EQ",
        "tick_size": 0.05,
    }
    values.update(fields)
    return values


def encode(rows: Iterable[Row], fmt: str = "csv") -> tuple[bytes, dict[str, str]]:
    """A body and its headers for PUT /api/v1/symbols."""
    if fmt == "csv":
        return to_csv(rows), {"content-type": "text/csv"}
    return to_ndjson(rows), {"content-type": "application/x-ndjson"}


async def put_contract(
    client: Any, rows: Iterable[Row], fmt: str = "csv", exchanges: Iterable[str] = ()
) -> Any:
    """PUT the rows (through any httpx client) and return the response."""
    body, headers = encode(rows, fmt)
    params = [("exchange", e) for e in exchanges]
    return await client.put("/api/v1/symbols", content=body, headers=headers, params=params)
