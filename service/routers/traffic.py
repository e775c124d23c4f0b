"""traffic: request logs of the platform, and IP defence (bans, 404 and invalid-key trackers)."""

from __future__ import annotations

from typing import Annotated, Any, cast

from fastapi import Depends, Path, Query, Response
from sqlalchemy import Table

from service.db import SessionDep
from service.errors import problems
from service.models.traffic import TrafficLog
from service.pagination import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    CursorPage,
    CursorParam,
    LimitParam,
    ListLimitParam,
)
from service.repositories import bans as bans_repo
from service.repositories import logs as logs_repo
from service.repositories import traffic as traffic_repo
from service.repositories.settings import get_settings
from service.routers.base import domain_router
from service.schemas.base import Deleted, Items
from service.schemas.logs import Batch, BeforeParam, Count, SinceParam, UntilParam
from service.schemas.traffic import (
    BanCreate,
    BanRead,
    BanStatus,
    InvalidApiKeyEvent,
    IPAddress,
    NotFoundEvent,
    OffenceCount,
    Suspicious,
    TrafficLogCreate,
    TrafficLogRead,
    TrafficStats,
)
from service.schemas.types import query_text
from service.state import BansDep, StateDep, WritersDep

router = domain_router("/traffic", "traffic")

_table = cast(Table, TrafficLog.__table__)
_batch = Batch(TrafficLogCreate)


@router.post(
    "/logs",
    status_code=201,
    response_model=Count,
    responses=problems(400, 413, 415),
    openapi_extra=_batch.openapi,
)
async def create_traffic_logs(
    writers: WritersDep, items: Annotated[list[TrafficLogCreate], Depends(_batch)]
) -> Count:
    """Write one request log or a batch of up to 1000; answered once they are committed."""
    await writers.traffic_logs.submit(logs_repo.rows_from(items, "timestamp"))
    return Count(count=len(items))


@router.get("/logs", response_model=CursorPage[TrafficLogRead])
async def list_traffic_logs(
    session: SessionDep,
    client_ip: Annotated[IPAddress | None, Query()] = None,
    status_code: Annotated[int | None, Query(ge=100, le=599)] = None,
    path_prefix: Annotated[str | None, query_text(2048)] = None,
    since: SinceParam = None,
    until: UntilParam = None,
    limit: LimitParam = DEFAULT_LIMIT,
    cursor: CursorParam = None,
) -> dict[str, Any]:
    """List request logs newest first, one keyset page at a time."""
    conditions = traffic_repo.filters(
        client_ip=client_ip,
        status_code=status_code,
        path_prefix=path_prefix,
        since=since,
        until=until,
    )
    items, next_cursor = await logs_repo.list_page(
        session, TrafficLog, TrafficLog.timestamp, conditions, cursor=cursor, limit=limit
    )
    return {"items": items, "next_cursor": next_cursor}


@router.get("/stats", response_model=TrafficStats)
async def get_traffic_stats(
    session: SessionDep, since: SinceParam = None, until: UntilParam = None
) -> TrafficStats:
    """Totals, error rate, average and p95 duration, and the 20 busiest paths."""
    return await traffic_repo.traffic_stats(session, since, until)


@router.delete("/logs", response_model=Deleted)
async def delete_traffic_logs(state: StateDep, before: BeforeParam) -> Deleted:
    """Delete request logs (and 404/key counters of past days) older than `before`."""
    deleted = await logs_repo.delete_before(state.sessionmaker, _table, _table.c.timestamp, before)
    await bans_repo.prune_counters(state.sessionmaker, before)
    return Deleted(deleted=deleted)


@router.post("/bans", status_code=201, response_model=BanRead, responses=problems(400, 415))
async def create_ban(body: BanCreate, session: SessionDep, state: StateDep) -> Any:
    """Ban an address; banning it again extends the ban and counts the repeat."""
    security = (await get_settings(session, state.caches)).security
    return await bans_repo.create_ban(
        session,
        ip=body.ip_address,
        reason=body.reason,
        hours=body.duration_hours,
        permanent=body.permanent,
        force=body.force,
        trusted=state.settings.TRUSTED_IPS,
        repeat_offender_limit=security.repeat_offender_limit,
    )


@router.get("/bans", response_model=Items[BanRead])
async def list_bans(
    session: SessionDep,
    include_expired: Annotated[
        bool, Query(alias="all", description="Include expired bans.")
    ] = False,
    limit: ListLimitParam = MAX_LIMIT,
) -> dict[str, Any]:
    """List active bans, newest first (expired ones too with `all=true`; at most `limit`)."""
    return {
        "items": await bans_repo.list_bans(session, include_expired=include_expired, limit=limit)
    }


@router.get("/bans/{ip}", response_model=BanStatus)
async def get_ban_status(ip: Annotated[IPAddress, Path()], bans: BansDep) -> BanStatus:
    """Whether an address is banned now, answered from memory."""
    return await bans.status(ip)


@router.delete("/bans/{ip}", status_code=204, response_class=Response, responses=problems(404))
async def delete_ban(ip: Annotated[IPAddress, Path()], session: SessionDep) -> None:
    """Lift the ban on an address (forgetting its repeat count)."""
    await bans_repo.delete_ban(session, ip)


@router.post("/404s", response_model=OffenceCount, responses=problems(400, 415))
async def record_404(body: NotFoundEvent, session: SessionDep, state: StateDep) -> OffenceCount:
    """Count a 404 for an address today; bans it at `threshold_404` when auto-ban is on."""
    return await bans_repo.record_offence(
        session,
        kind="404",
        ip=body.ip_address,
        detail=body.path,
        security=(await get_settings(session, state.caches)).security,
        trusted=state.settings.TRUSTED_IPS,
    )


@router.post("/invalid-api-keys", response_model=OffenceCount, responses=problems(400, 415))
async def record_invalid_api_key(
    body: InvalidApiKeyEvent, session: SessionDep, state: StateDep
) -> OffenceCount:
    """Count an invalid API key from an address today; bans it at the threshold."""
    return await bans_repo.record_offence(
        session,
        kind="invalid_api_key",
        ip=body.ip_address,
        detail=body.api_key_fingerprint,
        security=(await get_settings(session, state.caches)).security,
        trusted=state.settings.TRUSTED_IPS,
    )


@router.get("/suspicious", response_model=Suspicious)
async def get_suspicious(session: SessionDep, state: StateDep) -> Suspicious:
    """Addresses above a third of either ban threshold today, most events first."""
    security = (await get_settings(session, state.caches)).security
    return Suspicious(
        ips_404=await bans_repo.suspicious(session, "404", security),
        ips_invalid_api_key=await bans_repo.suspicious(session, "invalid_api_key", security),
    )
