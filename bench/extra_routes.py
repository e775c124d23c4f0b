"""The service with 100 extra routes after its real ones, to measure P10 (route-count sensitivity).

Two shapes, each served as a separate service process by the bench:

- `nested_app`: ten domain-like routers of ten routes each, included at the end of the router
  the service mounts under /api/v1, before the app is built: the way a new domain would arrive.
- `flat_app`: the same 100 paths added directly on the app, after every real route.

Every extra route answers (the bench checks the last one), so they are really on the dispatch
path. If the service stops mounting its domains through `service.routers.api_router`, the nested
shape cannot be built and the bench says so instead of measuring something else.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI

from service.main import app_from_env

GROUPS = 10
ROUTES_PER_GROUP = 10
LAST_EXTRA_PATH = f"/api/v1/extra{GROUPS - 1}/item{ROUTES_PER_GROUP - 1}/7"


def _endpoint(group: int, item: int):  # type: ignore[no-untyped-def]
    async def extra(item_id: int) -> dict[str, int]:
        return {"group": group, "item": item, "item_id": item_id}

    extra.__name__ = f"extra_{group}_{item}"
    return extra


def _group_router(group: int) -> APIRouter:
    router = APIRouter(prefix=f"/extra{group}", tags=["extra"])
    for item in range(ROUTES_PER_GROUP):
        router.add_api_route(f"/item{item}/{{item_id}}", _endpoint(group, item), methods=["GET"])
    return router


def nested_app() -> FastAPI:
    from service.routers import api_router

    for group in range(GROUPS):
        api_router.include_router(_group_router(group))
    return app_from_env()


def flat_app() -> FastAPI:
    from service.security import current_principal

    app = app_from_env()
    for group in range(GROUPS):
        for item in range(ROUTES_PER_GROUP):
            app.add_api_route(
                f"/api/v1/extra{group}/item{item}/{{item_id}}",
                _endpoint(group, item),
                methods=["GET"],
                dependencies=[Depends(current_principal)],
            )
    return app
