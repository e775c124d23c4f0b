"""Platform settings: a single row (id = 1), absent until first changed."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base, utcnow


class PlatformSettings(Base):
    __tablename__ = "platform_settings"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    analyze_mode: Mapped[bool] = mapped_column(default=False)

    smtp_server: Mapped[str | None] = mapped_column(String(255))
    smtp_port: Mapped[int | None]
    smtp_username: Mapped[str | None] = mapped_column(String(255))
    smtp_password_encrypted: Mapped[str | None] = mapped_column(String(1024))
    smtp_use_tls: Mapped[bool] = mapped_column(default=True)
    smtp_from_email: Mapped[str | None] = mapped_column(String(255))
    smtp_helo_hostname: Mapped[str | None] = mapped_column(String(255))

    auto_ban_enabled: Mapped[bool] = mapped_column(default=False)
    threshold_404: Mapped[int] = mapped_column(default=100)
    ban_duration_404_h: Mapped[int] = mapped_column(default=0)
    threshold_invalid_api_key: Mapped[int] = mapped_column(default=100)
    ban_duration_invalid_api_key_h: Mapped[int] = mapped_column(default=0)
    repeat_offender_limit: Mapped[int] = mapped_column(default=2)

    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
