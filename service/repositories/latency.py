"""Order latency: filtered pages and the SLA / percentile statistics, computed in the database."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from service.models.latency import OrderLatency
from service.repositories import logs as logs_repo
from service.schemas.latency import LatencyStats, LatencySummary
from service.stats import percentiles

PERCENTILES = (0.5, 0.9, 0.95, 0.99)
SLA_MS = (100, 150, 200)


def filters(
    *,
    broker: str | None,
    status: str | None,
    since: datetime | None,
    until: datetime | None,
) -> list[ColumnElement[bool]]:
    conditions = logs_repo.time_window(OrderLatency.timestamp, since, until)
    if broker is not None:
        conditions.append(OrderLatency.broker == broker)
    if status is not None:
        conditions.append(OrderLatency.status == status)
    return conditions


async def latency_stats(
    session: AsyncSession,
    *,
    since: datetime | None,
    until: datetime | None,
    broker: str | None,
) -> LatencyStats:
    """Overall and per-broker summaries of the rows in the window (and of `broker`, if given)."""
    where = filters(broker=broker, status=None, since=since, until=until)
    total = OrderLatency.total_latency_ms
    aggregates = (
        func.count(),
        func.count().filter(OrderLatency.status == "FAILED"),
        func.avg(OrderLatency.rtt_ms),
        func.avg(OrderLatency.overhead_ms),
        func.avg(total),
        *(func.count().filter(total <= limit) for limit in SLA_MS),
    )
    overall = (await session.execute(select(*aggregates).where(*where))).one()
    grouped = await session.execute(
        select(OrderLatency.broker, *aggregates)
        .where(*where, OrderLatency.broker.is_not(None))
        .group_by(OrderLatency.broker)
    )
    overall_p = await percentiles(session, total, PERCENTILES, where=where)
    broker_p = await percentiles(
        session,
        total,
        PERCENTILES,
        where=[*where, OrderLatency.broker.is_not(None)],
        group_by=OrderLatency.broker,
    )
    return LatencyStats(
        overall=_summary(overall, overall_p.get(None)),
        by_broker={row[0]: _summary(row[1:], broker_p.get(row[0])) for row in grouped.all()},
    )


def _summary(row: Any, quantiles: list[float | None] | None) -> LatencySummary:
    count, failed, avg_rtt, avg_overhead, avg_total, *within_sla = row
    p50, p90, p95, p99 = quantiles or [None] * len(PERCENTILES)

    def share(n: int) -> float | None:
        return n * 100 / count if count else None

    sla_100, sla_150, sla_200 = (share(n) for n in within_sla)
    return LatencySummary(
        count=count,
        success_rate=share(count - failed),
        avg_rtt_ms=avg_rtt,
        avg_overhead_ms=avg_overhead,
        avg_total_ms=avg_total,
        p50_total_ms=p50,
        p90_total_ms=p90,
        p95_total_ms=p95,
        p99_total_ms=p99,
        sla_100ms_pct=sla_100,
        sla_150ms_pct=sla_150,
        sla_200ms_pct=sla_200,
    )
