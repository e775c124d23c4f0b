"""The contract's export (`GET /symbols/export`): the contract, or one exchange, streamed in the
format `PUT /symbols` loads, chunk by chunk. Only one chunk of text exists at a time, and the
snapshot it reads stays whole while it runs.

The CSV is written column by column rather than by `csv.writer`, whose per-field work made the
export four times as slow (it must keep pace with PostgreSQL's `COPY ... TO STDOUT`). The text is what `csv.writer(lineterminator="\\n")` writes, field for
field: a field is quoted only when it holds `"`, `,`, `\\r` or `\\n` (csv.writer leaves a `\\r`
unquoted under that line terminator, which breaks the record; here it is quoted), inner quotes
doubled; None is an empty field, which the load reads back as None; numbers are written as
`str()` writes them.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator, Sequence
from itertools import repeat
from operator import itemgetter
from typing import Any, Literal

import orjson

from service.symbol_index import BLOCK_SHIFT, COLUMNS, SymbolIndex

EXPORT_ROWS = 2_000  # rows per chunk written to the client

ExportFormat = Literal["csv", "ndjson"]

_NUMBERS = frozenset({"strike", "lotsize", "tick_size"})  # the other columns hold text
_HEADER = (",".join(COLUMNS) + "\n").encode()
_SPECIAL = re.compile('[",\r\n]')  # a field holding one of these is quoted
_BLANK = {None: ""}


class _NumberTexts(dict[Any, str]):
    """The text of each number of a column, written once per distinct value and export: most
    repeat (strikes, lot sizes, tick sizes), and a lookup costs a fraction of `str(float)`.
    Keyed by value, which is exact because a snapshot holds one object per distinct number
    (IndexBuilder shares them): 1 and 1.0, or 0.0 and -0.0, never both appear."""

    def __missing__(self, value: Any) -> str:
        text = self[value] = "" if value is None else str(value)
        return text


def _text_fields(values: Sequence[Any]) -> Sequence[str]:
    """A text column's fields (str or None): None blanked, quoted only where a value needs it.
    Joining the column tells both at C speed: whether it holds a None (the join fails) and
    whether any value needs quoting."""
    fields: Sequence[str] = values
    try:
        joined = "".join(fields)
    except TypeError:
        fields = list(map(_BLANK.get, values, values))
        joined = "".join(fields)  # a TypeError again: not text, a bug upstream
    if '"' in joined or "," in joined or "\n" in joined or "\r" in joined:
        return [
            '"' + field.replace('"', '""') + '"' if _SPECIAL.search(field) else field
            for field in fields
        ]
    return fields


def _csv_chunk(columns: list[Sequence[Any]], numbers: list[_NumberTexts | None]) -> bytes:
    """Rows as CSV lines, from their columns: every loop here runs in C, none per row in
    Python."""
    fields = [
        _text_fields(values) if texts is None else list(map(texts.__getitem__, values))
        for values, texts in zip(columns, numbers, strict=True)
    ]
    return ("\n".join(map(",".join, zip(*fields, strict=True))) + "\n").encode()


def _exchange_rows(index: SymbolIndex, exchange: str) -> Iterator[list[int]]:
    """The row ids of one exchange in chunks of about EXPORT_ROWS."""
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


def _column_chunks(index: SymbolIndex, exchange: str | None) -> Iterator[list[Sequence[Any]]]:
    """The rows to export, of one exchange or all, in chunks given as their columns (in COLUMNS
    order). For the whole contract, slices: cheaper than picking ids."""
    columns: list[list[Any]] = [getattr(index, c) for c in COLUMNS]
    if exchange is None:
        for first in range(0, index.size, EXPORT_ROWS):
            last = first + EXPORT_ROWS
            yield [column[first:last] for column in columns]
        return
    for ids in _exchange_rows(index, exchange):
        if len(ids) == 1:  # itemgetter of one item gives it, not a tuple of it
            yield [[column[ids[0]]] for column in columns]
        else:
            yield list(map(itemgetter(*ids), columns))


async def export_contract(
    index: SymbolIndex, exchange: str | None, fmt: ExportFormat
) -> AsyncIterator[bytes]:
    """The contract (or one exchange), chunk by chunk (see the module docstring)."""
    if fmt == "csv":
        numbers = [_NumberTexts() if c in _NUMBERS else None for c in COLUMNS]
        yield _HEADER
        for columns in _column_chunks(index, exchange):
            yield _csv_chunk(columns, numbers)
        return
    dumps = orjson.dumps
    for columns in _column_chunks(index, exchange):
        rows = map(dict, map(zip, repeat(COLUMNS), zip(*columns, strict=True)))
        yield b"\n".join(map(dumps, rows)) + b"\n"
