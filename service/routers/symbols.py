"""symbols: the master contract. Loads and deletes go to the database and then rebuild the
in-memory index; every read is answered from that index (search falls back to the database's
trigram index only while no index is built)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import orjson
from fastapi import Query, Request, Response

from service.db import SessionDep
from service.errors import (
    NotFound,
    UnsupportedMediaType,
    ValidationFailed,
    problems,
)
from service.repositories import symbol_load
from service.repositories import symbols as symbols_repo
from service.routers.base import domain_router
from service.schemas.base import Deleted, Items
from service.schemas.symbols import SymbolLoadRead, SymbolRead, SymbolStats
from service.state import AppState, IndexDep, StateDep
from service.symbol_index import search_terms

router = domain_router("/symbols", "symbols")

MAX_LIMIT = 1000
# The version check that catches a missed notification (the bus also re-checks on reconnect).

_UPLOAD = {
    "requestBody": {
        "required": True,
        "description": "A header row naming the columns of a symbol row, then one row per line"
        " (CSV), or one JSON object per line (NDJSON). Streamed; up to 512 MiB.",
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            "application/x-ndjson": {"schema": {"type": "string"}},
        },
    }
}

ExchangesQuery = Annotated[
    list[str] | None,
    Query(description="Repeatable. Limit the operation to these exchanges.", min_length=1),
]


def _json(body: Any) -> Response:
    # Rows come from the index, already the response's shape: serialised directly.
    return Response(orjson.dumps(body), media_type="application/json")


def _exchanges(values: list[str] | None) -> frozenset[str] | None:
    if values is None:
        return None
    cleaned = frozenset(v.strip() for v in values)
    if "" in cleaned:
        raise ValidationFailed.field(["query", "exchange"], "must not be empty")
    return cleaned


@router.put(
    "",
    response_model=SymbolLoadRead,
    responses=problems(413, 415),
    openapi_extra=_UPLOAD,
)
async def load_symbols(
    request: Request, state: StateDep, exchange: ExchangesQuery = None
) -> SymbolLoadRead:
    """Replace the master contract (or only `exchange`s) with a CSV or NDJSON upload, atomically."""
    started = time.perf_counter()
    fmt = symbol_load.media_format(request.headers.get("content-type"))
    if fmt is None:
        raise UnsupportedMediaType("Send the contract as text/csv or application/x-ndjson (UTF-8).")
    # No session dependency: it would begin a write transaction (on SQLite, take the write lock)
    # before the body is read and hold it for the whole upload. The load opens its own, short,
    # once the body is parsed, and commits it.
    result = await symbol_load.load_contract(
        state.engine,
        state.sessionmaker,
        state.settings,
        request.stream(),
        fmt,
        _exchanges(exchange),
    )
    # The answer comes once this instance's index holds the new contract.
    await state.runtime.symbols.refresh()
    return SymbolLoadRead(
        rows=result.rows,
        exchanges=result.exchanges,
        version=result.version,
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
    )


@router.get("/search", response_model=Items[SymbolRead])
async def search_symbols(
    request: Request,
    q: Annotated[str | None, Query(description="Whitespace-separated terms.")] = None,
    exchange: str | None = None,
    instrumenttype: str | None = None,
    expiry: Annotated[str | None, Query(examples=["28-NOV-24"])] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
) -> Response:
    """Search: every term matches symbol, brsymbol, name or token (or the strike); best first."""
    terms = search_terms(q)
    if not terms and not exchange:
        raise ValidationFailed.field(["query", "q"], "give search terms, an exchange, or both")
    expiry = expiry.upper() if expiry else None
    state: AppState = request.app.state.store
    index = state.runtime.symbols.index
    if index is None:
        # No session dependency on this route: a search served from memory (all of them, once
        # the index is built) would pay for one it does not use.
        async with state.sessionmaker() as session:
            items = await symbols_repo.search_symbols(
                session,
                terms,
                exchange=exchange,
                instrumenttype=instrumenttype,
                expiry=expiry,
                limit=limit,
            )
    else:
        found = index.search(
            terms, exchange=exchange, instrumenttype=instrumenttype, expiry=expiry, limit=limit
        )
        items = [index.row(i) for i in found]
    return _json({"items": items})


@router.get("/expiries", response_model=Items[str])
async def list_expiries(
    index: IndexDep,
    name: Annotated[str | None, Query(description="The underlying.", examples=["NIFTY"])] = None,
    exchange: Annotated[str | None, Query(examples=["NFO"])] = None,
    instrumenttype: Annotated[str | None, Query(examples=["FUT", "CE", "PE"])] = None,
) -> Items[str]:
    """Distinct expiries of the matching instruments, in date order."""
    return Items(items=index.expiries(name=name, exchange=exchange, instrumenttype=instrumenttype))


@router.get("/stats", response_model=SymbolStats)
async def symbol_stats(index: IndexDep) -> SymbolStats:
    """Rows per exchange, and the contract's version and load time."""
    return SymbolStats(
        rows=index.size,
        exchanges=dict(sorted(index.counts.items())),
        version=index.version,
        loaded_at=index.loaded_at,
    )


@router.get("/{exchange}/{symbol:path}", response_model=SymbolRead, responses=problems(404))
async def get_symbol(exchange: str, symbol: str, index: IndexDep) -> Response:
    """One instrument by exchange and symbol."""
    i = index.find(exchange, symbol=symbol)
    if i is None:
        raise NotFound(f"No symbol {symbol!r} on {exchange!r}.")
    return _json(index.row(i))


@router.delete("", response_model=Deleted)
async def delete_symbols(
    session: SessionDep, state: StateDep, exchange: ExchangesQuery = None
) -> Deleted:
    """Delete the rows of `exchange`s (every row when none is given)."""
    deleted = await symbols_repo.delete_symbols(session, sorted(_exchanges(exchange) or ()))
    await session.commit()  # as for a load: answer once this instance's index has caught up
    await state.runtime.symbols.refresh()
    return Deleted(deleted=deleted)
