"""One-statement reads that go from SQLAlchemy's pool straight to the driver.

On PostgreSQL a Core SELECT is compiled once for the engine's dialect and run by asyncpg itself
(its own prepared-statement cache) on a pooled connection held for that statement alone. The
checkout is SQLAlchemy's, with everything it keeps: the pre-ping, the one deadline of a checkout
(service/db.py), the pool's size and its metrics. What is left out is SQLAlchemy's execution
machinery (the greenlet hop, the cursor adapter, Result and Row), which on an indexed read by
primary key costs more than the round trip itself: measured on GET /strategies/{id}, 1,600 µs
of CPU per request through it, 1,150 µs without (bench/results.md, stop 19).

Rows read the same as through SQLAlchemy: each value passes its column type's own result
processor (the UTC timestamps of service/models/base.py), and JSON comes decoded by the codec
SQLAlchemy's dialect installs on every connection. SQLite runs the statement through SQLAlchemy
as usual: there is no round trip to save there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import Select
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

Row = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    params: tuple[str, ...]  # bind parameter names, in the order of $1, $2, ...
    defaults: Mapping[str, Any]  # values the statement binds itself (literals)
    binders: tuple[Callable[[Any], Any] | None, ...]  # each parameter's type's bind processor
    keys: tuple[str, ...]
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]  # (column position, processor)

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        values = [params[p] if p in params else self.defaults[p] for p in self.params]
        return [
            v if bind is None else bind(v) for v, bind in zip(values, self.binders, strict=True)
        ]

    def row(self, record: asyncpg.Record) -> dict[str, Any]:
        values = list(record.values())
        for position, process in self.processors:
            values[position] = process(values[position])
        return dict(zip(self.keys, values, strict=True))


# Keyed by the statement object: callers build their statements once (functools.cache), so
# the cache holds one entry per statement the service has, and the bound keeps it so.
@functools.lru_cache(maxsize=256)
def _compile(statement: Select[Any], dialect: Dialect) -> _Compiled:
    columns = list(statement.selected_columns)
    keys = tuple(column.key for column in columns if column.key is not None)
    if len(keys) != len(columns):
        raise ValueError("a direct read names every column it selects (label it)")
    compiled = statement.compile(dialect=dialect)
    params = tuple(compiled.positiontup or ())
    binds = [compiled.binds[name] for name in params]
    if any(bind.expanding for bind in binds):
        raise ValueError("a direct read binds single values (no expanding IN)")
    processors = []
    for position, column in enumerate(columns):
        process = column.type.result_processor(dialect, None)
        if process is not None:
            processors.append((position, process))
    return _Compiled(
        sql=str(compiled),
        params=params,
        defaults=compiled.params,
        binders=tuple(bind.type.bind_processor(dialect) for bind in binds),
        keys=keys,
        processors=tuple(processors),
    )


async def fetch_rows(reads: AsyncEngine, statement: Select[Any], **params: Any) -> Sequence[Row]:
    """The rows of `statement` with `params`, as mappings by column key, read on a connection
    held for this statement alone (`reads`: db.read_engine)."""
    compiled = _compile(statement, reads.dialect)
    async with reads.connect() as connection:
        if reads.dialect.name != "postgresql":
            rows: Sequence[Row] = (await connection.execute(statement, params)).mappings().all()
            return rows
        records = await _fetch(connection, compiled.sql, compiled.args(params))
    return [compiled.row(record) for record in records]


async def _fetch(connection: AsyncConnection, sql: str, args: list[Any]) -> list[asyncpg.Record]:
    """Run `sql` on the checked-out connection's asyncpg connection.

    A failure reaches the caller as the driver raised it; service/errors.py answers it (503 for
    a lost connection or a timeout). The connection goes back to the pool as any does: if it is
    broken, the pre-ping of its next checkout finds out and replaces it, as it does for one the
    server dropped while it sat idle.
    """
    driver = (await connection.get_raw_connection()).driver_connection
    assert driver is not None  # a checked-out connection has its driver's
    records: list[asyncpg.Record] = await driver.fetch(sql, *args)
    return records
