"""audit: who changed what, one row per change, in the change's own transaction

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30

Shaped like the log tables: a B-tree on (at, id) serves the keyset pages and the retention
chunks; the filters that pick few rows (resource kind, resource id, actor) get (filter, at, id).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "audit_entries",
        sa.Column("id", LOG_ID, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("resource", sa.String(length=32), nullable=False),
        sa.Column("resource_id", sa.String(length=255), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("changes", JSON_DOCUMENT, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_entries")),
    )
    for name, columns in (
        ("ix_audit_entries_at_id", ["at", "id"]),
        ("ix_audit_entries_resource_at_id", ["resource", "at", "id"]),
        ("ix_audit_entries_resource_id_at_id", ["resource_id", "at", "id"]),
        ("ix_audit_entries_actor_at_id", ["actor", "at", "id"]),
    ):
        op.create_index(name, "audit_entries", columns, unique=False)


def downgrade() -> None:
    op.drop_table("audit_entries")
