"""The audit trail: one row per change to an account, a key, a token, the settings, a ban or the
master contract, written in the transaction of the change it records."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base, JSONDocument, UTCDateTime, utcnow
from service.models.logs import LogId


class AuditEntry(Base):
    __tablename__ = "audit_entries"
    # Listed newest first on (at, id), like the log tables; the filters that pick few rows
    # (one resource kind, one resource, one service token) get their own (filter, at, id) index.
    __table_args__ = (
        Index("ix_audit_entries_at_id", "at", "id"),
        Index("ix_audit_entries_resource_at_id", "resource", "at", "id"),
        Index("ix_audit_entries_resource_id_at_id", "resource_id", "at", "id"),
        Index("ix_audit_entries_actor_at_id", "actor", "at", "id"),
    )

    id: Mapped[int] = mapped_column(LogId, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The service token's name (1-64 characters), or "system" for a change made outside a request.
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    resource: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str | None] = mapped_column(String(255))
    request_id: Mapped[str | None] = mapped_column(String(128))
    # {field: {"before": …, "after": …}}, secrets already replaced by the marker.
    changes: Mapped[Any] = mapped_column(JSONDocument)
