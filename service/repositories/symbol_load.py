"""Loading a master contract: the streaming parser and the atomic replacement on each backend.

The body is parsed chunk by chunk as it arrives (never held whole) and validated row by row. No
connection of the app's pool is held while it is read:

- PostgreSQL: over a connection opened for the load, one COPY (asyncpg's binary
  `copy_records_to_table`, fed as rows are parsed) into `symbols_next`, a new table shaped like
  `symbols` but without indexes; the rows of the exchanges that stay are copied in; then every
  constraint and index of `symbols` is rebuilt on it in bulk (several times faster than
  maintaining them row by row, the trigram index above all: measured 4 s against 10 s for 200k
  rows) and the tables are swapped by DROP and RENAME, all in one transaction. Readers keep the
  old table until the commit; one arriving during the swap's brief lock waits for it and then
  reads the new one. (Privileges granted on `symbols` to other roles are not carried over: the
  service's own role owns both tables.)
- SQLite: the rows go to a private staging file while the body arrives, without touching the
  database (its one write lock would stop every other writer for the whole upload); once all of
  it is valid, one short write transaction attaches the file and replaces the rows (DELETE, then
  INSERT ... SELECT). WAL readers see the old rows until it commits.

Any bad row (or a duplicate `(symbol, exchange)`) stops the writing; the parser goes on validating
to report up to MAX_ERRORS problems with their line numbers, nothing is written (the staging is
thrown away, the transaction rolls back), and the old contract stays as it was.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import csv
import logging
import math
import os
import re
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal

import aiosqlite
import orjson
from sqlalchemy import delete, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from service import audit
from service.cache import invalidate
from service.config import DatabaseSettings
from service.db import begin_write, make_engine
from service.errors import DatabaseUnavailable, ValidationFailed
from service.models.symbols import Symbol
from service.repositories import symbols as symbols_repo
from service.symbol_index import COLUMNS, parse_expiry

logger = logging.getLogger("service.symbols")

Format = Literal["csv", "ndjson"]
Row = tuple[Any, ...]  # in COLUMNS order

MAX_ERRORS = 20
BATCH_ROWS = 10_000
PROGRESS_ROWS = 50_000
MAX_LINE_CHARS = 1 << 20
_INT4 = 2**31 - 1
# Building indexes over a large contract can outlast the driver's per-statement default.
_DDL_TIMEOUT_S = 3600
_SWAP_LOCK_TIMEOUT = "10s"

_REQUIRED = frozenset({"symbol", "brsymbol", "exchange", "token"})
_TEXT = ("symbol", "brsymbol", "name", "exchange", "brexchange", "token", "instrumenttype")
_INDEX_DDL = re.compile(r"^(CREATE (?:UNIQUE )?INDEX )(\S+)( ON )(?:ONLY )?(\S+)( USING .*)$", re.S)


class _Bad(ValueError):
    """One field of one row is not acceptable; the message says why."""


class _Clock:
    """How long each phase of a load took, for the log."""

    def __init__(self) -> None:
        self.laps: list[str] = []
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.laps.append(f"{phase} {(now - self._last) * 1000:.0f} ms")
        self._last = now


@dataclass(frozen=True)
class LoadResult:
    rows: int
    exchanges: dict[str, int]
    version: int


class ContractParser:
    """Turns the body, chunk by chunk, into validated rows (tuples in COLUMNS order).

    `feed()` returns the rows completed by a chunk, `finish()` the last ones; both return nothing
    once a problem was found (nothing more is worth writing). `raise_for_errors()` raises the 422.
    """

    def __init__(self, fmt: Format, exchanges: frozenset[str] | None) -> None:
        self.fmt = fmt
        self.exchanges = exchanges
        self.errors: list[dict[str, Any]] = []
        self._reported = 0  # rows at the last progress line
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._tail = ""  # the incomplete last line
        self._line = 0  # physical lines consumed
        self._record: list[str] | None = None  # lines of a CSV record whose quotes are open
        self._record_line = 0
        self._quotes = 0
        self._pick: itemgetter[Any] | None = None  # the CSV cells of COLUMNS, in order
        self._width = 0
        self._seen: dict[str, dict[str, int]] = {}  # exchange -> symbol -> line
        self._expiries: dict[str, str] = {}
        self._started = False
        self._plain = True  # the current chunk has no NUL: plain CSV cells take the fast path

    # --- input ---------------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> list[Row]:
        if len(self.errors) >= MAX_ERRORS:
            return []  # only draining the body now
        try:
            decoded = self._decoder.decode(chunk)
        except UnicodeDecodeError as error:
            self._bad_utf8(error)
            return []
        if not self._started and decoded:
            self._started = True
            decoded = decoded.removeprefix("\ufeff")
        self._plain = "\x00" not in decoded
        lines = (self._tail + decoded).split("\n")
        self._tail = lines.pop()
        if len(self._tail) > MAX_LINE_CHARS:
            self._error([self._line + 1], f"line longer than {MAX_LINE_CHARS} characters")
            self._tail = ""
        return self._lines(lines)

    def finish(self) -> list[Row]:
        try:
            rest = self._tail + self._decoder.decode(b"", final=True)
        except UnicodeDecodeError as error:
            self._bad_utf8(error)
            return []
        self._tail = ""
        rows = self._lines([rest]) if rest else []
        if self._record is not None:
            self._error([self._record_line], "a quoted field is not closed")
        if not self.errors:
            if self._pick is None and self.fmt == "csv":
                self._error([], "the body is empty: expected a header row and rows")
            elif self.rows == 0:
                self._error([], "the body has no rows (use DELETE to empty the contract)")
        return [] if self.errors else rows

    def _bad_utf8(self, error: UnicodeDecodeError) -> None:
        before = self._tail + error.object[: error.start].decode("utf-8", "replace")
        self._error([self._line + before.count("\n") + 1], "the body is not valid UTF-8")
        self._tail = ""

    def raise_for_errors(self) -> None:
        if not self.errors:
            return
        first = self.errors[0]
        where = ", ".join(f"line {p}" if isinstance(p, int) else str(p) for p in first["loc"][1:])
        detail = f"{where}: {first['msg']}" if where else first["msg"]
        if len(self.errors) > 1:
            more = f"{len(self.errors) - 1}{'+' if len(self.errors) >= MAX_ERRORS else ''}"
            detail += f" (and {more} more)"
        raise ValidationFailed(detail, errors=self.errors)

    @property
    def failed(self) -> bool:
        return bool(self.errors)

    # --- lines ---------------------------------------------------------------------------------

    def _lines(self, lines: list[str]) -> list[Row]:
        if len(self.errors) >= MAX_ERRORS:
            self._line += len(lines)
            return []
        if self.fmt == "ndjson":
            return self._ndjson(lines)
        return self._csv(lines)

    def _csv(self, lines: list[str]) -> list[Row]:
        numbers: list[int] = []
        records: list[str] = []
        line = self._line
        if self._record is None and not any('"' in x for x in lines):
            numbers = list(range(line + 1, line + 1 + len(lines)))
            records = lines
            line += len(lines)
        else:
            # A quoted field may hold newlines: a record ends where its quotes are balanced.
            for physical in lines:
                line += 1
                if self._record is not None:
                    self._record.append(physical)
                    self._quotes += physical.count('"')
                    if self._quotes % 2 == 0:
                        numbers.append(self._record_line)
                        records.append("\n".join(self._record))
                        self._record = None
                    continue
                quotes = physical.count('"')
                if quotes % 2:
                    self._record, self._record_line, self._quotes = [physical], line, quotes
                else:
                    numbers.append(line)
                    records.append(physical)
        self._line = line
        out: list[Row] = []
        reader = csv.reader(records)
        rows = zip(numbers, reader, strict=True)
        try:
            if self._pick is None:
                for number, cells in rows:
                    if not _blank(cells):
                        self._header(cells, number)
                        break
            if self._pick is None:
                pass  # no header yet: blank lines only
            elif self._plain:
                self._csv_rows(rows, out)
            else:
                for number, cells in rows:
                    self._csv_row(number, cells, out)
        except csv.Error as error:
            self._error([numbers[max(reader.line_num, 1) - 1]], f"malformed CSV: {error}")
        self._progress()
        return out

    def _csv_rows(self, rows: Iterator[tuple[int, list[str]]], out: list[Row]) -> None:
        """The hot loop: a row whose cells are all ordinary is converted in one go; any other
        goes through `_csv_row`, whose field-by-field checks name each problem."""
        pick, width, strip, isfinite = self._pick, self._width, str.strip, math.isfinite
        if pick is None:
            return
        expiries, admit, append = self._expiries, self._admit, out.append
        for number, cells in rows:
            if len(cells) != width:
                self._csv_row(number, cells, out)
                continue
            try:
                (symbol, brsymbol, name, exchange, brexchange, token, expiry, strike, lotsize,
                 itype, tick) = map(strip, pick(cells))  # fmt: skip
                strike_value = float(strike) if strike else None
                tick_value = float(tick) if tick else None
                lotsize_value = int(lotsize) if lotsize else None
                row = (
                    symbol, brsymbol, name or None, exchange, brexchange or None, token,
                    expiries[expiry] if expiry else None,  # KeyError: first seen, check it
                    strike_value, lotsize_value, itype or None, tick_value,
                )  # fmt: skip
            except (ValueError, KeyError):
                self._csv_row(number, cells, out)
                continue
            if (
                not (symbol and brsymbol and exchange and token)
                or (strike_value is not None and not isfinite(strike_value))
                or (tick_value is not None and not isfinite(tick_value))
                or (lotsize_value is not None and not -_INT4 <= lotsize_value <= _INT4)
            ):
                self._csv_row(number, cells, out)
            elif admit(symbol, exchange, number):
                append(row)

    def _csv_row(self, number: int, cells: list[str], out: list[Row]) -> None:
        if _blank(cells) or not self._width:
            return  # a blank line, or rows under a header already reported
        if len(cells) != self._width:
            self._error([number], f"expected {self._width} fields, found {len(cells)}")
            return
        assert self._pick is not None
        row = self._row(self._pick(cells), number)
        if row is not None:
            out.append(row)

    def _header(self, cells: list[str], line: int) -> None:
        names = [c.strip().lower() for c in cells]
        missing = [c for c in COLUMNS if c not in names]
        for column in missing:
            self._error([line, column], "missing column")
        repeated = sorted({n for n in names if n in COLUMNS and names.count(n) > 1})
        for column in repeated:
            self._error([line, column], "column given more than once")
        if not missing and not repeated:
            self._pick = itemgetter(*(names.index(c) for c in COLUMNS))
            self._width = len(cells)
        else:
            self._pick = itemgetter(0)
            self._width = 0  # rows are not checked against a broken header

    def _ndjson(self, lines: list[str]) -> list[Row]:
        out: list[Row] = []
        for physical in lines:
            self._line += 1
            if not physical.strip():
                continue
            try:
                item = orjson.loads(physical)
            except orjson.JSONDecodeError:
                self._error([self._line], "not a JSON object")
                continue
            if not isinstance(item, dict):
                self._error([self._line], "not a JSON object")
                continue
            missing = [c for c in COLUMNS if c not in item]
            if missing:
                for column in missing:
                    self._error([self._line, column], "missing field")
                continue
            row = self._row(tuple(item[c] for c in COLUMNS), self._line)
            if row is not None:
                out.append(row)
        self._progress()
        return out

    # --- one row -------------------------------------------------------------------------------

    def _row(self, raw: tuple[Any, ...], line: int) -> Row | None:
        """One row checked field by field: every problem is reported with its column."""
        values: list[Any] = list(raw)
        bad = False
        for index, column in enumerate(COLUMNS):
            try:
                values[index] = _CONVERTERS[column](self, values[index])
            except _Bad as error:
                self._error([line, column], str(error))
                bad = True
        if bad or not self._admit(values[0], values[3], line):
            return None
        return tuple(values)

    def _admit(self, symbol: str, exchange: str, line: int) -> bool:
        """Whether a valid row joins the load: its exchange is being replaced, its (symbol,
        exchange) is new, and no earlier row was bad (after one, rows are only checked)."""
        if self.exchanges is not None and exchange not in self.exchanges:
            listed = ", ".join(sorted(self.exchanges))
            self._error(
                [line, "exchange"], f"{exchange!r} is not among the exchanges replaced ({listed})"
            )
            return False
        seen = self._seen.get(exchange)
        if seen is None:
            seen = self._seen[exchange] = {}
        first = seen.setdefault(symbol, line)
        if first != line:
            self._error([line, "symbol"], f"({symbol!r}, {exchange!r}) repeats line {first}")
            return False
        return not self.errors

    @property
    def rows(self) -> int:
        return sum(map(len, self._seen.values()))

    @property
    def counts(self) -> dict[str, int]:
        """Rows per exchange."""
        return {exchange: len(symbols) for exchange, symbols in sorted(self._seen.items())}

    def _progress(self) -> None:
        rows = self.rows
        if rows >= self._reported + PROGRESS_ROWS:
            self._reported = rows - rows % PROGRESS_ROWS
            logger.info("loading symbols: %d rows parsed", rows)

    def _error(self, where: list[Any], msg: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append({"loc": ["body", *where], "msg": msg, "type": "value_error"})

    # --- fields --------------------------------------------------------------------------------

    def _text(self, value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = value.strip()
        elif isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # NDJSON tokens are often numbers
        else:
            raise _Bad("must be a string")
        if "\x00" in value:
            raise _Bad("must not contain NUL characters")
        return value or None

    def _required(self, value: Any) -> str:
        text = self._text(value)
        if text is None:
            raise _Bad("must not be empty")
        return text

    def _expiry(self, value: Any) -> str | None:
        text = self._text(value)
        if text is None:
            return None
        known = self._expiries.get(text)
        if known is None:
            if parse_expiry(text) is None:
                raise _Bad("must be a date like 28-NOV-24")
            known = self._expiries[text] = text.upper()
        return known

    def _float(self, value: Any) -> float | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = value.strip()
            if not value:
                return None
            try:
                number = float(value)
            except ValueError:
                raise _Bad("must be a number") from None
        elif isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        else:
            raise _Bad("must be a number")
        if not math.isfinite(number):
            raise _Bad("must be a finite number")
        return number

    def _int(self, value: Any) -> int | None:
        if isinstance(value, str):
            value = value.strip()
            if not value:
                return None
            try:
                number = int(value)
            except ValueError:
                try:
                    as_float = float(value)  # "75.0"
                except ValueError:
                    raise _Bad("must be a whole number") from None
                if not as_float.is_integer():
                    raise _Bad("must be a whole number") from None
                number = int(as_float)
        elif value is None:
            return None
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            raise _Bad("must be a whole number")
        if not -_INT4 <= number <= _INT4:
            raise _Bad("is out of range")
        return number


def _blank(cells: list[str]) -> bool:
    return not cells or cells == [""] or cells == ["\r"]


_CONVERTERS = {
    **dict.fromkeys(_TEXT, ContractParser._text),
    **dict.fromkeys(_REQUIRED, ContractParser._required),
    "expiry": ContractParser._expiry,
    "strike": ContractParser._float,
    "tick_size": ContractParser._float,
    "lotsize": ContractParser._int,
}


async def _batches(
    chunks: AsyncIterator[bytes], parser: ContractParser
) -> AsyncIterator[list[Row]]:
    """Validated rows in batches of about BATCH_ROWS, as the body arrives. After a problem the
    body is still read to its end (and validated up to MAX_ERRORS), so that the client, which
    may still be sending, gets the 422 rather than a reset connection."""
    batch: list[Row] = []
    async for chunk in chunks:
        batch.extend(parser.feed(chunk))
        if len(batch) >= BATCH_ROWS:
            yield batch
            batch = []
    batch.extend(parser.finish())
    if batch and not parser.failed:
        yield batch


# --- the load ----------------------------------------------------------------------------------


async def load_contract(
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: DatabaseSettings,
    chunks: AsyncIterator[bytes],
    fmt: Format,
    exchanges: frozenset[str] | None,
) -> LoadResult:
    """Replace the contract (or only `exchanges`) with the rows of the body, and commit.

    Raises ValidationFailed (422) naming lines and fields, with nothing written. No connection of
    the app's pool is held while the body is read: SQLite stages the rows in a file of its own and
    takes a pooled connection (and the write lock) only for the short swap; PostgreSQL streams
    them over a connection opened for this load."""
    parser = ContractParser(fmt, exchanges)
    clock = _Clock()
    batches = _batches(chunks, parser)
    if engine.dialect.name == "postgresql":
        version = await _load_postgresql(sessionmaker, settings, batches, parser, exchanges, clock)
    else:
        version = await _load_sqlite(engine, sessionmaker, batches, parser, exchanges, clock)
    counts = dict(sorted((dict.fromkeys(exchanges or (), 0) | parser.counts).items()))
    logger.info(
        "symbols loaded: %d rows, version %d (%s)", parser.rows, version, ", ".join(clock.laps)
    )
    return LoadResult(rows=parser.rows, exchanges=counts, version=version)


async def _contract_before(session: AsyncSession) -> tuple[int, dict[str, int]]:
    """Lock the contract; its version and rows per exchange as the load finds them."""
    version = await symbols_repo.lock_contract(session)
    return version, await symbols_repo.exchange_counts(session)


async def _finish_swap(
    session: AsyncSession,
    before: tuple[int, dict[str, int]],
    loaded: dict[str, int],
    exchanges: frozenset[str] | None,
) -> int:
    """Bump the version, signal every instance and record the load in the audit trail, in the
    swap's transaction; then commit."""
    version = await symbols_repo.bump_version(session)
    await invalidate(session, symbols_repo.TOPIC)
    kept = {e: n for e, n in before[1].items() if exchanges is not None and e not in exchanges}
    await audit.record_contract(
        session, "load", before=before, after=(version, kept | loaded), scope=exchanges
    )
    await session.commit()
    return version


# --- SQLite: staged in a file, swapped in one short write transaction ---------------------------

_STAGING = "contract_staging"  # the staging file's schema name while attached for the swap
_STAGING_PREFIX = ".symbols-load-"
_ABANDONED_AFTER_S = 3600.0
_STAGED_COLUMNS = ", ".join(COLUMNS)
_STAGED_INSERT = f"INSERT INTO rows VALUES ({', '.join('?' * len(COLUMNS))})"


class _StagingFile:
    """The validated rows of one SQLite load, in a private SQLite file beside the database.

    Written while the body arrives, over a connection of its own: nothing of the database is
    locked meanwhile (the write lock would stop every other writer for the whole upload), and the
    rows wait on disk, so a 512 MiB upload needs no more memory than a small one. Nothing here
    needs to survive a crash, so the file has no journal and is never synced."""

    def __init__(self, path: Path, connection: aiosqlite.Connection) -> None:
        self.path = path
        self._connection: aiosqlite.Connection | None = connection
        self._writing: asyncio.Task[None] | None = None

    @classmethod
    async def create(cls, directory: Path) -> _StagingFile:
        path = await asyncio.to_thread(_new_file, directory)
        try:
            with _staging_failures_unavailable():
                connection = await aiosqlite.connect(path, isolation_level=None)
            try:
                with _staging_failures_unavailable():
                    for statement in (
                        "PRAGMA journal_mode=OFF",
                        "PRAGMA synchronous=OFF",
                        # In the contract's key order: the swap then adds every row to the end
                        # of the primary key's index, rather than all over it.
                        f"CREATE TABLE rows ({_STAGED_COLUMNS}, PRIMARY KEY (exchange, symbol))"
                        " WITHOUT ROWID",
                        "BEGIN",
                    ):
                        await connection.execute(statement)
            except BaseException:
                await connection.close()
                raise
        except BaseException:
            await asyncio.to_thread(path.unlink, missing_ok=True)
            raise
        return cls(path, connection)

    async def add(self, rows: list[Row]) -> None:
        """Write `rows` while the caller parses the next ones (at most one batch in flight)."""
        await self._wait()
        assert self._connection is not None
        self._writing = asyncio.ensure_future(_insert(self._connection, rows))

    async def close(self) -> None:
        """Every row written and the file closed, ready to be attached."""
        await self._wait()
        if self._connection is not None:
            connection, self._connection = self._connection, None
            try:
                with _staging_failures_unavailable():
                    await connection.execute("COMMIT")
            finally:
                await connection.close()

    async def discard(self) -> None:
        try:
            if self._writing is not None:
                self._writing.cancel()
                await asyncio.gather(self._writing, return_exceptions=True)
                self._writing = None
            if self._connection is not None:
                connection, self._connection = self._connection, None
                await connection.close()
        finally:
            await asyncio.to_thread(self.path.unlink, missing_ok=True)

    async def _wait(self) -> None:
        if self._writing is not None:
            writing, self._writing = self._writing, None
            with _staging_failures_unavailable():
                await writing


@contextlib.contextmanager
def _staging_failures_unavailable() -> Iterator[None]:
    """A failure of the staging file (a full disk, say) is the server's, not the upload's: 503,
    like a database that cannot take the load now, rather than a 500."""
    try:
        yield
    except sqlite3.Error as error:
        logger.error("staging a contract load failed: %s", error)
        raise DatabaseUnavailable(
            "The contract could not be staged for loading; retry shortly."
        ) from error


def _new_file(directory: Path) -> Path:
    _remove_abandoned(directory)
    fd, name = tempfile.mkstemp(prefix=_STAGING_PREFIX, suffix=".sqlite", dir=directory)
    os.close(fd)
    return Path(name)


def _remove_abandoned(directory: Path) -> None:
    """Staging files left by a process that died during a load (one that finished or failed
    removes its own). One still in use is written to as its rows arrive: only files untouched
    for an hour are taken for abandoned."""
    cutoff = time.time() - _ABANDONED_AFTER_S
    for path in directory.glob(f"{_STAGING_PREFIX}*.sqlite"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                logger.warning("removed an abandoned staging file of a contract load: %s", path)
        except FileNotFoundError:
            pass  # removed meanwhile by another instance


async def _insert(connection: aiosqlite.Connection, rows: list[Row]) -> None:
    await connection.executemany(_STAGED_INSERT, rows)


def _staging_directory(engine: AsyncEngine) -> Path:
    """Beside the database file: a disk with room for it (the temporary directory may be a
    RAM disk), and where the process can surely write."""
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return Path(tempfile.gettempdir())
    return Path(database).resolve().parent


async def _load_sqlite(
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    batches: AsyncIterator[list[Row]],
    parser: ContractParser,
    exchanges: frozenset[str] | None,
    clock: _Clock,
) -> int:
    staging = await _StagingFile.create(_staging_directory(engine))
    try:
        async for batch in batches:
            await staging.add(batch)
        await staging.close()
        parser.raise_for_errors()
        clock.lap("parse and stage")
        return await _swap_sqlite(
            engine, sessionmaker, staging.path, parser.counts, exchanges, clock
        )
    finally:
        await staging.discard()


async def _swap_sqlite(
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    staged: Path,
    loaded: dict[str, int],
    exchanges: frozenset[str] | None,
    clock: _Clock,
) -> int:
    """One write transaction: the old rows out and the staged ones in, by SQLite itself (INSERT
    ... SELECT from the attached file, in primary-key order). WAL readers see the old contract
    until the commit and the new one after it."""
    async with engine.connect() as conn:
        try:
            # A session on this very connection: the file stays attached to it until detached
            # below, after the commit (SQLite cannot detach a file the transaction has read).
            async with sessionmaker(bind=conn) as session:
                await begin_write(session)
                clock.lap("write lock")
                await session.execute(
                    text(f"ATTACH DATABASE :path AS {_STAGING}"), {"path": str(staged)}
                )
                before = await _contract_before(session)
                # A whole contract: the secondary indexes are dropped and built again over the
                # new rows, by sorting (measured: 200k rows swapped in 1.5 s instead of 2.4 s, the
                # write lock held that much less). A partial load keeps them: rebuilding them
                # over every exchange would cost more than it saves.
                rebuilt = await _drop_indexes(session) if exchanges is None else []
                stmt = delete(Symbol)
                if exchanges is not None:
                    stmt = stmt.where(Symbol.exchange.in_(exchanges))
                await session.execute(stmt)
                await session.execute(
                    text(
                        f"INSERT INTO symbols ({_STAGED_COLUMNS}) SELECT {_STAGED_COLUMNS}"
                        f" FROM {_STAGING}.rows ORDER BY exchange, symbol"
                    )
                )
                for statement in rebuilt:
                    await session.execute(text(statement))
                version = await _finish_swap(session, before, loaded, exchanges)
                clock.lap("swap")
        finally:
            await _detach_staging(conn)
    return version


async def _drop_indexes(session: AsyncSession) -> list[str]:
    """Drop the secondary indexes of `symbols`; return the statements that create them again,
    as the migrations wrote them (the primary key's own index stays)."""
    indexes = (
        await session.execute(
            text(
                "SELECT name, sql FROM main.sqlite_master WHERE type = 'index'"
                " AND tbl_name = 'symbols' AND sql IS NOT NULL ORDER BY name"
            )
        )
    ).all()
    for name, _sql in indexes:
        await session.execute(text(f'DROP INDEX main."{name}"'))
    return [sql for _name, sql in indexes]


async def _detach_staging(conn: AsyncConnection) -> None:
    """Give the connection back to the pool as it was; one that cannot be is thrown away."""
    try:
        driver: Any = (await conn.get_raw_connection()).driver_connection
        cursor = await driver.execute(f"DETACH DATABASE {_STAGING}")
        await cursor.close()
    except Exception:
        # Not attached (the swap failed before), or still busy: either way the pool must not
        # hand this connection out with a stray schema on it.
        await conn.invalidate()


# --- PostgreSQL: COPY into a new table, indexes built in bulk, tables swapped ---------------------


async def _load_postgresql(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: DatabaseSettings,
    batches: AsyncIterator[list[Row]],
    parser: ContractParser,
    exchanges: frozenset[str] | None,
    clock: _Clock,
) -> int:
    """The whole load in one transaction, on a connection of its own rather than one of the
    pool's, which a slow upload would hold for as long as it lasts. Nothing else waits for it
    meanwhile: other writers do not touch the contract's tables, and readers keep reading the
    old table until the commit."""
    engine = make_engine(settings, null_pool=True)
    try:
        async with sessionmaker(bind=engine) as session:
            before = await _contract_before(session)
            clock.lap("lock")
            await _copy_and_swap(session, batches, parser, exchanges, clock)
            return await _finish_swap(session, before, parser.counts, exchanges)
    finally:
        await engine.dispose()


async def _copy_and_swap(
    session: AsyncSession,
    batches: AsyncIterator[list[Row]],
    parser: ContractParser,
    exchanges: frozenset[str] | None,
    clock: _Clock,
) -> None:
    raw = await (await session.connection()).get_raw_connection()
    driver: Any = raw.driver_connection  # asyncpg, inside the session's transaction
    await driver.execute(
        "CREATE TABLE symbols_next (LIKE symbols INCLUDING DEFAULTS INCLUDING CONSTRAINTS"
        " INCLUDING STORAGE INCLUDING COMMENTS)"
    )

    async def rows() -> AsyncIterator[Row]:
        async for batch in batches:
            for row in batch:
                yield row

    # One COPY for the whole body: PostgreSQL stores rows while the next ones are being parsed.
    await driver.copy_records_to_table(
        "symbols_next", records=rows(), columns=COLUMNS, timeout=_DDL_TIMEOUT_S
    )
    parser.raise_for_errors()
    clock.lap("parse and copy")
    columns = ", ".join(COLUMNS)
    if exchanges is not None:
        await driver.execute(
            f"INSERT INTO symbols_next ({columns}) SELECT {columns} FROM symbols"
            " WHERE exchange <> ALL($1::varchar[])",
            sorted(exchanges),
            timeout=_DDL_TIMEOUT_S,
        )
        clock.lap("keep other exchanges")
    # No ANALYZE: building the indexes has already set the row count the planner needs, and
    # autovacuum analyzes a table with this many new rows within a minute.
    renames = await _copy_indexes(driver)
    clock.lap("indexes")
    try:
        await driver.execute(f"SET LOCAL lock_timeout = '{_SWAP_LOCK_TIMEOUT}'")
        await driver.execute("DROP TABLE symbols")
    except Exception as error:
        if getattr(error, "sqlstate", None) == "55P03":  # lock_not_available
            raise DatabaseUnavailable(
                "The contract is being read by a long query; retry the load shortly."
            ) from None
        raise
    await driver.execute("ALTER TABLE symbols_next RENAME TO symbols")
    for statement in renames:
        await driver.execute(statement)
    await driver.execute("SET LOCAL lock_timeout = DEFAULT")
    clock.lap("swap")


async def _copy_indexes(driver: Any) -> list[str]:
    """Build every constraint and index of `symbols` on `symbols_next` under a temporary name;
    return the statements that give them their own names once the tables are swapped.

    Read from the catalog rather than from the models, so that the new table is exactly what the
    migrations made (and `alembic check` keeps finding no drift after a load)."""
    renames: list[str] = []
    await driver.execute("SET LOCAL maintenance_work_mem = '256MB'")
    constraints = await driver.fetch(
        "SELECT conname, pg_get_constraintdef(oid) AS definition FROM pg_constraint"
        " WHERE conrelid = 'symbols'::regclass AND contype IN ('p', 'u', 'x')"
    )
    for row in constraints:
        name = row["conname"]
        await driver.execute(
            f'ALTER TABLE symbols_next ADD CONSTRAINT "{name}__next" {row["definition"]}',
            timeout=_DDL_TIMEOUT_S,
        )
        renames.append(f'ALTER TABLE symbols RENAME CONSTRAINT "{name}__next" TO "{name}"')
    indexes = await driver.fetch(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid) AS definition"
        " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = 'symbols'::regclass"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)"
    )
    for row in indexes:
        match = _INDEX_DDL.match(row["definition"])
        if match is None:
            raise RuntimeError(f"cannot copy index definition: {row['definition']}")
        create, _name, on, table, rest = match.groups()
        schema = table.rsplit(".", 1)[0] + "." if "." in table else ""
        name = row["relname"]
        await driver.execute(
            f'{create}"{name}__next"{on}{schema}symbols_next{rest}', timeout=_DDL_TIMEOUT_S
        )
        renames.append(f'ALTER INDEX "{name}__next" RENAME TO "{name}"')
    return renames


def media_format(content_type: str | None) -> Format | None:
    """The upload format a Content-Type names (CSV or NDJSON, UTF-8), or None."""
    if not content_type:
        return None
    media, _, params = content_type.partition(";")
    charset = re.search(r"charset\s*=\s*\"?([\w-]+)", params, re.I)
    if charset is not None and charset.group(1).lower() not in ("utf-8", "utf8"):
        return None
    return {
        "text/csv": "csv",
        "application/x-ndjson": "ndjson",
        "application/ndjson": "ndjson",
    }.get(media.strip().lower())  # type: ignore[return-value]
