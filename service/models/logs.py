"""API call logs: order logs and their analyze-mode twins, two tables of one shape."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

from service.models.base import Base, JSONDocument, UTCDateTime, utcnow

# BIGINT on PostgreSQL: a log row per API call outgrows 2^31 ids. On SQLite the key must be
# spelled INTEGER to be the rowid (an alias, not a second index).
LogId = BigInteger().with_variant(Integer(), "sqlite")


class ApiLogColumns:
    id: Mapped[int] = mapped_column(LogId, primary_key=True)
    api_type: Mapped[str] = mapped_column(String(50))
    request_data: Mapped[Any] = mapped_column(JSONDocument)
    response_data: Mapped[Any] = mapped_column(JSONDocument)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    @declared_attr.directive
    @classmethod
    def __table_args__(cls) -> tuple[Index, ...]:
        name: str = cls.__tablename__  # type: ignore[attr-defined]
        return (
            Index(f"ix_{name}_created_at_id", "created_at", "id"),
            Index(f"ix_{name}_api_type_created_at_id", "api_type", "created_at", "id"),
        )


class OrderLog(ApiLogColumns, Base):
    __tablename__ = "order_logs"


class AnalyzerLog(ApiLogColumns, Base):
    __tablename__ = "analyzer_logs"
