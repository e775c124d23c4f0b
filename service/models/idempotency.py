"""Idempotency keys: the first answer to a keyed POST, replayed to its repeats (service/idempotency.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base, JSONDocument, UTCDateTime, utcnow
from service.models.logs import LogId


class IdempotencyKey(Base):
    """One row per (caller, key): in flight while `status` is null, then the stored answer."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        # The claim: a second insert of the same key by the same caller finds this row instead.
        UniqueConstraint("caller", "key"),
        # Retention deletes expired rows in chunks by id (repositories/logs.delete_before).
        Index("ix_idempotency_keys_expires_at_id", "expires_at", "id"),
    )

    id: Mapped[int] = mapped_column(LogId, primary_key=True)
    # The service-token name: two callers never see each other's keys or answers.
    caller: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(255))
    # SHA-256 (hex) of method, path, query and body: a repeat must match it byte for byte.
    fingerprint: Mapped[str] = mapped_column(String(64))
    # When the attempt that holds the key began: a lease, so a crashed instance's claim ends.
    locked_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The first answer, null while it is in flight: status, [[name, value], ...] and body.
    status: Mapped[int | None] = mapped_column(Integer)
    headers: Mapped[Any | None] = mapped_column(JSONDocument)
    body: Mapped[bytes | None] = mapped_column(LargeBinary)
