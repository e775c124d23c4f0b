"""Platform login accounts: argon2 password hashes and Fernet-encrypted TOTP secrets."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base, JSONDocument, TimestampMixin, utcnow


class User(TimestampMixin, Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(80), unique=True)
    # Stored lower-cased, so uniqueness is case-insensitive.
    email: Mapped[str] = mapped_column(String(255), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(default=False)
    first_name: Mapped[str | None] = mapped_column(String(100))
    last_name: Mapped[str | None] = mapped_column(String(100))

    totp_secret_encrypted: Mapped[str] = mapped_column(String(512))
    # The last RFC 6238 time step accepted: a code is never accepted twice.
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)
    totp_enabled: Mapped[bool] = mapped_column(default=False)
    totp_required_for_login: Mapped[bool] = mapped_column(default=False)
    totp_required_for_mcp: Mapped[bool] = mapped_column(default=False)
    totp_required_for_password_reset: Mapped[bool] = mapped_column(default=False)

    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class UserPreference(Base):
    """One JSON value of a user's preferences, by key; goes with the user (ON DELETE CASCADE)."""

    __tablename__ = "user_preferences"
    __table_args__ = (UniqueConstraint("username", "key", name="uq_user_preferences_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(
        String(80), ForeignKey("users.username", ondelete="CASCADE")
    )
    key: Mapped[str] = mapped_column(String(64))
    value: Mapped[Any] = mapped_column(JSONDocument)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
