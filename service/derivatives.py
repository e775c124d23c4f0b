"""Answers built from one snapshot of the contract: the exchanges' calendar day, the search, the
option chain and the download status as the platform reads it (the export is
service/contract_export.py).

"Today" is the day in India (Asia/Kolkata), where every listed exchange trades: an instrument
expiring on a day is live until that day ends there, whatever the server's own time zone. The
day comes from the app's market clock (`AppState.market_clock`, `ist_today` unless a test pins
it), read by the `today_in_ist` dependency and by the fast lane.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from fastapi import Request

from service.errors import NotFound
from service.models.symbols import ContractDownload
from service.symbol_index import SymbolIndex, instrument_types, search_terms

IST = ZoneInfo("Asia/Kolkata")


def ist_today(now: datetime | None = None) -> date:
    return (now or datetime.now(UTC)).astimezone(IST).date()


async def today_in_ist(request: Request) -> date:
    """Dependency: the exchanges' current day, by the app's market clock (AppState)."""
    clock: Callable[[], date] = request.app.state.store.market_clock
    return clock()


# --- option chain -------------------------------------------------------------------------------


def option_chain(
    index: SymbolIndex,
    *,
    exchange: str,
    underlying: str,
    expiry: str | None,
    today: date,
    around: float | None,
    count: int,
) -> bytes:
    """The chain of one underlying and expiry as JSON: one entry per strike with its call and
    put, by strike.

    Without `expiry`, the nearest one not expired on `today`; with `around`, only the `count`
    strikes nearest to it. NotFound names the underlying or expiry that has no options."""
    chains = index.option_chains(exchange, underlying)
    if not chains:
        raise NotFound(f"No options of underlying {underlying!r} on {exchange!r}.")
    if expiry is not None:
        chosen = expiry.upper()
        if chosen not in chains:
            raise NotFound(f"No options of {underlying!r} on {exchange!r} expire on {expiry!r}.")
    else:
        live = [
            (day, text)
            for text in chains
            if (day := index.expiry_date(text)) is not None and day >= today
        ]
        if not live:
            raise NotFound(
                f"Every option expiry of {underlying!r} on {exchange!r} is past"
                f" ({today.isoformat()}, IST)."
            )
        chosen = min(live)[1]
    chain = index.chain_json(exchange, underlying, chosen)
    entries = chain.entries
    if around is not None:
        strikes = chain.strikes
        nearest = sorted(
            range(len(strikes)),
            key=lambda k: (
                abs((strikes[k] or 0.0) - around),
                strikes[k] is None,
                strikes[k] or 0.0,
            ),
        )
        entries = [entries[k] for k in sorted(nearest[:count])]
    return orjson.dumps(
        {
            "exchange": exchange,
            "underlying": chain.underlying,
            "expiry": chosen,
            "lotsize": chain.lotsize,
            "tick_size": chain.tick_size,
            "strikes": orjson.Fragment(b"[" + b",".join(entries) + b"]"),
        }
    )


# --- search -------------------------------------------------------------------------------------


def search(
    index: SymbolIndex,
    q: str | None,
    *,
    exchange: str | None,
    underlying: str | None,
    instrumenttype: str | None,
    expiry: str | None,
    strike_min: float | None,
    strike_max: float | None,
    limit: int,
) -> bytes:
    """`GET /symbols/search`'s answer from the index, as JSON."""
    found = index.search(
        search_terms(q),
        exchange=exchange,
        types=instrument_types(instrumenttype),
        expiry=expiry.upper() if expiry else None,
        underlying=underlying,
        strike_min=strike_min,
        strike_max=strike_max,
        limit=limit,
    )
    return orjson.dumps({"items": [index.row(i) for i in found]})


# --- download status ----------------------------------------------------------------------------


def download_status(row: ContractDownload, now: datetime, timeout_s: float) -> dict[str, Any]:
    """A stored status as the platform reads it: a download that has reported `downloading` for
    longer than `timeout_s` (SYMBOL_DOWNLOAD_TIMEOUT) died without saying so, and reads as an
    error."""
    status, message = row.status, row.message
    if status == "downloading" and now - row.last_updated > timedelta(seconds=timeout_s):
        status = "error"
        message = (
            f"The download started at {row.last_updated.isoformat()} reported nothing for"
            f" {timeout_s / 60:g} minutes; it is taken for failed."
        )
    return {
        "broker": row.broker,
        "status": status,
        "message": message,
        "is_ready": row.is_ready and status == "success",
        "total_symbols": row.total_symbols,
        "exchange_stats": dict(sorted((row.exchange_stats or {}).items())),
        "last_download_time": row.last_download_time,
        "download_duration_seconds": row.download_duration_seconds,
        "download_date": row.download_date,
        "last_updated": row.last_updated,
    }


def last_downloaded_broker(rows: list[ContractDownload]) -> str | None:
    done = [(r.last_download_time, r.broker) for r in rows if r.last_download_time is not None]
    return max(done)[1] if done else None
