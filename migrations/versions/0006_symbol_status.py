"""symbol status: per broker, where the download of its master contract stands

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30

One small row per broker (a handful at most): no index beyond the primary key. The status is a
checked enumeration; the per-exchange counts a JSON document, as the platform reads them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "master_contract_status",
        sa.Column("broker", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("total_symbols", sa.Integer(), nullable=False),
        sa.Column("is_ready", sa.Boolean(), nullable=False),
        sa.Column("exchange_stats", JSON_DOCUMENT, nullable=False),
        sa.Column("last_download_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("download_duration_seconds", sa.Float(), nullable=True),
        sa.Column("download_date", sa.Date(), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'downloading', 'success', 'error')",
            name=op.f("ck_master_contract_status_known_status"),
        ),
        sa.PrimaryKeyConstraint("broker", name=op.f("pk_master_contract_status")),
    )


def downgrade() -> None:
    op.drop_table("master_contract_status")
