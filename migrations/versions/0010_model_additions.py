"""model additions: user names and preferences, broker refresh token and expiry, session expiry
and data, strategy definitions

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30

Existing sessions get the default lifetime (24 hours) from their last activity, so an upgrade
logs no one out that was active within it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.add_column("users", sa.Column("first_name", sa.String(length=100), nullable=True))
    op.add_column("users", sa.Column("last_name", sa.String(length=100), nullable=True))
    op.create_table(
        "user_preferences",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=80), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", JSON_DOCUMENT, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["username"],
            ["users.username"],
            name=op.f("fk_user_preferences_username_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_preferences")),
        sa.UniqueConstraint("username", "key", name="uq_user_preferences_key"),
    )
    op.add_column(
        "broker_tokens",
        sa.Column("refresh_token_encrypted", sa.String(length=8192), nullable=True),
    )
    op.add_column(
        "broker_tokens", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("sessions", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("sessions", sa.Column("data", JSON_DOCUMENT, nullable=True))
    op.create_index(op.f("ix_sessions_expires_at"), "sessions", ["expires_at"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("UPDATE sessions SET expires_at = last_seen + interval '24 hours'")
    else:
        op.execute("UPDATE sessions SET expires_at = datetime(last_seen, '+24 hours')")
    for table in ("strategies", "chartink_strategies"):
        op.add_column(table, sa.Column("definition", JSON_DOCUMENT, nullable=True))


def downgrade() -> None:
    for table in ("chartink_strategies", "strategies"):
        op.drop_column(table, "definition")
    op.drop_index(op.f("ix_sessions_expires_at"), table_name="sessions")
    op.drop_column("sessions", "data")
    op.drop_column("sessions", "expires_at")
    op.drop_column("broker_tokens", "expires_at")
    op.drop_column("broker_tokens", "refresh_token_encrypted")
    op.drop_table("user_preferences")
    op.drop_column("users", "last_name")
    op.drop_column("users", "first_name")
