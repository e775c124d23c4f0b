"""The routes of an API-log table: order-logs and analyzer-logs have the same shape."""

# No `from __future__ import annotations`: the routes are built in a function, and FastAPI must
# see their annotations as objects (a string naming a local `Depends` cannot be resolved).
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends

from service.db import SessionDep
from service.errors import problems
from service.group_commit import GroupCommitWriter
from service.models.logs import ApiLogColumns
from service.pagination import DEFAULT_LIMIT, CursorPage, CursorParam, LimitParam
from service.repositories import logs as logs_repo
from service.routers.base import domain_router
from service.runtime import Writers
from service.schemas.base import Deleted
from service.schemas.logs import (
    ApiLogCreate,
    ApiLogRead,
    ApiLogStats,
    Batch,
    BeforeParam,
    Ids,
    SinceParam,
    UntilParam,
)
from service.schemas.types import query_text
from service.state import StateDep, WritersDep


def api_log_router(
    model: type[ApiLogColumns], *, prefix: str, writer: Callable[[Writers], GroupCommitWriter]
) -> APIRouter:
    """The routes of one API-log table; `writer` picks its group-commit writer."""
    table = model.__table__  # type: ignore[attr-defined]
    name = table.name
    tag = prefix.strip("/")
    router = domain_router(prefix, tag)
    batch = Batch(ApiLogCreate)

    @router.post(
        "",
        status_code=201,
        response_model=Ids,
        responses=problems(400, 413, 415),
        openapi_extra=batch.openapi,
        name=f"create_{name}",
    )
    async def create_logs(
        writers: WritersDep, items: Annotated[list[ApiLogCreate], Depends(batch)]
    ) -> Ids:
        """Write one log or a batch of up to 1000; answered once they are committed."""
        ids = await writer(writers).submit(logs_repo.rows_from(items, "created_at"))
        return Ids(ids=ids or [])

    @router.get("", response_model=CursorPage[ApiLogRead], name=f"list_{name}")
    async def list_logs(
        session: SessionDep,
        api_type: Annotated[str | None, query_text(50)] = None,
        since: SinceParam = None,
        until: UntilParam = None,
        limit: LimitParam = DEFAULT_LIMIT,
        cursor: CursorParam = None,
    ) -> dict[str, object]:
        """List logs newest first, one keyset page at a time."""
        conditions = logs_repo.time_window(model.created_at, since, until)
        if api_type is not None:
            conditions.append(model.api_type == api_type)
        items, next_cursor = await logs_repo.list_page(
            session, model, model.created_at, conditions, cursor=cursor, limit=limit
        )
        return {"items": items, "next_cursor": next_cursor}

    @router.get("/stats", response_model=ApiLogStats, name=f"{name}_stats")
    async def get_log_stats(
        session: SessionDep, since: SinceParam = None, until: UntilParam = None
    ) -> ApiLogStats:
        """Count logs by api type, and by symbol and exchange read from `request_data`."""
        return await logs_repo.api_log_stats(session, model, since, until)

    @router.delete("", response_model=Deleted, name=f"delete_{name}")
    async def delete_logs(state: StateDep, before: BeforeParam) -> Deleted:
        """Delete logs older than `before`, in short transactions; returns how many."""
        deleted = await logs_repo.delete_before(
            state.sessionmaker, table, table.c.created_at, before
        )
        return Deleted(deleted=deleted)

    return router
