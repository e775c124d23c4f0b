"""What `python -m service import-legacy` has imported of an append-only legacy table.

Log tables have no natural key, so a re-run would import them twice: instead each keeps here
the highest legacy id handled, advanced in the same transaction as the rows it covers, so an
interrupted import resumes exactly after its last committed batch.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base, utcnow


class LegacyImport(Base):
    __tablename__ = "legacy_imports"

    # "<file>.<table>", e.g. "logs.traffic_logs".
    source_table: Mapped[str] = mapped_column(String(100), primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger, default=0)
    imported: Mapped[int] = mapped_column(BigInteger, default=0)
    skipped: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
