"""What every table importer shares: the service's database and keys, the legacy keys, the
report, and whether anything may be written."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TextIO, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from service.config import Settings
from service.db import short_transaction
from service.legacy.convert import Skip
from service.legacy.crypto import LegacyKeys
from service.legacy.report import Progress, Report
from service.legacy.source import LegacyFile
from service.schemas.types import pattern_message
from service.security import Keyring

M = TypeVar("M", bound=BaseModel)


@dataclass
class Context:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    keyring: Keyring
    keys: LegacyKeys
    report: Report
    dry_run: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    # Usernames in the service or imported by this run: what broker tokens, API keys and
    # sessions may belong to (a dry run counts those it would import).
    users: set[str] = field(default_factory=set)
    # In a dry run, the webhook ids of strategies it would import, by family: their mappings
    # would find them.
    planned: dict[str, set[str]] = field(default_factory=dict)

    @property
    def write(self) -> bool:
        return not self.dry_run

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def insert(self, table: Table | type[object]) -> postgresql.Insert | sqlite.Insert:
        """The dialect's INSERT, which has ON CONFLICT on both backends."""
        make = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        return make(table)

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[AsyncSession]:
        """One batch's transaction: a writer's, committed at the end; in a dry run a reader's,
        for the lookups only."""
        async with short_transaction(self.sessionmaker, write=self.write) as session:
            yield session

    def not_imported(
        self, source: LegacyFile, table: str, columns: tuple[str, ...], how: str = "rows"
    ) -> None:
        """Name each legacy column holding values that no column of this service takes."""
        present = source.columns(table)
        for column in columns:
            if column not in present:
                continue
            [(count,)] = source.query(
                f'SELECT count(*) FROM "{table}" WHERE "{column}" IS NOT NULL AND "{column}" <> \'\''
            )
            if count:
                self.report.columns_not_imported.append(
                    f"{source.label}.{table}.{column}: {count} {how}"
                )

    def progress(self, name: str, total: int) -> Progress:
        return Progress(name, total, self.out)


def validated(model: type[M], values: dict[str, object]) -> M:
    """`values` as the API would accept them, or Skip naming the first field it would refuse."""
    try:
        return model.model_validate(values)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "row"
        message = pattern_message(first) or str(first["msg"]).removeprefix("Value error, ")
        raise Skip(f"{where}: {message}") from None
