"""How far each append-only legacy table got: the highest legacy id handled, advanced in the
transaction that writes the rows it covers (so a crash loses a batch or keeps it whole)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from service.models.base import utcnow
from service.models.legacy import LegacyImport


class ConcurrentImport(Exception):
    """Another import advanced the same table meanwhile."""


@dataclass(frozen=True)
class Mark:
    last_id: int = 0
    imported: int = 0
    skipped: int = 0


async def read(session: AsyncSession, name: str) -> Mark:
    row = (
        await session.execute(
            select(LegacyImport.last_id, LegacyImport.imported, LegacyImport.skipped).where(
                LegacyImport.source_table == name
            )
        )
    ).first()
    return Mark(*row) if row is not None else Mark()


async def advance(
    session: AsyncSession, name: str, expected: int, last_id: int, imported: int, skipped: int
) -> None:
    """Move the mark from `expected` to `last_id`; ConcurrentImport if it is no longer there."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    await session.execute(
        insert(LegacyImport)
        .values(source_table=name, last_id=0, imported=0, skipped=0, updated_at=utcnow())
        .on_conflict_do_nothing()
    )
    result = await session.execute(
        update(LegacyImport)
        .where(LegacyImport.source_table == name, LegacyImport.last_id == expected)
        .values(
            last_id=last_id,
            imported=LegacyImport.imported + imported,
            skipped=LegacyImport.skipped + skipped,
            updated_at=utcnow(),
        )
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise ConcurrentImport(f"{name}: another import is running against this database")
