"""Webhook strategies and their symbol mappings, in two families of the same shape: `strategies`
(TradingView, Amibroker, Python, ...) and `chartink_strategies`.

Mappings hang off their strategy by a foreign key with ON DELETE CASCADE, so the database itself
removes them with the strategy (SQLite included: foreign_keys=ON on every connection). Chartink
names its symbol column `chartink_symbol`; the attribute is `symbol` in both families, so the code
above the models never tells them apart.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from service.models.base import Base, JSONDocument, TimestampMixin, utcnow

NAME_LENGTH = 255
SYMBOL_LENGTH = 50
EXCHANGE_LENGTH = 20


class _StrategyColumns(TimestampMixin):
    id: Mapped[int] = mapped_column(Integer, primary_key=True, sort_order=-2)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    webhook_id: Mapped[str] = mapped_column(String(36), unique=True, index=True)
    user_id: Mapped[str] = mapped_column(String(NAME_LENGTH), index=True)
    is_active: Mapped[bool] = mapped_column(default=True)
    is_intraday: Mapped[bool] = mapped_column(default=True)
    start_time: Mapped[str | None] = mapped_column(String(5))
    end_time: Mapped[str | None] = mapped_column(String(5))
    squareoff_time: Mapped[str | None] = mapped_column(String(5))
    definition: Mapped[Any | None] = mapped_column(JSONDocument)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class _MappingColumns(TimestampMixin):
    id: Mapped[int] = mapped_column(Integer, primary_key=True, sort_order=-2)
    exchange: Mapped[str] = mapped_column(String(EXCHANGE_LENGTH))
    quantity: Mapped[int] = mapped_column(Integer)
    product_type: Mapped[str] = mapped_column(String(4))


def _mapping_checks() -> tuple[CheckConstraint, ...]:
    return (
        CheckConstraint("quantity > 0", name="quantity_positive"),
        CheckConstraint("product_type IN ('MIS', 'CNC', 'NRML')", name="product_type_known"),
    )


class StrategySymbolMapping(_MappingColumns, Base):
    __tablename__ = "strategy_symbol_mappings"
    __table_args__ = (
        # Leads with strategy_id, so it also serves "the mappings of a strategy".
        UniqueConstraint(
            "strategy_id", "symbol", "exchange", name="uq_strategy_symbol_mappings_key"
        ),
        *_mapping_checks(),
    )

    strategy_id: Mapped[int] = mapped_column(
        ForeignKey("strategies.id", ondelete="CASCADE"), sort_order=-1
    )
    symbol: Mapped[str] = mapped_column(String(SYMBOL_LENGTH), sort_order=-1)


class Strategy(_StrategyColumns, Base):
    __tablename__ = "strategies"

    platform: Mapped[str] = mapped_column(String(20), default="tradingview", sort_order=1)
    trading_mode: Mapped[str] = mapped_column(String(5), default="LONG", sort_order=1)

    symbols: Mapped[list[StrategySymbolMapping]] = relationship(
        lazy="raise", order_by=StrategySymbolMapping.id, passive_deletes=True
    )


class ChartinkSymbolMapping(_MappingColumns, Base):
    __tablename__ = "chartink_symbol_mappings"
    __table_args__ = (
        # Named by hand: the generated name would pass PostgreSQL's 63-character limit.
        UniqueConstraint(
            "strategy_id", "chartink_symbol", "exchange", name="uq_chartink_symbol_mappings_key"
        ),
        *_mapping_checks(),
    )

    strategy_id: Mapped[int] = mapped_column(
        ForeignKey("chartink_strategies.id", ondelete="CASCADE"), sort_order=-1
    )
    symbol: Mapped[str] = mapped_column("chartink_symbol", String(SYMBOL_LENGTH), sort_order=-1)


class ChartinkStrategy(_StrategyColumns, Base):
    __tablename__ = "chartink_strategies"

    symbols: Mapped[list[ChartinkSymbolMapping]] = relationship(
        lazy="raise", order_by=ChartinkSymbolMapping.id, passive_deletes=True
    )
