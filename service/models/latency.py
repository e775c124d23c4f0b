"""Latency: one row per order round trip, the platform's product metric."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base, JSONDocument, UTCDateTime, utcnow
from service.models.logs import LogId


class OrderLatency(Base):
    __tablename__ = "order_latency"
    __table_args__ = (
        Index("ix_order_latency_timestamp_id", "timestamp", "id"),
        Index("ix_order_latency_broker_timestamp_id", "broker", "timestamp", "id"),
    )

    id: Mapped[int] = mapped_column(LogId, primary_key=True)
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    order_id: Mapped[str] = mapped_column(String(100))
    user_id: Mapped[str | None] = mapped_column(String(255))
    broker: Mapped[str | None] = mapped_column(String(50))
    symbol: Mapped[str | None] = mapped_column(String(100))
    order_type: Mapped[str | None] = mapped_column(String(50))
    rtt_ms: Mapped[float | None]
    validation_latency_ms: Mapped[float | None]
    response_latency_ms: Mapped[float | None]
    overhead_ms: Mapped[float | None]
    total_latency_ms: Mapped[float]
    request_body: Mapped[Any | None] = mapped_column(JSONDocument)
    response_body: Mapped[Any | None] = mapped_column(JSONDocument)
    status: Mapped[str | None] = mapped_column(String(20))
    error: Mapped[str | None] = mapped_column(Text)
