"""The master contract (`symtoken`) and the per-broker download status.

The contract goes in the way a daily load does (service/repositories/symbol_load.py): streamed,
validated, swapped in atomically, its version bumped and every instance told to rebuild its
in-memory index. Rows that load would refuse (no token, a repeated `(symbol, exchange)`, a bad
number) are left out first and reported, so they cannot sink the whole contract. A service that
holds a contract already keeps it: the platform reloads the contract every day anyway, and an
older legacy copy must not replace a newer one.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import orjson
from sqlalchemy import func, select

from service.errors import ValidationFailed
from service.legacy.context import Context
from service.legacy.convert import IST, Skip, boolean, day_of, integer, number, text, timestamp
from service.legacy.convert import optional_timestamp as maybe_timestamp
from service.legacy.report import TableReport
from service.legacy.source import LegacyFile, Row
from service.models.symbols import ContractDownload, Symbol
from service.repositories import symbol_load
from service.symbol_index import COLUMNS, parse_expiry

STATUSES = ("pending", "downloading", "success", "error")


def _symbol_row(legacy: Row) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for column in ("symbol", "brsymbol", "exchange", "token"):
        value = (text(legacy[column]) or "").strip()
        if not value:
            raise Skip(f"{column} missing")
        row[column] = value
    for column in ("name", "brexchange", "instrumenttype"):
        row[column] = (text(legacy[column]) or "").strip() or None
    expiry = (text(legacy["expiry"]) or "").strip()
    if expiry and parse_expiry(expiry) is None:
        raise Skip("expiry is not a date like 28-NOV-24")
    row["expiry"] = expiry.upper() or None
    row["strike"] = number(legacy["strike"], what="strike")
    row["tick_size"] = number(legacy["tick_size"], what="tick_size")
    lotsize = legacy["lotsize"]
    row["lotsize"] = None if lotsize in (None, "") else integer(lotsize, what="lotsize")
    return row


async def _ndjson(source: LegacyFile, ctx: Context, report: TableReport) -> AsyncIterator[bytes]:
    """The legacy rows the load would take, as NDJSON, a batch per chunk."""
    seen: dict[str, set[str]] = {}
    progress = ctx.progress(f"{source.label}.symtoken", source.count("symtoken"))
    for batch in source.stream("symtoken", ["id", *COLUMNS]):
        report.read += len(batch)
        lines = []
        for legacy in batch:
            try:
                row = _symbol_row(legacy)
            except Skip as reason:
                report.skip(str(reason), legacy["id"])
                continue
            symbols = seen.setdefault(row["exchange"], set())
            if row["symbol"] in symbols:
                report.skip("repeats an earlier (symbol, exchange)", legacy["id"])
                continue
            symbols.add(row["symbol"])
            lines.append(orjson.dumps(row))
        progress.advance(len(batch))
        if lines:
            yield b"\n".join(lines) + b"\n"
    progress.close()


async def import_contract(ctx: Context, source: LegacyFile) -> None:
    name = f"{source.label}.symtoken"
    report = ctx.report.table(name, "symbols")
    if not source.has("symtoken"):
        report.missing = True
        return
    ctx.not_imported(source, "symtoken", ("contract_value",))
    async with ctx.batch() as session:
        held = await session.scalar(select(func.count()).select_from(Symbol))
    if held:
        report.read = report.present = source.count("symtoken")
        report.note(f"the service holds a contract of {held} rows already: kept")
        return
    chunks = _ndjson(source, ctx, report)
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        return  # no row the load would take: nothing to replace the (empty) contract with
    chunks = _chain(first, chunks)
    if ctx.dry_run:
        parser = symbol_load.ContractParser("ndjson", None)
        async for chunk in chunks:
            parser.feed(chunk)
        parser.finish()
        rows, errors = parser.rows, parser.errors
    else:
        try:
            result = await symbol_load.load_contract(
                ctx.engine, ctx.sessionmaker, ctx.settings, chunks, "ndjson", None
            )
        except ValidationFailed as error:
            rows, errors = 0, error.errors or [{"msg": error.detail}]
        else:
            rows, errors = result.rows, []
    if errors:
        ctx.report.warnings.append(f"{name}: the contract was refused: {errors[0]}")
        report.skip("the contract as a whole was refused (see warnings)")
        return
    report.imported = rows


async def _chain(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


STATUS_COLUMNS = [
    "broker",
    "status",
    "message",
    "last_updated",
    "total_symbols",
    "is_ready",
    "last_download_time",
    "download_date",
    "exchange_stats",
    "download_duration_seconds",
]


def _status_row(legacy: Row) -> dict[str, Any]:
    broker = (text(legacy["broker"]) or "").strip()
    if not broker or len(broker) > 64:
        raise Skip("broker missing or too long")
    status = (text(legacy["status"]) or "pending").strip()
    if status not in STATUSES:
        raise Skip(f"status {status!r} unknown")
    try:
        stats = json.loads(legacy["exchange_stats"] or "{}")
    except (TypeError, ValueError):
        stats = {}
    if not isinstance(stats, dict) or not all(
        isinstance(k, str) and type(v) is int for k, v in stats.items()
    ):
        stats = {}
    return {
        "broker": broker,
        "status": status,
        "message": text(legacy["message"]),
        # datetime.now() of the install's machine: India time.
        "last_updated": timestamp(legacy["last_updated"], IST, what="last_updated"),
        "total_symbols": integer(legacy["total_symbols"], what="total_symbols", default=0),
        "is_ready": boolean(legacy["is_ready"], False),
        "exchange_stats": stats,
        "last_download_time": maybe_timestamp(legacy["last_download_time"], IST),
        "download_duration_seconds": number(
            legacy["download_duration_seconds"], what="download_duration_seconds"
        ),
        "download_date": day_of(legacy["download_date"]),
    }


async def import_contract_status(ctx: Context, source: LegacyFile) -> None:
    name = f"{source.label}.master_contract_status"
    report = ctx.report.table(name, "master_contract_status")
    if not source.has("master_contract_status"):
        report.missing = True
        return
    rows: dict[str, dict[str, Any]] = {}
    for batch in source.stream("master_contract_status", STATUS_COLUMNS, order=("broker",)):
        report.read += len(batch)
        for legacy in batch:
            try:
                row = _status_row(legacy)
            except Skip as reason:
                report.skip(str(reason), legacy["broker"])
                continue
            rows[row["broker"]] = row  # a row per broker: a handful in all
    async with ctx.batch() as session:
        present = set(
            await session.scalars(
                select(ContractDownload.broker).where(ContractDownload.broker.in_(rows))
            )
        )
        new = [row for broker, row in rows.items() if broker not in present]
        report.present += len(present)
        if ctx.write and new:
            await session.execute(ctx.insert(ContractDownload).on_conflict_do_nothing(), new)
        report.imported += len(new)
