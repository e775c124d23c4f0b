"""Webhook strategies and their symbol mappings, for both families (`strategies`, `chartink`).

One implementation, parameterised by a `StrategyKind`: the family's models, schemas, URL prefix
and cache topic. The by-webhook lookup (on every alert's path) answers from memory; every change to
a strategy or its mappings invalidates its entry on every instance, inside the writing
transaction.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Select, bindparam, delete, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import selectinload

from service.cache import invalidate
from service.direct_read import fetch_rows
from service.errors import Conflict, NotFound, PayloadTooLarge, ValidationFailed
from service.models.strategies import (
    ChartinkStrategy,
    ChartinkSymbolMapping,
    Strategy,
    StrategySymbolMapping,
)
from service.schemas import strategies as schemas

AnyStrategy = Strategy | ChartinkStrategy
AnyMapping = StrategySymbolMapping | ChartinkSymbolMapping


@dataclass(frozen=True, slots=True)
class StrategyKind:
    """What tells the two families apart; everything else is shared."""

    name: str
    prefix: str
    label: str
    strategy: type[AnyStrategy]
    mapping: type[AnyMapping]
    create: type[schemas.ChartinkStrategyCreate]
    update: type[schemas.ChartinkStrategyUpdate]
    read: type[schemas.ChartinkStrategyRead]
    detail: type[schemas.ChartinkStrategyRead]
    mapping_batch: type[schemas.SymbolMappingBatch | schemas.ChartinkSymbolMappingBatch]
    mapping_read: type[schemas.SymbolMappingRead]
    symbol_field: str  # the mapping's symbol as clients name it

    @property
    def topic(self) -> str:
        return f"{self.name}.by-webhook"


STRATEGIES = StrategyKind(
    name="strategies",
    prefix="/strategies",
    label="strategy",
    strategy=Strategy,
    mapping=StrategySymbolMapping,
    create=schemas.StrategyCreate,
    update=schemas.StrategyUpdate,
    read=schemas.StrategyRead,
    detail=schemas.StrategyDetail,
    mapping_batch=schemas.SymbolMappingBatch,
    mapping_read=schemas.SymbolMappingRead,
    symbol_field="symbol",
)

CHARTINK = StrategyKind(
    name="chartink",
    prefix="/chartink/strategies",
    label="chartink strategy",
    strategy=ChartinkStrategy,
    mapping=ChartinkSymbolMapping,
    create=schemas.ChartinkStrategyCreate,
    update=schemas.ChartinkStrategyUpdate,
    read=schemas.ChartinkStrategyRead,
    detail=schemas.ChartinkStrategyDetail,
    mapping_batch=schemas.ChartinkSymbolMappingBatch,
    mapping_read=schemas.ChartinkSymbolMappingRead,
    symbol_field="chartink_symbol",
)


# --- validation ---------------------------------------------------------------------------------


def check_times(values: Mapping[str, Any]) -> None:
    """An intraday strategy needs all three times, with start < end <= squareoff.

    `values` is the strategy as it will be stored: the body on create, the row merged with the
    body on update. Zero-padded HH:MM strings compare in time order.
    """
    if not values["is_intraday"]:
        return
    for field in schemas.TIME_FIELDS:
        if values.get(field) is None:
            raise ValidationFailed.field(["body", field], "is required for an intraday strategy")
    if values["start_time"] >= values["end_time"]:
        raise ValidationFailed.field(["body", "end_time"], "must be later than start_time")
    if values["end_time"] > values["squareoff_time"]:
        raise ValidationFailed.field(["body", "squareoff_time"], "must not be before end_time")


def _not_found(kind: StrategyKind, strategy_id: int) -> NotFound:
    return NotFound(f"There is no {kind.label} {strategy_id}.")


# --- strategies ---------------------------------------------------------------------------------


async def create_strategy(
    session: AsyncSession, kind: StrategyKind, *, data: schemas.ChartinkStrategyCreate
) -> AnyStrategy:
    values = data.model_dump()
    check_times(values)
    row = kind.strategy(webhook_id=str(uuid.uuid4()), **values)
    session.add(row)
    await session.flush()
    return row


async def list_strategies(
    session: AsyncSession,
    kind: StrategyKind,
    *,
    user_id: str | None = None,
    is_active: bool | None = None,
    limit: int,
) -> Sequence[AnyStrategy]:
    """Strategies with their symbols, in creation order: two statements, however many rows."""
    query = select(kind.strategy).options(selectinload(kind.strategy.symbols))
    if user_id is not None:
        query = query.where(kind.strategy.user_id == user_id)
    if is_active is not None:
        query = query.where(kind.strategy.is_active == is_active)
    rows = (await session.scalars(query.order_by(kind.strategy.id).limit(limit))).all()
    return cast(Sequence[AnyStrategy], rows)


_MAPPING_FIELDS = ("id", "strategy_id", "symbol", "exchange", "quantity", "product_type")


@functools.cache
def _detail_query(kind: StrategyKind, key: str) -> Select[Any]:
    """A strategy LEFT JOIN its mappings, by `key` (`id` or `webhook_id`): one row per mapping.

    A Core statement, built once: this is the read path of every cold webhook lookup and of
    GET by id, and one round trip without ORM instances costs a fraction of two with them.
    """
    strategy = kind.strategy.__table__
    mapping = kind.mapping.__mapper__.columns  # by attribute: chartink's `symbol` column differs
    return (
        select(strategy, *(mapping[f].label(f"symbol_{f}") for f in _MAPPING_FIELDS))
        .outerjoin_from(strategy, kind.mapping.__table__, mapping["strategy_id"] == strategy.c.id)
        .where(strategy.c[key] == bindparam("key"))
        .order_by(mapping["id"])
    )


def _detail_of(kind: StrategyKind, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The strategy with its symbols from the rows of its _detail_query, or None for none."""
    if not rows:
        return None
    first = rows[0]
    detail = {column.key: first[column.key] for column in kind.strategy.__table__.c}
    detail["symbols"] = [
        {f: row[f"symbol_{f}"] for f in _MAPPING_FIELDS}
        for row in rows
        if row["symbol_id"] is not None
    ]
    return detail


async def get_detail_by_webhook(
    session: AsyncSession, kind: StrategyKind, webhook_id: str
) -> dict[str, Any] | None:
    """The strategy with its symbols, by webhook id (one statement), or None."""
    query = _detail_query(kind, "webhook_id")
    rows = (await session.execute(query, {"key": webhook_id})).mappings().all()
    return _detail_of(kind, rows)


async def get_strategy_json(reads: AsyncEngine, kind: StrategyKind, strategy_id: int) -> bytes:
    """A strategy with its symbols, from the database, rendered as its detail's JSON.

    One statement on a connection held for it alone, run by the driver itself (direct_read),
    without a session or a transaction of its own, and one pydantic pass from the rows to the
    bytes: this is the uncached read of a strategy.
    """
    rows = await fetch_rows(reads, _detail_query(kind, "id"), key=strategy_id)
    detail = _detail_of(kind, rows)
    if detail is None:
        raise _not_found(kind, strategy_id)
    return kind.detail.model_validate(detail).model_dump_json(by_alias=True).encode()


async def update_strategy(
    session: AsyncSession,
    kind: StrategyKind,
    *,
    strategy_id: int,
    data: schemas.ChartinkStrategyUpdate,
) -> AnyStrategy:
    # Locked, so that two concurrent updates cannot each pass the time check on their own and
    # together leave an invalid strategy.
    row: AnyStrategy | None = await session.get(kind.strategy, strategy_id, with_for_update=True)
    if row is None:
        raise _not_found(kind, strategy_id)
    changes = data.model_dump(exclude_unset=True)
    check_times({f: changes.get(f, getattr(row, f)) for f in ("is_intraday", *schemas.TIME_FIELDS)})
    if changes:
        for field, value in changes.items():
            setattr(row, field, value)
        await session.flush()
        await invalidate(session, kind.topic, row.webhook_id)
    return row


async def delete_strategy(session: AsyncSession, kind: StrategyKind, *, strategy_id: int) -> None:
    """Delete a strategy; the database deletes its mappings (ON DELETE CASCADE)."""
    webhook_id = await session.scalar(
        delete(kind.strategy)
        .where(kind.strategy.id == strategy_id)
        .returning(kind.strategy.webhook_id)
        .execution_options(synchronize_session=False)
    )
    if webhook_id is None:
        raise _not_found(kind, strategy_id)
    await invalidate(session, kind.topic, webhook_id)


# --- symbol mappings ----------------------------------------------------------------------------


async def _webhook_id(session: AsyncSession, kind: StrategyKind, strategy_id: int) -> str:
    webhook_id = await session.scalar(
        select(kind.strategy.webhook_id).where(kind.strategy.id == strategy_id)
    )
    if webhook_id is None:
        raise _not_found(kind, strategy_id)
    return webhook_id


async def list_mappings(
    session: AsyncSession, kind: StrategyKind, *, strategy_id: int
) -> Sequence[AnyMapping]:
    await _webhook_id(session, kind, strategy_id)
    query = select(kind.mapping).where(kind.mapping.strategy_id == strategy_id)
    rows = (await session.scalars(query.order_by(kind.mapping.id))).all()
    return cast(Sequence[AnyMapping], rows)


async def add_mappings(
    session: AsyncSession,
    kind: StrategyKind,
    *,
    strategy_id: int,
    items: Sequence[schemas.SymbolMappingCreate],
) -> list[AnyMapping]:
    """Add a batch of mappings: all of them, or none (a duplicate anywhere is a 409)."""
    if len(items) > schemas.MAX_BATCH:
        raise PayloadTooLarge(f"A batch holds at most {schemas.MAX_BATCH} mappings.")
    first_seen: dict[tuple[str, str], int] = {}
    for index, item in enumerate(items):
        earlier = first_seen.setdefault((item.symbol, item.exchange), index)
        if earlier != index:
            raise Conflict(
                f"Items {earlier} and {index} map the same {kind.symbol_field} "
                f"{item.symbol!r} on {item.exchange}."
            )
    webhook_id = await _webhook_id(session, kind, strategy_id)
    # Found here for a precise message; the unique constraint still guards against a
    # concurrent insert (that one is a 409 too, from the IntegrityError).
    existing = (
        await session.execute(
            select(kind.mapping.symbol, kind.mapping.exchange).where(
                kind.mapping.strategy_id == strategy_id,
                tuple_(kind.mapping.symbol, kind.mapping.exchange).in_(list(first_seen)),
            )
        )
    ).first()
    if existing is not None:
        index = first_seen[(existing.symbol, existing.exchange)]
        raise Conflict(
            f"Item {index}: {kind.symbol_field} {existing.symbol!r} on {existing.exchange} "
            f"is already mapped to {kind.label} {strategy_id}."
        )
    rows = [kind.mapping(strategy_id=strategy_id, **item.model_dump()) for item in items]
    session.add_all(rows)
    await session.flush()
    await invalidate(session, kind.topic, webhook_id)
    return rows


async def delete_mapping(
    session: AsyncSession, kind: StrategyKind, *, strategy_id: int, mapping_id: int
) -> None:
    webhook_id = await _webhook_id(session, kind, strategy_id)
    deleted = await session.scalar(
        delete(kind.mapping)
        .where(kind.mapping.id == mapping_id, kind.mapping.strategy_id == strategy_id)
        .returning(kind.mapping.id)
        .execution_options(synchronize_session=False)
    )
    if deleted is None:
        raise NotFound(
            f"{kind.label.capitalize()} {strategy_id} has no symbol mapping {mapping_id}."
        )
    await invalidate(session, kind.topic, webhook_id)
