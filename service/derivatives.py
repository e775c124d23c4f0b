"""Derivatives answers built from one snapshot of the contract: the exchanges' calendar day, the
option chain and the download status as the platform reads it (the export is
service/contract_export.py).

"Today" is the day in India (Asia/Kolkata), where every listed exchange trades: an instrument
expiring on a day is live until that day ends there, whatever the server's own time zone. The
day comes from the `today_in_ist` dependency, so that tests can pin it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import Request

from service.errors import NotFound
from service.models.symbols import ContractDownload
from service.symbol_index import SymbolIndex

IST = ZoneInfo("Asia/Kolkata")
# How long a download may report `downloading` before it is read as failed. To become the
# setting `symbol_download_timeout_seconds` (service/config.py) once that file takes it.


def ist_today(now: datetime | None = None) -> date:
    return (now or datetime.now(UTC)).astimezone(IST).date()


async def today_in_ist(request: Request) -> date:
    """Dependency: the exchanges' current day. An app whose `state.market_clock` is set (a
    callable returning a date: tests pin the day with it) reads that clock instead. The API
    routes are shared by every app instance, so FastAPI's `dependency_overrides` cannot reach
    them."""
    clock: Callable[[], date] | None = getattr(request.app.state, "market_clock", None)
    return clock() if clock is not None else ist_today()


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
) -> dict[str, Any]:
    """The chain of one underlying and expiry: one entry per strike with its call and put.

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
    strikes: dict[float | None, dict[str, Any]] = {}
    for i in chains[chosen]:
        strike = index.strike[i]
        pair = strikes.get(strike)
        if pair is None:
            pair = strikes[strike] = {"strike": strike, "CE": None, "PE": None}
        pair[index.instrumenttype[i] or "CE"] = index.row(i)
    pairs = list(strikes.values())
    if around is not None:
        nearest = sorted(pairs, key=lambda p: (abs((p["strike"] or 0.0) - around), p["strike"]))
        keep = {id(p) for p in nearest[:count]}
        pairs = [p for p in pairs if id(p) in keep]
    first = chains[chosen][0]
    return {
        "exchange": exchange,
        "underlying": index.name[first] or underlying,
        "expiry": chosen,
        "lotsize": index.lotsize[first],
        "tick_size": index.tick_size[first],
        "strikes": pairs,
    }


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
