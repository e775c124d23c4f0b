"""Percentiles computed in the database, identical on both backends.

The definition is linear interpolation between the two nearest ranks (numpy's default,
PostgreSQL's percentile_cont): for n sorted values x[0..n-1] and fraction q, with p = q·(n-1),
the answer is x[⌊p⌋] + (x[⌊p⌋+1] - x[⌊p⌋])·(p - ⌊p⌋). PostgreSQL has it built in; on SQLite the
same formula is evaluated over row_number() in one query, so no rows leave the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Float, Integer, case, cast, func, literal, null, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.elements import ColumnElement

Column = ColumnElement[Any] | InstrumentedAttribute[Any]


async def percentiles(
    session: AsyncSession,
    value: Column,
    fractions: Sequence[float],
    *,
    where: Sequence[ColumnElement[bool]] = (),
    group_by: Column | None = None,
) -> dict[Any, list[float | None]]:
    """The `fractions` (0-1) percentiles of `value` per group (one key, None, when ungrouped).

    NULL values are ignored, as percentile_cont ignores them.
    """
    conditions = [*where, value.is_not(None)]
    group = group_by if group_by is not None else null()
    if session.get_bind().dialect.name == "postgresql":
        query = select(
            group,
            func.percentile_cont(literal(list(fractions), ARRAY(Float))).within_group(value),
        ).where(*conditions)
        if group_by is not None:
            query = query.group_by(group_by)
        return {
            key: list(values) if values is not None else [None] * len(fractions)
            for key, values in (await session.execute(query)).all()
        }
    return await _interpolated(session, value, fractions, conditions, group_by)


async def _interpolated(
    session: AsyncSession,
    value: Column,
    fractions: Sequence[float],
    conditions: list[ColumnElement[bool]],
    group_by: Column | None,
) -> dict[Any, list[float | None]]:
    partition = [group_by] if group_by is not None else None
    ranked = (
        select(
            (group_by if group_by is not None else null()).label("g"),
            value.label("x"),
            (func.row_number().over(partition_by=partition, order_by=value) - 1).label("rn"),
            func.count().over(partition_by=partition).label("n"),
        )
        .where(*conditions)
        .subquery()
    )
    columns = []
    for q in fractions:
        position = literal(q, Float) * (ranked.c.n - 1)
        lower = cast(position, Integer)  # truncation is floor: position is never negative
        x_low = func.max(case((ranked.c.rn == lower, ranked.c.x)))
        x_high = func.max(case((ranked.c.rn == lower + 1, ranked.c.x)))
        weight = func.max(position - lower)
        columns.append(x_low + (func.coalesce(x_high, x_low) - x_low) * weight)
    query = select(ranked.c.g, *columns).group_by(ranked.c.g)
    return {row[0]: list(row[1:]) for row in (await session.execute(query)).all()}
