"""The master contract: one row per instrument, and the version of the loaded contract.

`(exchange, symbol)` is the primary key (it also serves "every row of an exchange", which partial
loads and deletes need); `(token, exchange)` and `(brsymbol, exchange)` are indexed. On PostgreSQL
a pg_trgm GIN index over the searchable text backs the database path of symbol search.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Date,
    Float,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Text,
    literal_column,
)
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import NOT_COMPARED, Base, JSONDocument

# The text a search term is matched against: every searchable field, separated by a space. Terms
# never contain whitespace, so "a term is a substring of one of the fields" is the same as "a term
# is a substring of this", and one trigram index serves all four fields. Written exactly as
# PostgreSQL prints it back, so that the index expression compares equal in `alembic check`, and
# used verbatim by queries, so that the planner matches them with the index.
SEARCH_TEXT_SQL = (
    "((((((symbol::text || ' '::text) || brsymbol::text) || ' '::text)"
    " || COALESCE(name, ''::character varying)::text) || ' '::text) || token::text)"
)


# The search rank (shorter symbols first, then symbol and exchange in code-point order), as
# PostgreSQL prints the expressions back: the in-memory index is read in this order
# (service/symbol_source.py), streamed from this index rather than sorted first.
RANK_INDEX_SQL = ("length((symbol)::text)", 'symbol COLLATE "C"', 'exchange COLLATE "C"')


class Symbol(Base):
    __tablename__ = "symbols"
    __table_args__ = (
        PrimaryKeyConstraint("exchange", "symbol", name="pk_symbols"),
        Index("ix_symbols_token_exchange", "token", "exchange"),
        Index("ix_symbols_brsymbol_exchange", "brsymbol", "exchange"),
        # PostgreSQL only: SQLite has no GIN; alembic skips expression indexes it cannot reflect
        # there, and SQLite searches the in-memory index instead.
        Index(
            "ix_symbols_search",
            literal_column(SEARCH_TEXT_SQL).label("search_text"),
            postgresql_using="gin",
            postgresql_ops={"search_text": "gin_trgm_ops"},
        ),
        # PostgreSQL only, like the search index (migration 0011). alembic's reflection drops
        # the COLLATE of an index column, so it is left out of the drift comparison.
        Index("ix_symbols_rank", *map(literal_column, RANK_INDEX_SQL), info={NOT_COMPARED: True}),
    )

    symbol: Mapped[str] = mapped_column(String)
    brsymbol: Mapped[str] = mapped_column(String)
    name: Mapped[str | None] = mapped_column(String)
    exchange: Mapped[str] = mapped_column(String)
    brexchange: Mapped[str | None] = mapped_column(String)
    token: Mapped[str] = mapped_column(String)
    expiry: Mapped[str | None] = mapped_column(String)
    strike: Mapped[float | None] = mapped_column(Float)
    lotsize: Mapped[int | None] = mapped_column(Integer)
    instrumenttype: Mapped[str | None] = mapped_column(String)
    tick_size: Mapped[float | None] = mapped_column(Float)


class SymbolContract(Base):
    """The one row saying which contract is loaded: its version (bumped by every load or delete,
    and compared by every instance to decide whether its in-memory index is current)."""

    __tablename__ = "symbol_contract"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, default=0)
    loaded_at: Mapped[datetime | None]


class ContractDownload(Base):
    """Per broker, where the platform's download of its master contract stands: reported by the
    loader (`downloading`, `error`) and by a successful `PUT /symbols?broker=` (`success`, with
    its duration and per-exchange counts)."""

    __tablename__ = "master_contract_status"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'downloading', 'success', 'error')", name="known_status"
        ),
    )

    broker: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text)
    last_updated: Mapped[datetime]
    total_symbols: Mapped[int] = mapped_column(Integer, default=0)
    is_ready: Mapped[bool] = mapped_column(Boolean, default=False)
    exchange_stats: Mapped[dict[str, int]] = mapped_column(JSONDocument, default=dict)
    last_download_time: Mapped[datetime | None]
    download_duration_seconds: Mapped[float | None] = mapped_column(Float)
    download_date: Mapped[date | None] = mapped_column(Date)
