"""Broker tokens, API keys, web sessions and the login audit trail.

Broker tokens, API keys and sessions belong to a platform user: `broker_tokens.name`,
`api_keys.user_id` and `sessions.username` all hold `users.username` (the names API.md gives them)
and go with the user when it is deleted. Login attempts are an audit log and keep any username
typed, known or not.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base, JSONDocument, TimestampMixin, utcnow

ORDER_MODES = ("auto", "semi_auto")
LOGIN_STATUSES = ("success", "failed", "resumed")


def _user_fk() -> ForeignKey:
    return ForeignKey("users.username", ondelete="CASCADE")


class BrokerToken(TimestampMixin, Base):
    """The broker session of one user. A revoked row keeps no token at all."""

    __tablename__ = "broker_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(80), _user_fk(), unique=True)
    auth_token_encrypted: Mapped[str | None] = mapped_column(String(8192))
    feed_token_encrypted: Mapped[str | None] = mapped_column(String(8192))
    refresh_token_encrypted: Mapped[str | None] = mapped_column(String(8192))
    # When the broker session ends: past it, the tokens are not handed out (410).
    expires_at: Mapped[datetime | None] = mapped_column()
    broker: Mapped[str] = mapped_column(String(32))
    # The client id the broker knows the user by (not a platform user).
    user_id: Mapped[str | None] = mapped_column(String(255))
    revoked: Mapped[bool] = mapped_column(default=False)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ApiKey(TimestampMixin, Base):
    """One API key per user, stored three ways and never in plaintext.

    `key_digest` (HMAC-SHA256 with the pepper) finds the row in one indexed read; `key_hash`
    (argon2) is the check; `key_encrypted` (Fernet) serves the secrets endpoint. `created_at` is
    when the current key was made.
    """

    __tablename__ = "api_keys"
    __table_args__ = (CheckConstraint("order_mode IN ('auto', 'semi_auto')", name="order_mode"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[str] = mapped_column(String(80), _user_fk(), unique=True)
    key_digest: Mapped[str] = mapped_column(String(64), unique=True)
    key_hash: Mapped[str] = mapped_column(String(255))
    key_encrypted: Mapped[str] = mapped_column(String(1024))
    order_mode: Mapped[str] = mapped_column(String(16), default="auto")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class UserSession(TimestampMixin, Base):
    """A web login; `created_at` is the login time."""

    __tablename__ = "sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[str] = mapped_column(String(128), unique=True)
    username: Mapped[str] = mapped_column(String(80), _user_fk(), index=True)
    device_info: Mapped[str | None] = mapped_column(String(500))
    ip_address: Mapped[str | None] = mapped_column(String(45))
    broker: Mapped[str | None] = mapped_column(String(32))
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    # Past it the session is gone for every read; retention deletes the row. Always set: null
    # only in the migration's window before it gives existing rows their lifetime.
    expires_at: Mapped[datetime | None] = mapped_column(index=True)
    data: Mapped[Any | None] = mapped_column(JSONDocument)


class LoginAttempt(TimestampMixin, Base):
    __tablename__ = "login_attempts"
    __table_args__ = (
        CheckConstraint("status IN ('success', 'failed', 'resumed')", name="status"),
        Index("ix_login_attempts_created_at_id", "created_at", "id"),
        Index("ix_login_attempts_username_created_at", "username", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(255))
    ip_address: Mapped[str | None] = mapped_column(String(45))
    device_info: Mapped[str | None] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(16))
    login_type: Mapped[str | None] = mapped_column(String(20))
    broker: Mapped[str | None] = mapped_column(String(32))
    failure_reason: Mapped[str | None] = mapped_column(String(255))
