"""symbols: the master contract. Loads and deletes go to the database and then rebuild the
in-memory index; every read is answered from that index (search falls back to the database's
trigram index only while no index is built)."""

from __future__ import annotations

import time
from datetime import date
from typing import Annotated, Any
from urllib.parse import quote

import orjson
from fastapi import Depends, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import StringConstraints

from service.contract_export import ExportFormat, export_contract
from service.db import SessionDep
from service.derivatives import (
    download_status,
    last_downloaded_broker,
    option_chain,
    search,
    today_in_ist,
)
from service.errors import (
    DatabaseUnavailable,
    NotFound,
    UnsupportedMediaType,
    ValidationFailed,
    problems,
)
from service.models.base import utcnow
from service.repositories import symbol_load
from service.repositories import symbols as symbols_repo
from service.routers.base import domain_router
from service.schemas.base import Deleted, Items
from service.schemas.symbols import (
    BROKER_PATTERN,
    DEFAULT_CHAIN_COUNT,
    DEFAULT_SEARCH_LIMIT,
    EXPIRY_PATTERN,
    MAX_CHAIN_COUNT,
    MAX_EXCHANGE,
    MAX_INSTRUMENT_TYPE,
    MAX_QUERY_TERMS,
    MAX_SEARCH_LIMIT,
    MAX_STRIKE,
    MAX_UNDERLYING,
    DownloadStatus,
    DownloadStatusList,
    DownloadStatusUpdate,
    OptionChain,
    SymbolLoadRead,
    SymbolRead,
    SymbolStats,
)
from service.schemas.types import NUL_FREE, NUL_FREE_NOT_BLANK
from service.state import AppState, IndexDep, StateDep
from service.symbol_index import fold, instrument_types, search_terms

router = domain_router("/symbols", "symbols")

# The version check that catches a missed notification (the bus also re-checks on reconnect).

_EXPORTED = {
    "description": "The contract, streamed.",
    "content": {
        "text/csv": {"schema": {"type": "string"}},
        "application/x-ndjson": {"schema": {"type": "string"}},
    },
}

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

# One exchange of a repeatable ?exchange=: not blank, NUL-free, as long as the column allows.
ExchangeItem = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=NUL_FREE_NOT_BLANK)
]
# A list, never null, in the schema: absent is every exchange.
ExchangesQuery = Annotated[
    list[ExchangeItem],
    Query(
        description="Repeatable. Limit the operation to these exchanges (absent: all of them).",
        default_factory=list,
    ),
]


def _json(body: Any) -> Response:
    # Rows come from the index, already the response's shape: serialised directly.
    return _json_bytes(orjson.dumps(body))


def _json_bytes(body: bytes) -> Response:
    return Response(body, media_type="application/json")


def _exchanges(values: list[str]) -> frozenset[str] | None:
    if not values:
        return None
    return frozenset(v.strip() for v in values)


ExchangeQuery = Annotated[
    str | None,
    Query(description="Only this exchange's rows.", max_length=MAX_EXCHANGE, pattern=NUL_FREE,
          examples=["NFO"]),
]  # fmt: skip
UnderlyingQuery = Annotated[
    str | None,
    Query(description="The underlying (the rows' `name`), case-insensitive.", max_length=MAX_UNDERLYING,
          pattern=NUL_FREE, examples=["NIFTY"]),
]  # fmt: skip
InstrumentTypeQuery = Annotated[
    str | None,
    Query(
        description="An instrument type (`FUT`, `CE`, `PE`, `PERPFUT`, `EQ`, ...), or a group:"
        " `options` (CE and PE) or `futures` (FUT and PERPFUT). Case-insensitive.",
        max_length=MAX_INSTRUMENT_TYPE,
        pattern=NUL_FREE,
        examples=["options"],
    ),
]
ExpiryQuery = Annotated[
    str | None,
    Query(description="DD-MMM-YY (or DD-MMM-YYYY), case-insensitive.", pattern=EXPIRY_PATTERN,
          examples=["03-DEC-26"]),
]  # fmt: skip
StrikeQuery = Annotated[float | None, Query(ge=0, le=MAX_STRIKE, allow_inf_nan=False)]
BrokerPath = Annotated[str, Path(pattern=BROKER_PATTERN, examples=["zerodha"])]
TodayDep = Annotated[date, Depends(today_in_ist)]


@router.put(
    "",
    response_model=SymbolLoadRead,
    responses=problems(413, 415),
    openapi_extra=_UPLOAD,
)
async def load_symbols(
    request: Request,
    state: StateDep,
    today: TodayDep,
    exchange: ExchangesQuery,
    broker: Annotated[
        str | None,
        Query(
            description="The broker whose contract this is: its download status records the"
            " load (`success`, duration, rows per exchange; `error` when the body is refused).",
            pattern=BROKER_PATTERN,
        ),
    ] = None,
) -> SymbolLoadRead:
    """Replace the master contract (or only `exchange`s) with a CSV or NDJSON upload, atomically."""
    started = time.perf_counter()
    fmt = symbol_load.media_format(request.headers.get("content-type"))
    if fmt is None:
        raise UnsupportedMediaType("Send the contract as text/csv or application/x-ndjson (UTF-8).")
    # No session dependency: it would begin a write transaction (on SQLite, take the write lock)
    # before the body is read and hold it for the whole upload. The load opens its own, short,
    # once the body is parsed, and commits it.
    try:
        result = await symbol_load.load_contract(
            state.engine,
            state.sessionmaker,
            state.settings,
            request.stream(),
            fmt,
            _exchanges(exchange),
        )
    except ValidationFailed as refused:
        if broker is not None:
            async with state.write_sessionmaker() as session:
                await symbols_repo.report_status(
                    session, broker, "error", f"The contract was refused: {refused.detail}"[:2000]
                )
                await session.commit()
        raise
    # The answer comes once this instance's index holds the new contract.
    index = await state.runtime.symbols.refresh()
    duration_ms = round((time.perf_counter() - started) * 1000, 1)
    if broker is not None:
        async with state.write_sessionmaker() as session:
            await symbols_repo.record_success(
                session,
                broker,
                total=index.size,
                exchange_stats=dict(sorted(index.counts.items())),
                duration_s=duration_ms / 1000,
                day=today,
            )
            await session.commit()
    return SymbolLoadRead(
        rows=result.rows,
        exchanges=result.exchanges,
        version=result.version,
        duration_ms=duration_ms,
    )


@router.get("/search", response_model=Items[SymbolRead])
async def search_symbols(
    request: Request,
    q: Annotated[
        str | None,
        Query(
            description="Whitespace-separated terms; each must match.",
            max_length=MAX_QUERY_TERMS,
            pattern=NUL_FREE,
            examples=["nifty 24000 ce"],
        ),
    ] = None,
    exchange: ExchangeQuery = None,
    underlying: UnderlyingQuery = None,
    instrumenttype: InstrumentTypeQuery = None,
    expiry: ExpiryQuery = None,
    strike_min: StrikeQuery = None,
    strike_max: StrikeQuery = None,
    limit: Annotated[int, Query(ge=1, le=MAX_SEARCH_LIMIT)] = DEFAULT_SEARCH_LIMIT,
) -> Response:
    """Search the contract, at most `limit` rows, whatever the combination of parameters.

    Every term of `q` matches the symbol, broker symbol, name or token (or equals the strike);
    every filter given must hold. With `q`: the exact symbol first, then rows whose underlying
    is the first term, whose underlying starts with it, whose symbol starts with it, then the
    rest. Without `q`: by underlying, expiry (chronologically), strike and instrument type; with
    no filter either, that is the first `limit` rows of the whole contract in that order."""
    state: AppState = request.app.state.store
    index = state.runtime.symbols.index
    if index is not None:
        return _json_bytes(
            search(
                index,
                q,
                exchange=exchange,
                underlying=underlying,
                instrumenttype=instrumenttype,
                expiry=expiry,
                strike_min=strike_min,
                strike_max=strike_max,
                limit=limit,
            )
        )
    terms = search_terms(q)
    if not terms:
        raise DatabaseUnavailable("The symbol index is not built yet; retry shortly.")
    # No session dependency on this route: a search served from memory (all of them, once the
    # index is built) would pay for one it does not use.
    async with state.sessionmaker() as session:
        items = await symbols_repo.search_symbols(
            session,
            terms,
            exchange=exchange,
            types=instrument_types(instrumenttype),
            expiry=expiry.upper() if expiry else None,
            underlying=underlying,
            strike_min=strike_min,
            strike_max=strike_max,
            limit=limit,
        )
    return _json({"items": items})


@router.get("/expiries", response_model=Items[str])
async def list_expiries(
    index: IndexDep,
    today: TodayDep,
    name: Annotated[
        str | None,
        Query(
            description="The underlying, case-insensitive.",
            max_length=128,
            pattern=NUL_FREE,
            examples=["NIFTY"],
        ),
    ] = None,
    underlying: UnderlyingQuery = None,
    exchange: ExchangeQuery = None,
    instrumenttype: InstrumentTypeQuery = None,
    include_expired: Annotated[
        bool, Query(description="Also expiries before today (IST).")
    ] = False,
) -> Items[str]:
    """Distinct expiries of the matching instruments, in date order; those past (judged in IST)
    only with `include_expired`. `underlying` and `name` are the same filter (both: both hold)."""
    if name is not None and underlying is not None and fold(name) != fold(underlying):
        return Items(items=[])
    return Items(
        items=index.expiries(
            name=underlying if underlying is not None else name,
            exchange=exchange,
            types=instrument_types(instrumenttype),
            today=None if include_expired else today,
        )
    )


@router.get("/underlyings", response_model=Items[str])
async def list_underlyings(
    index: IndexDep,
    today: TodayDep,
    exchange: ExchangeQuery = None,
    include_futures: Annotated[
        bool, Query(description="Also underlyings with a future not expired today (IST).")
    ] = False,
) -> Items[str]:
    """Underlyings (the rows' `name`) that have options, sorted; with `include_futures`, also
    those that have a live future."""
    return Items(
        items=index.underlyings(exchange=exchange, include_futures=include_futures, today=today)
    )


@router.get("/option-chain", response_model=OptionChain, responses=problems(404))
async def get_option_chain(
    index: IndexDep,
    today: TodayDep,
    exchange: Annotated[str, Query(max_length=MAX_EXCHANGE, pattern=NUL_FREE, examples=["NFO"])],
    underlying: Annotated[
        str,
        Query(
            description="Case-insensitive.",
            max_length=MAX_UNDERLYING,
            pattern=NUL_FREE,
            examples=["NIFTY"],
        ),
    ],
    expiry: Annotated[
        str | None,
        Query(
            description="DD-MMM-YY; the nearest expiry not past (IST) when omitted.",
            pattern=EXPIRY_PATTERN,
            examples=["03-DEC-26"],
        ),
    ] = None,
    around: Annotated[
        float | None,
        Query(
            description="Keep only the `count` strikes nearest to this price.",
            ge=0,
            le=MAX_STRIKE,
            allow_inf_nan=False,
            examples=[24000],
        ),
    ] = None,
    count: Annotated[
        int, Query(description="How many strikes `around` keeps.", ge=1, le=MAX_CHAIN_COUNT)
    ] = DEFAULT_CHAIN_COUNT,
) -> Response:
    """Calls and puts of one underlying and expiry, one entry per strike, by strike."""
    return _json_bytes(
        option_chain(
            index,
            exchange=exchange,
            underlying=underlying,
            expiry=expiry,
            today=today,
            around=around,
            count=count,
        )
    )


@router.get("/export", response_class=StreamingResponse, responses={200: _EXPORTED})
async def export_symbols(
    index: IndexDep,
    exchange: ExchangeQuery = None,
    format: Annotated[
        ExportFormat, Query(description="`csv` (with a header row) or `ndjson`.")
    ] = "csv",
) -> StreamingResponse:
    """The contract (or one exchange) in the format `PUT /api/v1/symbols` loads, streamed: a
    round trip gives the same contract."""
    media = "text/csv; charset=utf-8" if format == "csv" else "application/x-ndjson"
    name = f"symbols-{exchange or 'all'}-v{index.version}.{format}".replace("/", "_")
    return StreamingResponse(
        export_contract(index, exchange, format),
        media_type=media,
        headers={"content-disposition": f'attachment; filename="{quote(name)}"'},
    )


def _timeout(state: AppState) -> float:
    return state.settings.SYMBOL_DOWNLOAD_TIMEOUT


@router.get("/status", response_model=DownloadStatusList)
async def list_download_statuses(session: SessionDep, state: StateDep) -> DownloadStatusList:
    """Every broker's contract download status, and the broker loaded last."""
    rows = await symbols_repo.download_statuses(session)
    now = utcnow()
    return DownloadStatusList(
        items=[DownloadStatus(**download_status(row, now, _timeout(state))) for row in rows],
        last_downloaded_broker=last_downloaded_broker(rows),
    )


@router.get("/status/{broker}", response_model=DownloadStatus, responses=problems(404))
async def get_download_status(
    broker: BrokerPath, session: SessionDep, state: StateDep
) -> DownloadStatus:
    """One broker's contract download status."""
    row = await symbols_repo.download_status(session, broker)
    if row is None:
        raise NotFound(f"No download status for broker {broker!r}.")
    return DownloadStatus(**download_status(row, utcnow(), _timeout(state)))


@router.put("/status/{broker}", response_model=DownloadStatus)
async def put_download_status(
    broker: BrokerPath, body: DownloadStatusUpdate, session: SessionDep, state: StateDep
) -> DownloadStatus:
    """The platform's loader reports a download starting (`downloading`) or failing (`error`).
    A `downloading` report older than the timeout reads as `error`."""
    await symbols_repo.report_status(session, broker, body.status, body.message)
    await session.commit()
    row = await symbols_repo.download_status(session, broker)
    assert row is not None
    return DownloadStatus(**download_status(row, utcnow(), _timeout(state)))


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
async def delete_symbols(session: SessionDep, state: StateDep, exchange: ExchangesQuery) -> Deleted:
    """Delete the rows of `exchange`s (every row when none is given)."""
    deleted = await symbols_repo.delete_symbols(session, sorted(_exchanges(exchange) or ()))
    await session.commit()  # as for a load: answer once this instance's index has caught up
    await state.runtime.symbols.refresh()
    return Deleted(deleted=deleted)
