"""The service with 100 extra routes after its real ones, to measure P10 (route-count sensitivity).

Two shapes, each served as a separate service process by the bench:

- `nested_app`: ten domain-like routers of ten routes each, included on the app after every real
  route with FastAPI's `include_router` (which keeps them nested): the way a new domain would
  arrive if someone mounted it the framework's default way.
- `flat_app`: the same 100 paths added directly on the app, after every real route.

Every extra route answers (the bench checks the last one), so they are really on the dispatch
path.
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
    from service.security import current_principal

    app = app_from_env()
    for group in range(GROUPS):
        app.include_router(
            _group_router(group), prefix="/api/v1", dependencies=[Depends(current_principal)]
        )
    return app


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
