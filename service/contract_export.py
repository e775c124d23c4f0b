"""The contract's export (`GET /symbols/export`): the contract, or one exchange, streamed in the
format `PUT /symbols` loads, chunk by chunk."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterator
from operator import itemgetter
from typing import Any, Literal

import orjson

from service.symbol_index import BLOCK_SHIFT, COLUMNS, SymbolIndex

EXPORT_ROWS = 2_000  # rows per chunk written to the client

ExportFormat = Literal["csv", "ndjson"]


def _export_rows(index: SymbolIndex, exchange: str | None) -> Iterator[list[int]]:
    """Row ids in chunks of about EXPORT_ROWS, of one exchange or all."""
    if exchange is None:
        for first in range(0, index.size, EXPORT_ROWS):
            yield list(range(first, min(first + EXPORT_ROWS, index.size)))
        return
    exchanges = index.exchange
    step = 1 << BLOCK_SHIFT
    chunk: list[int] = []
    for block in index.blocks_of(exchange):
        first = block * step
        chunk.extend(
            i for i in range(first, min(first + step, index.size)) if exchanges[i] == exchange
        )
        if len(chunk) >= EXPORT_ROWS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def export_contract(
    index: SymbolIndex, exchange: str | None, fmt: ExportFormat
) -> AsyncIterator[bytes]:
    """The contract (or one exchange) in the format `PUT /symbols` loads, chunk by chunk: only
    one chunk of text exists at a time, and the snapshot it reads stays whole while it runs."""
    columns = [getattr(index, c) for c in COLUMNS]
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        for ids in _export_rows(index, exchange):
            # Column by column, then zipped: no Python code runs per row (csv writes None as
            # an empty field, which the load reads back as None).
            picked: list[Any] = list(map(itemgetter(*ids), columns))
            if len(ids) == 1:  # itemgetter of one item gives it, not a tuple of it
                picked = [(value,) for value in picked]
            writer.writerows(zip(*picked, strict=True))
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
        if buffer.tell():
            yield buffer.getvalue().encode()
        return
    for ids in _export_rows(index, exchange):
        yield b"".join(
            orjson.dumps(dict(zip(COLUMNS, (column[i] for column in columns), strict=True))) + b"\n"
            for i in ids
        )
