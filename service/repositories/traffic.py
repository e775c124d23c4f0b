"""Traffic logs: filtered pages and request statistics."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import desc, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from service.models.traffic import TrafficLog
from service.repositories import logs as logs_repo
from service.schemas.traffic import EndpointStats, TrafficStats
from service.stats import percentiles

TOP_ENDPOINTS = 20


def filters(
    *,
    client_ip: str | None,
    status_code: int | None,
    path_prefix: str | None,
    since: datetime | None,
    until: datetime | None,
) -> list[ColumnElement[bool]]:
    conditions = logs_repo.time_window(TrafficLog.timestamp, since, until)
    if client_ip is not None:
        conditions.append(TrafficLog.client_ip == client_ip)
    if status_code is not None:
        conditions.append(TrafficLog.status_code == status_code)
    if path_prefix:
        # substr, not LIKE: SQLite's LIKE ignores case and both treat % and _ as wildcards.
        conditions.append(func.substr(TrafficLog.path, 1, len(path_prefix)) == path_prefix)
    return conditions


async def traffic_stats(
    session: AsyncSession, since: datetime | None, until: datetime | None
) -> TrafficStats:
    where = logs_repo.time_window(TrafficLog.timestamp, since, until)
    errors = func.count().filter(TrafficLog.status_code >= 400)
    total, error_count, average = (
        await session.execute(
            select(func.count(), errors, func.avg(TrafficLog.duration_ms)).where(*where)
        )
    ).one()
    [p95] = (await percentiles(session, TrafficLog.duration_ms, [0.95], where=where)).get(
        None, [None]
    )
    count = func.count().label("count")
    top = await session.execute(
        select(TrafficLog.path, count, errors, func.avg(TrafficLog.duration_ms))
        .where(*where)
        .group_by(TrafficLog.path)
        .order_by(desc(count), TrafficLog.path)
        .limit(TOP_ENDPOINTS)
    )
    return TrafficStats(
        total_requests=total,
        error_requests=error_count,
        error_rate=error_count * 100 / total if total else None,
        avg_duration_ms=average,
        p95_duration_ms=p95,
        by_endpoint=[
            EndpointStats(path=path, count=n, errors=e, avg_duration_ms=avg)
            for path, n, e, avg in top.all()
        ],
    )
