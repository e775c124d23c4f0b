"""settings: the one row of platform settings

Revision ID: 0001
Revises:
Create Date: 2026-11-25 16:11:31.532760
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "platform_settings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("analyze_mode", sa.Boolean(), nullable=False),
        sa.Column("smtp_server", sa.String(length=255), nullable=True),
        sa.Column("smtp_port", sa.Integer(), nullable=True),
        sa.Column("smtp_username", sa.String(length=255), nullable=True),
        sa.Column("smtp_password_encrypted", sa.String(length=1024), nullable=True),
        sa.Column("smtp_use_tls", sa.Boolean(), nullable=False),
        sa.Column("smtp_from_email", sa.String(length=255), nullable=True),
        sa.Column("smtp_helo_hostname", sa.String(length=255), nullable=True),
        sa.Column("auto_ban_enabled", sa.Boolean(), nullable=False),
        sa.Column("threshold_404", sa.Integer(), nullable=False),
        sa.Column("ban_duration_404_h", sa.Integer(), nullable=False),
        sa.Column("threshold_invalid_api_key", sa.Integer(), nullable=False),
        sa.Column("ban_duration_invalid_api_key_h", sa.Integer(), nullable=False),
        sa.Column("repeat_offender_limit", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_platform_settings_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_platform_settings")),
    )


def downgrade() -> None:
    op.drop_table("platform_settings")
