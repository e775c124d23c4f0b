"""How a domain's router is made: every route carries the whole /api/v1 path, the token check and
the problems every API route may answer, so the app mounts the routes flat (service/main.py).

FastAPI keeps included routers nested and matches through every level on every request; flat,
a request costs one scan of the app's own route list, whatever else is mounted after it.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.errors import PROBLEM_RESPONSES
from service.security import current_principal

API_PREFIX = "/api/v1"


def domain_router(prefix: str, tag: str) -> APIRouter:
    return APIRouter(
        prefix=API_PREFIX + prefix,
        tags=[tag],
        dependencies=[Depends(current_principal)],
        responses=PROBLEM_RESPONSES,
    )
