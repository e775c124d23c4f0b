"""idempotency keys: the first answer to a keyed POST, per caller and key

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30

A unique constraint on (caller, key) is the claim: the first request inserts its row, a
concurrent duplicate's insert finds it (ON CONFLICT DO NOTHING) and waits for the answer. A
surrogate id lets retention delete expired rows in chunks as it does for the logs; the
(expires_at, id) index picks each chunk.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("id", ROW_ID, nullable=False),
        sa.Column("caller", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("locked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("headers", JSON_DOCUMENT, nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_keys")),
        sa.UniqueConstraint("caller", "key", name=op.f("uq_idempotency_keys_caller_key")),
    )
    op.create_index(
        "ix_idempotency_keys_expires_at_id",
        "idempotency_keys",
        ["expires_at", "id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_idempotency_keys_expires_at_id", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
