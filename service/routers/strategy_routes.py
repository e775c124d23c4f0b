"""The routes of a strategy family (webhook strategies, ChartInk strategies) and their symbol
mappings, built from one `StrategyKind`."""

# No `from __future__ import annotations`: the body and response types below are the kind's
# classes, which FastAPI must see as objects, not as names to look up in this module.

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from service.db import SessionDep
from service.errors import problems
from service.pagination import MAX_LIMIT, ListLimitParam
from service.repositories import strategies as strategies_repo
from service.repositories.strategies import StrategyKind
from service.routers.base import domain_router
from service.runtime import Runtime
from service.runtime.webhooks import WebhookLookup
from service.schemas.base import Items
from service.schemas.types import path_text, query_text
from service.state import RuntimeDep, StateDep

# Ids are 32-bit on PostgreSQL; a larger one cannot exist, and must not reach the driver.
StrategyId = Annotated[int, Path(ge=1, le=2**31 - 1)]
MappingId = Annotated[int, Path(ge=1, le=2**31 - 1)]
WebhookId = Annotated[str, path_text(36)]


def make_router(kind: StrategyKind, webhooks: Callable[[Runtime], WebhookLookup]) -> APIRouter:
    """`webhooks` picks the family's by-webhook lookup from the runtime."""
    router = domain_router(kind.prefix, kind.name)

    @router.post("", response_model=kind.read, status_code=201, responses=problems(400, 415))
    async def create_strategy(body: kind.create, session: SessionDep) -> Any:  # type: ignore[name-defined]
        """Create a strategy; the service makes its webhook id."""
        return await strategies_repo.create_strategy(session, kind, data=body)

    @router.get("", response_model=Items[kind.detail])  # type: ignore[name-defined]
    async def list_strategies(
        session: SessionDep,
        user_id: Annotated[str | None, query_text(255)] = None,
        is_active: bool | None = None,
        limit: ListLimitParam = MAX_LIMIT,
    ) -> Any:
        """List strategies with their symbols, by user and active flag, in creation order (at
        most `limit`)."""
        items = await strategies_repo.list_strategies(
            session, kind, user_id=user_id, is_active=is_active, limit=limit
        )
        return {"items": items}

    @router.get("/by-webhook/{webhook_id}", response_model=kind.detail, responses=problems(404))
    async def get_strategy_by_webhook(webhook_id: WebhookId, runtime: RuntimeDep) -> Response:
        """Resolve a webhook alert: the strategy with its symbols, from memory."""
        body = await webhooks(runtime).get(webhook_id)
        # Cached already rendered: nothing to validate or serialise on every alert's path.
        return Response(body, media_type="application/json")

    @router.get("/{strategy_id}", response_model=kind.detail, responses=problems(404))
    async def get_strategy(strategy_id: StrategyId, state: StateDep) -> Response:
        """Read a strategy with its symbols, from the database."""
        body = await strategies_repo.get_strategy_json(state.reads, kind, strategy_id)
        return Response(body, media_type="application/json")

    @router.patch("/{strategy_id}", response_model=kind.read, responses=problems(400, 404, 415))
    async def update_strategy(
        strategy_id: StrategyId,
        body: kind.update,  # type: ignore[name-defined]
        session: SessionDep,
    ) -> Any:
        """Change a strategy; the times are checked against the result."""
        return await strategies_repo.update_strategy(
            session, kind, strategy_id=strategy_id, data=body
        )

    @router.delete("/{strategy_id}", status_code=204, responses=problems(404))
    async def delete_strategy(strategy_id: StrategyId, session: SessionDep) -> None:
        """Delete a strategy with its symbol mappings."""
        await strategies_repo.delete_strategy(session, kind, strategy_id=strategy_id)

    @router.get(
        "/{strategy_id}/symbols",
        response_model=Items[kind.mapping_read],  # type: ignore[name-defined]
        responses=problems(404),
    )
    async def list_symbols(strategy_id: StrategyId, session: SessionDep) -> Any:
        """List the symbol mappings of a strategy."""
        items = await strategies_repo.list_mappings(session, kind, strategy_id=strategy_id)
        return {"items": items}

    @router.post(
        "/{strategy_id}/symbols",
        response_model=Items[kind.mapping_read],  # type: ignore[name-defined]
        status_code=201,
        responses=problems(400, 404, 409, 413, 415),
    )
    async def add_symbols(
        strategy_id: StrategyId,
        body: kind.mapping_batch,  # type: ignore[name-defined]
        session: SessionDep,
    ) -> Any:
        """Add one symbol mapping or an array of them, all or nothing."""
        items = await strategies_repo.add_mappings(
            session, kind, strategy_id=strategy_id, items=body.root
        )
        return {"items": items}

    @router.delete("/{strategy_id}/symbols/{mapping_id}", status_code=204, responses=problems(404))
    async def delete_symbol(
        strategy_id: StrategyId, mapping_id: MappingId, session: SessionDep
    ) -> None:
        """Delete one symbol mapping of a strategy."""
        await strategies_repo.delete_mapping(
            session, kind, strategy_id=strategy_id, mapping_id=mapping_id
        )

    return router
