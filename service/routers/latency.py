"""latency: order round-trip timings and their SLA and percentile statistics."""

from __future__ import annotations

from typing import Annotated, Any, cast

from fastapi import Depends, Query
from sqlalchemy import Table

from service.db import SessionDep
from service.errors import problems
from service.models.latency import OrderLatency
from service.pagination import DEFAULT_LIMIT, CursorPage, CursorParam, LimitParam
from service.repositories import latency as latency_repo
from service.repositories import logs as logs_repo
from service.routers.base import domain_router
from service.schemas.base import Deleted
from service.schemas.latency import LatencyCreate, LatencyRead, LatencyStats, OrderStatus
from service.schemas.logs import Batch, BeforeParam, Count, SinceParam, UntilParam
from service.schemas.types import query_text
from service.state import StateDep, WritersDep

router = domain_router("/latency", "latency")

_table = cast(Table, OrderLatency.__table__)
_batch = Batch(LatencyCreate)

Broker = Annotated[str | None, query_text(50)]


@router.post(
    "",
    status_code=201,
    response_model=Count,
    responses=problems(400, 413, 415),
    openapi_extra=_batch.openapi,
)
async def create_latency(
    writers: WritersDep, items: Annotated[list[LatencyCreate], Depends(_batch)]
) -> Count:
    """Write one timing or a batch of up to 1000; answered once they are committed."""
    await writers.latency.submit(logs_repo.rows_from(items, "timestamp"))
    return Count(count=len(items))


@router.get("", response_model=CursorPage[LatencyRead])
async def list_latency(
    session: SessionDep,
    broker: Broker = None,
    status: Annotated[OrderStatus | None, Query()] = None,
    since: SinceParam = None,
    until: UntilParam = None,
    limit: LimitParam = DEFAULT_LIMIT,
    cursor: CursorParam = None,
) -> dict[str, Any]:
    """List timings newest first, one keyset page at a time."""
    conditions = latency_repo.filters(broker=broker, status=status, since=since, until=until)
    items, next_cursor = await logs_repo.list_page(
        session, OrderLatency, OrderLatency.timestamp, conditions, cursor=cursor, limit=limit
    )
    return {"items": items, "next_cursor": next_cursor}


@router.get("/stats", response_model=LatencyStats)
async def get_latency_stats(
    session: SessionDep, since: SinceParam = None, until: UntilParam = None, broker: Broker = None
) -> LatencyStats:
    """Success rate, averages, p50/p90/p95/p99 and SLA shares, overall and per broker."""
    return await latency_repo.latency_stats(session, since=since, until=until, broker=broker)


@router.delete("", response_model=Deleted)
async def delete_latency(state: StateDep, before: BeforeParam) -> Deleted:
    """Delete timings older than `before`, in short transactions; returns how many."""
    deleted = await logs_repo.delete_before(state.sessionmaker, _table, _table.c.timestamp, before)
    return Deleted(deleted=deleted)
