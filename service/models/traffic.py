"""Traffic: one row per inbound HTTP request of the platform, IP bans and offence counters."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import CheckConstraint, Date, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base, UTCDateTime, utcnow
from service.models.logs import LogId

# Normalised textual IPv6 is at most 39 characters; 45 leaves room for any canonical form.
IP_LENGTH = 45


class TrafficLog(Base):
    __tablename__ = "traffic_logs"
    __table_args__ = (
        Index("ix_traffic_logs_timestamp_id", "timestamp", "id"),
        Index("ix_traffic_logs_client_ip_timestamp_id", "client_ip", "timestamp", "id"),
    )

    id: Mapped[int] = mapped_column(LogId, primary_key=True)
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    client_ip: Mapped[str] = mapped_column(String(IP_LENGTH))
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(String(2048))
    status_code: Mapped[int] = mapped_column(Integer)
    duration_ms: Mapped[float]
    host: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)
    # The platform's user ids are usernames (strings); the reference stored them as integers.
    user_id: Mapped[str | None] = mapped_column(String(255))


class IPBan(Base):
    __tablename__ = "ip_bans"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ip_address: Mapped[str] = mapped_column(String(IP_LENGTH), unique=True)
    reason: Mapped[str | None] = mapped_column(String(255))
    ban_count: Mapped[int] = mapped_column(default=1)
    banned_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # NULL while permanent; a temporary ban stops counting once this is past, with no job to run.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    is_permanent: Mapped[bool] = mapped_column(default=False)
    created_by: Mapped[str] = mapped_column(String(50), default="manual")


class IPOffenceCounter(Base):
    """How many 404s / invalid API keys one IP caused on one UTC day."""

    __tablename__ = "ip_offence_counters"
    __table_args__ = (
        # Serves the atomic upsert (ON CONFLICT) and the per-day "suspicious" listing.
        UniqueConstraint("kind", "day", "ip_address"),
        CheckConstraint("kind IN ('404', 'invalid_api_key')", name="kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    day: Mapped[date] = mapped_column(Date)
    ip_address: Mapped[str] = mapped_column(String(IP_LENGTH))
    count: Mapped[int] = mapped_column(default=1)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The latest path (404) or API-key fingerprint (invalid key); never a key itself.
    last_detail: Mapped[str | None] = mapped_column(String(2048))
