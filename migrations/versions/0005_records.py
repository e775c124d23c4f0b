"""records: order, analyzer, traffic and latency logs; IP bans and trackers

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25

Indexes of the log tables: a B-tree on (time, id), not BRIN. Every list is a keyset page,
`ORDER BY time DESC, id DESC LIMIT n` after a (time, id) cursor, which only an ordered index
answers without sorting; the same index serves the time-window stats and picks the rows of each
retention chunk. BRIN is smaller but returns no order (each page would sort the whole window),
and a second index on the same column would tax every insert of the busiest tables for scans the
B-tree already serves. The filters that pick few rows get a (filter, time, id) B-tree: api_type,
client_ip, broker. Coarse filters (traffic status_code, path_prefix, latency status) walk the
time index newest first and stop after one page of matches, cheaper overall than one more index
maintained on every insert.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _api_log_table(name: str) -> None:
    op.create_table(
        name,
        sa.Column("id", LOG_ID, nullable=False),
        sa.Column("api_type", sa.String(length=50), nullable=False),
        sa.Column("request_data", JSON_DOCUMENT, nullable=False),
        sa.Column("response_data", JSON_DOCUMENT, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{name}")),
    )
    op.create_index(f"ix_{name}_created_at_id", name, ["created_at", "id"], unique=False)
    op.create_index(
        f"ix_{name}_api_type_created_at_id", name, ["api_type", "created_at", "id"], unique=False
    )


def upgrade() -> None:
    _api_log_table("order_logs")
    _api_log_table("analyzer_logs")

    op.create_table(
        "traffic_logs",
        sa.Column("id", LOG_ID, nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("client_ip", sa.String(length=45), nullable=False),
        sa.Column("method", sa.String(length=10), nullable=False),
        sa.Column("path", sa.String(length=2048), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("duration_ms", sa.Double(), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("user_id", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_traffic_logs")),
    )
    op.create_index(
        "ix_traffic_logs_timestamp_id", "traffic_logs", ["timestamp", "id"], unique=False
    )
    op.create_index(
        "ix_traffic_logs_client_ip_timestamp_id",
        "traffic_logs",
        ["client_ip", "timestamp", "id"],
        unique=False,
    )

    op.create_table(
        "ip_bans",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ip_address", sa.String(length=45), nullable=False),
        sa.Column("reason", sa.String(length=255), nullable=True),
        sa.Column("ban_count", sa.Integer(), nullable=False),
        sa.Column("banned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("is_permanent", sa.Boolean(), nullable=False),
        sa.Column("created_by", sa.String(length=50), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ip_bans")),
        sa.UniqueConstraint("ip_address", name=op.f("uq_ip_bans_ip_address")),
    )
    op.create_table(
        "ip_offence_counters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("ip_address", sa.String(length=45), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_detail", sa.String(length=2048), nullable=True),
        sa.CheckConstraint(
            "kind IN ('404', 'invalid_api_key')", name=op.f("ck_ip_offence_counters_kind")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ip_offence_counters")),
        sa.UniqueConstraint(
            "kind", "day", "ip_address", name=op.f("uq_ip_offence_counters_kind_day_ip_address")
        ),
    )

    op.create_table(
        "order_latency",
        sa.Column("id", LOG_ID, nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("order_id", sa.String(length=100), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=True),
        sa.Column("broker", sa.String(length=50), nullable=True),
        sa.Column("symbol", sa.String(length=100), nullable=True),
        sa.Column("order_type", sa.String(length=50), nullable=True),
        sa.Column("rtt_ms", sa.Double(), nullable=True),
        sa.Column("validation_latency_ms", sa.Double(), nullable=True),
        sa.Column("response_latency_ms", sa.Double(), nullable=True),
        sa.Column("overhead_ms", sa.Double(), nullable=True),
        sa.Column("total_latency_ms", sa.Double(), nullable=False),
        sa.Column("request_body", JSON_DOCUMENT, nullable=True),
        sa.Column("response_body", JSON_DOCUMENT, nullable=True),
        sa.Column("status", sa.String(length=20), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_order_latency")),
    )
    op.create_index(
        "ix_order_latency_timestamp_id", "order_latency", ["timestamp", "id"], unique=False
    )
    op.create_index(
        "ix_order_latency_broker_timestamp_id",
        "order_latency",
        ["broker", "timestamp", "id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_table("order_latency")
    op.drop_table("ip_offence_counters")
    op.drop_table("ip_bans")
    op.drop_table("traffic_logs")
    op.drop_table("analyzer_logs")
    op.drop_table("order_logs")
