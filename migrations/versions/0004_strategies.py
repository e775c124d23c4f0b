"""strategies: webhook strategies and chartink, with their symbol mappings

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (strategy table, mapping table, the mapping's symbol column, columns only this family has)
FAMILIES = (
    (
        "strategies",
        "strategy_symbol_mappings",
        "symbol",
        lambda: [
            sa.Column("platform", sa.String(length=20), nullable=False),
            sa.Column("trading_mode", sa.String(length=5), nullable=False),
        ],
    ),
    ("chartink_strategies", "chartink_symbol_mappings", "chartink_symbol", lambda: []),
)


def upgrade() -> None:
    for strategies, mappings, symbol, extra_columns in FAMILIES:
        op.create_table(
            strategies,
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("name", sa.String(length=255), nullable=False),
            sa.Column("webhook_id", sa.String(length=36), nullable=False),
            sa.Column("user_id", sa.String(length=255), nullable=False),
            sa.Column("is_active", sa.Boolean(), nullable=False),
            sa.Column("is_intraday", sa.Boolean(), nullable=False),
            sa.Column("start_time", sa.String(length=5), nullable=True),
            sa.Column("end_time", sa.String(length=5), nullable=True),
            sa.Column("squareoff_time", sa.String(length=5), nullable=True),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column(
                "created_at",
                sa.DateTime(timezone=True),
                server_default=sa.text("CURRENT_TIMESTAMP"),
                nullable=False,
            ),
            *extra_columns(),
            sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{strategies}")),
        )
        op.create_index(op.f(f"ix_{strategies}_user_id"), strategies, ["user_id"], unique=False)
        op.create_index(
            op.f(f"ix_{strategies}_webhook_id"), strategies, ["webhook_id"], unique=True
        )
        op.create_table(
            mappings,
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("strategy_id", sa.Integer(), nullable=False),
            sa.Column(symbol, sa.String(length=50), nullable=False),
            sa.Column("exchange", sa.String(length=20), nullable=False),
            sa.Column("quantity", sa.Integer(), nullable=False),
            sa.Column("product_type", sa.String(length=4), nullable=False),
            sa.Column(
                "created_at",
                sa.DateTime(timezone=True),
                server_default=sa.text("CURRENT_TIMESTAMP"),
                nullable=False,
            ),
            sa.CheckConstraint(
                "product_type IN ('MIS', 'CNC', 'NRML')",
                name=op.f(f"ck_{mappings}_product_type_known"),
            ),
            sa.CheckConstraint("quantity > 0", name=op.f(f"ck_{mappings}_quantity_positive")),
            sa.ForeignKeyConstraint(
                ["strategy_id"],
                [f"{strategies}.id"],
                name=op.f(f"fk_{mappings}_strategy_id_{strategies}"),
                ondelete="CASCADE",
            ),
            sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{mappings}")),
            sa.UniqueConstraint("strategy_id", symbol, "exchange", name=op.f(f"uq_{mappings}_key")),
        )


def downgrade() -> None:
    for strategies, mappings, _, _ in reversed(FAMILIES):
        op.drop_table(mappings)
        op.drop_index(op.f(f"ix_{strategies}_webhook_id"), table_name=strategies)
        op.drop_index(op.f(f"ix_{strategies}_user_id"), table_name=strategies)
        op.drop_table(strategies)
