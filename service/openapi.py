"""The OpenAPI document: what FastAPI generates, plus the service-wide parts it cannot know."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi


def build_openapi(app: FastAPI) -> dict[str, object]:
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        schema.setdefault("components", {})["securitySchemes"] = {
            "serviceToken": {"type": "http", "scheme": "bearer"}
        }
        for path, operations in schema.get("paths", {}).items():
            if path.startswith("/api/v1"):
                for operation in operations.values():
                    operation["security"] = [{"serviceToken": []}]
        app.openapi_schema = schema
    return app.openapi_schema
