"""Platform login accounts: argon2 password hashes and Fernet-encrypted TOTP secrets."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base, TimestampMixin, utcnow


class User(TimestampMixin, Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(80), unique=True)
    # Stored lower-cased, so uniqueness is case-insensitive.
    email: Mapped[str] = mapped_column(String(255), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(default=False)

    totp_secret_encrypted: Mapped[str] = mapped_column(String(512))
    # The last RFC 6238 time step accepted: a code is never accepted twice.
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)
    totp_enabled: Mapped[bool] = mapped_column(default=False)
    totp_required_for_login: Mapped[bool] = mapped_column(default=False)
    totp_required_for_mcp: Mapped[bool] = mapped_column(default=False)
    totp_required_for_password_reset: Mapped[bool] = mapped_column(default=False)

    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
