"""audit: who changed what (users, API keys, broker tokens, settings, bans, the contract)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query

from service import audit
from service.db import SessionDep
from service.models.audit import AuditEntry
from service.pagination import DEFAULT_LIMIT, CursorPage, CursorParam, LimitParam
from service.repositories import logs as logs_repo
from service.routers.base import domain_router
from service.schemas.audit import ACTOR_PATTERN, AuditEntryRead, AuditResource
from service.schemas.base import Deleted
from service.schemas.logs import BeforeParam, SinceParam, UntilParam
from service.schemas.types import query_text
from service.state import StateDep

router = domain_router("/audit", "audit")


@router.get("", response_model=CursorPage[AuditEntryRead])
async def list_audit_entries(
    session: SessionDep,
    resource: Annotated[AuditResource | None, Query(description="Only this kind.")] = None,
    resource_id: Annotated[
        str | None, query_text(255, description="Only this resource (a username, an address…).")
    ] = None,
    actor: Annotated[
        str | None,
        Query(max_length=64, pattern=ACTOR_PATTERN, description="Only this service token's."),
    ] = None,
    since: SinceParam = None,
    until: UntilParam = None,
    limit: LimitParam = DEFAULT_LIMIT,
    cursor: CursorParam = None,
) -> dict[str, Any]:
    """List audit entries newest first, one keyset page at a time."""
    conditions = logs_repo.time_window(AuditEntry.at, since, until)
    for column, value in (
        (AuditEntry.resource, resource),
        (AuditEntry.resource_id, resource_id),
        (AuditEntry.actor, actor),
    ):
        if value is not None:
            conditions.append(column == value)
    items, next_cursor = await logs_repo.list_page(
        session, AuditEntry, AuditEntry.at, conditions, cursor=cursor, limit=limit
    )
    return {"items": items, "next_cursor": next_cursor}


@router.delete("", response_model=Deleted)
async def delete_audit_entries(state: StateDep, before: BeforeParam) -> Deleted:
    """Delete entries older than `before`, in short transactions (the purge is itself recorded)."""
    return Deleted(deleted=await audit.purge(state.sessionmaker, before))
