"""symbols: the master contract and its search indexes

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Kept in step with service.models.symbols.SEARCH_TEXT_SQL (alembic check compares them).
SEARCH_TEXT_SQL = (
    "((((((symbol::text || ' '::text) || brsymbol::text) || ' '::text)"
    " || COALESCE(name, ''::character varying)::text) || ' '::text) || token::text)"
)


def upgrade() -> None:
    op.create_table(
        "symbols",
        sa.Column("symbol", sa.String(), nullable=False),
        sa.Column("brsymbol", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=True),
        sa.Column("exchange", sa.String(), nullable=False),
        sa.Column("brexchange", sa.String(), nullable=True),
        sa.Column("token", sa.String(), nullable=False),
        sa.Column("expiry", sa.String(), nullable=True),
        sa.Column("strike", sa.Float(), nullable=True),
        sa.Column("lotsize", sa.Integer(), nullable=True),
        sa.Column("instrumenttype", sa.String(), nullable=True),
        sa.Column("tick_size", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("exchange", "symbol", name="pk_symbols"),
    )
    op.create_index("ix_symbols_token_exchange", "symbols", ["token", "exchange"], unique=False)
    op.create_index(
        "ix_symbols_brsymbol_exchange", "symbols", ["brsymbol", "exchange"], unique=False
    )
    op.create_table(
        "symbol_contract",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("id = 1", name=op.f("ck_symbol_contract_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_symbol_contract")),
    )
    if op.get_bind().dialect.name == "postgresql":
        # pg_trgm is a trusted extension (PostgreSQL 13+): the database owner may create it.
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.create_index(
            "ix_symbols_search",
            "symbols",
            [sa.literal_column(SEARCH_TEXT_SQL).label("search_text")],
            postgresql_using="gin",
            postgresql_ops={"search_text": "gin_trgm_ops"},
        )


def downgrade() -> None:
    # The pg_trgm extension stays: other objects in the database may use it.
    op.drop_table("symbol_contract")
    op.drop_table("symbols")
