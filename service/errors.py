"""RFC 9457 problem details: the one error shape, and the mapping of every failure onto it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

logger = logging.getLogger("service.errors")

PROBLEM_TYPE_BASE = "https://algoways.dev/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"
RETRY_AFTER_SECONDS = 2


class FieldProblem(BaseModel):
    loc: list[str | int] = Field(description="Where the problem is, e.g. ['body', 'email'].")
    msg: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str = Field(examples=[PROBLEM_TYPE_BASE + "not-found"])
    title: str
    status: int
    detail: str
    errors: list[FieldProblem] | None = None


def problem_response(
    status: int,
    title: str,
    detail: str,
    type_: str,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + type_,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    return Response(
        orjson.dumps(body), status_code=status, media_type=PROBLEM_CONTENT_TYPE, headers=headers
    )


class AppError(Exception):
    """An expected failure with its own status and problem type."""

    status: ClassVar[int] = 400
    title: ClassVar[str] = "Bad request"
    type_: ClassVar[str] = "bad-request"
    default_detail: ClassVar[str] = "The request cannot be processed."

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.detail = detail or self.default_detail
        self.errors = errors
        self.headers = headers
        super().__init__(self.detail)

    def response(self) -> Response:
        return problem_response(
            self.status, self.title, self.detail, self.type_, self.errors, self.headers
        )


class BadRequest(AppError):
    pass


class MalformedBody(AppError):
    title = "Malformed body"
    type_ = "malformed-body"
    default_detail = "The request body is not valid JSON."


class Unauthorized(AppError):
    status = 401
    title = "Unauthorized"
    type_ = "unauthorized"
    default_detail = "A valid service token is required: Authorization: Bearer <token>."

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(detail, **kwargs)


class Forbidden(AppError):
    status = 403
    title = "Forbidden"
    type_ = "forbidden"
    default_detail = "This token lacks the scope this endpoint needs."


class NotFound(AppError):
    status = 404
    title = "Not found"
    type_ = "not-found"
    default_detail = "The resource does not exist."


class Conflict(AppError):
    status = 409
    title = "Conflict"
    type_ = "conflict"
    default_detail = "The request conflicts with the current state of the resource."


class PayloadTooLarge(AppError):
    status = 413
    title = "Payload too large"
    type_ = "payload-too-large"
    default_detail = "The request body is too large."


class UnsupportedMediaType(AppError):
    status = 415
    title = "Unsupported media type"
    type_ = "unsupported-media-type"
    default_detail = "The request body must be application/json."


class ValidationFailed(AppError):
    status = 422
    title = "Validation failed"
    type_ = "validation"
    default_detail = "The request is not valid."

    @classmethod
    def field(cls, loc: list[str | int], msg: str, type_: str = "value_error") -> ValidationFailed:
        where = ".".join(str(p) for p in loc)
        return cls(f"{where}: {msg}", errors=[{"loc": loc, "msg": msg, "type": type_}])


class DatabaseUnavailable(AppError):
    status = 503
    title = "Database unavailable"
    type_ = "database-unavailable"
    default_detail = "The database is unreachable or busy; retry shortly."

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"Retry-After": str(RETRY_AFTER_SECONDS)})
        super().__init__(detail, **kwargs)


# Responses every /api/v1 route may give, for the OpenAPI document.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "description": description, "content": {PROBLEM_CONTENT_TYPE: {}}}
    for status, description in (
        (401, "Missing or unknown service token"),
        (403, "The token lacks the scope"),
        (422, "Validation failed"),
        (503, "Database unavailable or pool exhausted"),
    )
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for route-specific problem statuses: `responses=problems(404, 409)`."""
    titles = {
        400: "Malformed body",
        404: "Not found",
        409: "Conflict",
        413: "Body too large",
        415: "Unsupported media type",
        422: "Validation failed",
    }
    return {
        s: {
            "model": Problem,
            "description": titles.get(s, "Problem"),
            "content": {PROBLEM_CONTENT_TYPE: {}},
        }
        for s in statuses
    }


# --- database errors ---------------------------------------------------------------------------

_UNIQUE_MARKERS = ("unique constraint", "duplicate key", "UNIQUE constraint failed")
_FK_MARKERS = ("foreign key constraint", "FOREIGN KEY constraint failed")


def database_error_to_app_error(error: Exception) -> AppError | None:
    """Map a driver/pool failure onto 409 or 503; None for a real bug (500)."""
    if isinstance(error, sa_exc.TimeoutError):
        return DatabaseUnavailable("No database connection became free in time; retry shortly.")
    if isinstance(error, sa_exc.IntegrityError):
        text = str(error.orig)
        if any(marker in text for marker in _UNIQUE_MARKERS):
            return Conflict("A resource with the same unique key already exists.")
        if any(marker in text for marker in _FK_MARKERS):
            return Conflict("The resource refers to, or is referred to by, another resource.")
        return Conflict("The change violates a database constraint.")
    if isinstance(error, sa_exc.DBAPIError):
        text = str(error.orig).lower()
        if error.connection_invalidated or isinstance(
            error, sa_exc.OperationalError | sa_exc.InterfaceError
        ):
            return DatabaseUnavailable()
        if "database is locked" in text or "could not serialize" in text:
            return DatabaseUnavailable()
        return None
    if isinstance(error, OSError | asyncio.TimeoutError | ConnectionError):
        return DatabaseUnavailable()
    return None


def _validation_errors(error: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for item in error.errors():
        out.append(
            {
                "loc": [p if isinstance(p, int) else str(p) for p in item.get("loc", ())],
                "msg": str(item.get("msg", "invalid")).removeprefix("Value error, "),
                "type": str(item.get("type", "value_error")),
            }
        )
    return out


def add_exception_handlers(app: FastAPI) -> None:
    async def app_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, AppError)
        return exc.response()

    async def validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = _validation_errors(exc)
        if any(e["type"] == "json_invalid" for e in errors):
            return MalformedBody().response()
        first = errors[0] if errors else {"loc": [], "msg": "invalid"}
        where = ".".join(str(p) for p in first["loc"])
        detail = f"{where}: {first['msg']}" if where else first["msg"]
        if len(errors) > 1:
            detail += f" (and {len(errors) - 1} more)"
        return problem_response(422, "Validation failed", detail, "validation", errors)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if isinstance(exc.__cause__, AppError):  # e.g. the body limit, hit while FastAPI read it
            return exc.__cause__.response()
        titles = {404: "Not found", 405: "Method not allowed"}
        detail = exc.detail if isinstance(exc.detail, str) else "The request cannot be processed."
        if exc.status_code == 404 and detail == "Not Found":
            detail = "No such route."
        return problem_response(
            exc.status_code,
            titles.get(exc.status_code, "HTTP error"),
            detail,
            {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error"),
            headers=dict(exc.headers or {}),
        )

    async def database_error(_: Request, exc: Exception) -> Response:
        mapped = database_error_to_app_error(exc)
        if mapped is None:
            return await unexpected(_, exc)
        if mapped.status >= 500:
            logger.warning("database unavailable: %s", type(exc).__name__)
        return mapped.response()

    async def unexpected(_: Request, exc: Exception) -> Response:
        mapped = database_error_to_app_error(exc)
        if mapped is not None:
            return mapped.response()
        logger.exception("unhandled error", exc_info=exc)
        return problem_response(
            500, "Internal error", "The service failed to handle the request.", "internal"
        )

    app.add_exception_handler(AppError, app_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(sa_exc.SQLAlchemyError, database_error)
    app.add_exception_handler(OSError, database_error)
    app.add_exception_handler(Exception, unexpected)
