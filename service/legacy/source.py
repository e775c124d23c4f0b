"""Reading a legacy SQLite file: opened read-only, each table streamed in id order by batches.

Installs of different ages lack columns added later (`feed_token`, `order_mode`, the TOTP purpose
flags, ...): a column the file does not have reads as NULL, so one importer serves them all.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

BATCH = 1000

Row = dict[str, Any]


class LegacyFileError(Exception):
    """The file cannot be read as a legacy database; the message says why."""


class LegacyFile:
    def __init__(self, label: str, path: Path) -> None:
        self.label = label  # "openalgo", "logs", "latency"
        self.path = path
        if not path.is_file():
            raise LegacyFileError(f"{path}: no such file")
        # Read-only: the install may still be running, and nothing here may change its data.
        self._conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            names = self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            self._tables = {row[0] for row in names}
        except sqlite3.DatabaseError as error:
            self._conn.close()
            raise LegacyFileError(f"{path}: not an SQLite database ({error})") from None

    def close(self) -> None:
        self._conn.close()

    def has(self, table: str) -> bool:
        return table in self._tables

    def columns(self, table: str) -> set[str]:
        return {row[1] for row in self._conn.execute(f'PRAGMA table_info("{table}")')}

    def count(self, table: str, after_id: int = 0) -> int:
        if not self.has(table):
            return 0
        if "id" not in self.columns(table):
            return int(self._conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])
        query = f'SELECT count(*) FROM "{table}" WHERE id > ?'
        return int(self._conn.execute(query, (after_id,)).fetchone()[0])

    def stream(
        self,
        table: str,
        wanted: Sequence[str],
        *,
        after_id: int = 0,
        order: Sequence[str] = ("id",),
        batch: int = BATCH,
    ) -> Iterator[list[Row]]:
        """The rows of `table` (only `wanted` columns, absent ones as NULL), `batch` at a time.

        One cursor over the whole table, fetched a batch at a time: memory holds one batch,
        whatever the file's size.
        """
        if not self.has(table):
            return
        present = self.columns(table)
        select = ", ".join(f'"{c}"' if c in present else f'NULL AS "{c}"' for c in wanted)
        query = f'SELECT {select} FROM "{table}"'
        params: tuple[Any, ...] = ()
        if "id" in present:
            query += " WHERE id > ?"
            params = (after_id,)
        keys = [f'"{c}"' for c in order if c in present]
        if keys:
            query += " ORDER BY " + ", ".join(keys)
        cursor = self._conn.execute(query, params)
        try:
            while rows := cursor.fetchmany(batch):
                yield [dict(zip(wanted, row, strict=True)) for row in rows]
        finally:
            cursor.close()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self._conn.execute(sql, params))
