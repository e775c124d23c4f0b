"""RFC 9457 problem details: the one error shape, and the mapping of every failure onto it."""

from __future__ import annotations

import enum
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import asyncpg
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from sqlalchemy import exc as sa_exc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import Scope

from service.problem_types import PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_BASE
from service.retry import ask_for_replay
from service.schemas.types import pattern_message

logger = logging.getLogger("service.errors")

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


class ValueRefused(ValidationFailed):
    title = "Value refused by the database"
    type_ = "value-refused"
    default_detail = "The database refused a value of this request."


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
    status: {"description": description, "content": {PROBLEM_CONTENT_TYPE: {}}}
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
        s: {"description": titles.get(s, "Problem"), "content": {PROBLEM_CONTENT_TYPE: {}}}
        for s in statuses
    }


# --- database errors ---------------------------------------------------------------------------


class DatabaseFailure(enum.Enum):
    """What a database error means for the request that met it, whichever backend raised it."""

    DATA = "data"  # a value the database refuses to store: 422, the request's fault
    INTEGRITY = "integrity"  # a constraint (unique, foreign key, check, not null): 409
    UNAVAILABLE = "unavailable"  # connection lost, server stopping, pool or lock timeout: 503
    RETRYABLE = "retryable"  # serialization failure or deadlock: retry once, then 503
    BUG = "bug"  # anything else the database said: 500, logged with its traceback


# PostgreSQL SQLSTATEs outside the classes below that still mean "retry later".
_PG_UNAVAILABLE_CODES = frozenset({"25P03", "40003", "55P03"})  # idle timeout, unknown, lock wait
_PG_UNAVAILABLE_CLASSES = frozenset({"08", "53", "57"})  # connection, resources, operator
_PG_RETRYABLE_CODES = frozenset({"40001", "40P01"})  # serialization failure, deadlock

_SQLITE_DATA_CODES = frozenset(
    # RAISE(ABORT) in a trigger: a database rule refusing the row's values.
    {"SQLITE_TOOBIG", "SQLITE_MISMATCH", "SQLITE_RANGE", "SQLITE_CONSTRAINT_TRIGGER"}
)
_SQLITE_UNAVAILABLE_PREFIXES = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_IOERR",
    "SQLITE_CANTOPEN",
    "SQLITE_FULL",
    "SQLITE_NOMEM",
    "SQLITE_READONLY",
    "SQLITE_PROTOCOL",
    "SQLITE_INTERRUPT",
)

# What each data exception means, for the 422 detail: the driver's own message can quote the
# value (a secret, a whole JSON body), so it never reaches the client.
_DATA_MEANINGS = {
    "22000": "a value cannot be encoded for the database (e.g. an integer past 64 bits)",
    "22001": "a text value is longer than its column allows",
    "22003": "a number is out of the range its column stores",
    "22007": "a timestamp has an invalid form",
    "22008": "a timestamp is outside the supported range",
    "22021": "a text value contains a character the database cannot store (e.g. NUL)",
    "22P02": "a value has the wrong form for its column (e.g. a non-finite number in JSON)",
    "22P05": "a JSON value contains a character the database cannot store (e.g. \\u0000)",
    "SQLITE_TOOBIG": "a value is larger than the database stores",
    "SQLITE_MISMATCH": "a value has the wrong type for its column",
    "SQLITE_RANGE": "a value does not fit its column",
    "SQLITE_CONSTRAINT_TRIGGER": "a database rule refused a value",
    "OverflowError": "a number is too large for the database",
}
_UNIQUE_CODES = frozenset({"23505", "SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"})
_FOREIGN_KEY_CODES = frozenset({"23503", "SQLITE_CONSTRAINT_FOREIGNKEY"})


@dataclass(frozen=True, slots=True)
class DatabaseErrorInfo:
    failure: DatabaseFailure
    code: str | None  # SQLSTATE, SQLite error name, or the Python exception's name
    column: str | None = None


def _causes(error: BaseException) -> Iterator[BaseException]:
    """The error, the driver error SQLAlchemy wrapped, and what each was raised from."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen or len(seen) >= 8:
            continue
        seen.add(id(current))
        yield current
        orig = (
            getattr(current, "orig", None) if isinstance(current, sa_exc.StatementError) else None
        )
        pending += [orig if isinstance(orig, BaseException) else None, current.__cause__]


def _pg_failure(sqlstate: str) -> DatabaseFailure:
    if sqlstate in _PG_RETRYABLE_CODES:
        return DatabaseFailure.RETRYABLE
    if sqlstate.startswith("22"):
        return DatabaseFailure.DATA
    if sqlstate.startswith("23") or sqlstate == "40002":
        return DatabaseFailure.INTEGRITY
    if sqlstate[:2] in _PG_UNAVAILABLE_CLASSES or sqlstate in _PG_UNAVAILABLE_CODES:
        return DatabaseFailure.UNAVAILABLE
    return DatabaseFailure.BUG


def _sqlite_failure(name: str) -> DatabaseFailure:
    if name in _SQLITE_DATA_CODES:
        return DatabaseFailure.DATA
    if name.startswith("SQLITE_CONSTRAINT"):
        return DatabaseFailure.INTEGRITY
    if name == "SQLITE_BUSY_SNAPSHOT":  # a read snapshot that went stale before its write
        return DatabaseFailure.RETRYABLE
    if name.startswith(_SQLITE_UNAVAILABLE_PREFIXES):
        return DatabaseFailure.UNAVAILABLE
    return DatabaseFailure.BUG


def classify_database_error(error: BaseException) -> DatabaseErrorInfo | None:
    """What a failure means by its error code (SQLSTATE, SQLite's extended code), never by its
    message text; None when it is not a database failure at all."""
    if isinstance(error, sa_exc.TimeoutError):  # no pooled connection became free in time
        return DatabaseErrorInfo(DatabaseFailure.UNAVAILABLE, "pool-timeout")
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return DatabaseErrorInfo(DatabaseFailure.UNAVAILABLE, "connection-invalidated")
    causes = list(_causes(error))
    for cause in causes:
        sqlstate = getattr(cause, "sqlstate", None)
        if isinstance(sqlstate, str) and len(sqlstate) == 5:
            column = getattr(cause, "column_name", None)
            return DatabaseErrorInfo(
                _pg_failure(sqlstate), sqlstate, column if isinstance(column, str) else None
            )
        if isinstance(cause, sqlite3.Error):
            name = getattr(cause, "sqlite_errorname", None)
            if isinstance(name, str):
                return DatabaseErrorInfo(_sqlite_failure(name), name)
            # Without a code, an OperationalError is the adapter's own "connection closed".
            failure = (
                DatabaseFailure.UNAVAILABLE
                if isinstance(cause, sqlite3.OperationalError)
                else DatabaseFailure.BUG
            )
            return DatabaseErrorInfo(failure, type(cause).__name__)
    for cause in causes:
        # InternalClientError: asyncpg's protocol left mid-operation by a cut connection.
        if isinstance(
            cause, OSError | TimeoutError | asyncpg.InterfaceError | asyncpg.InternalClientError
        ):
            return DatabaseErrorInfo(DatabaseFailure.UNAVAILABLE, type(cause).__name__)
        # SQLite's driver refuses an integer past 64 bits before SQLAlchemy sees an error.
        if isinstance(cause, OverflowError):
            return DatabaseErrorInfo(DatabaseFailure.DATA, "OverflowError")
    if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
        return DatabaseErrorInfo(DatabaseFailure.UNAVAILABLE, type(error).__name__)
    if isinstance(error, sa_exc.SQLAlchemyError):
        return DatabaseErrorInfo(DatabaseFailure.BUG, type(error).__name__)
    return None


# The exception types a database failure can reach a handler as.
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    sa_exc.SQLAlchemyError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    sqlite3.Error,
    OSError,
    OverflowError,
)


def _data_problem(info: DatabaseErrorInfo) -> ValueRefused:
    meaning = _DATA_MEANINGS.get(info.code or "", "a value was refused by the database")
    where = f" (column {info.column})" if info.column else ""
    code = f" [{info.code}]" if info.code and info.code != "OverflowError" else ""
    msg = f"{meaning}{where}"
    # Where in the request the value came from is not known here, only the column, if that.
    loc: list[str | int] = ["database", info.column] if info.column else ["database"]
    return ValueRefused(
        f"The database refused a value of this request: {msg}{code}.",
        errors=[{"loc": loc, "msg": msg, "type": "value_refused"}],
    )


def _integrity_problem(info: DatabaseErrorInfo) -> Conflict:
    if info.code in _UNIQUE_CODES:
        return Conflict("A resource with the same unique key already exists.")
    if info.code in _FOREIGN_KEY_CODES:
        return Conflict("The resource refers to, or is referred to by, another resource.")
    return Conflict("The change violates a database constraint.")


def app_error_for(info: DatabaseErrorInfo) -> AppError | None:
    """The problem a classified database failure answers with; None for a bug (500)."""
    match info.failure:
        case DatabaseFailure.DATA:
            return _data_problem(info)
        case DatabaseFailure.INTEGRITY:
            return _integrity_problem(info)
        case DatabaseFailure.UNAVAILABLE if info.code == "pool-timeout":
            return DatabaseUnavailable("No database connection became free in time; retry shortly.")
        case DatabaseFailure.UNAVAILABLE:
            return DatabaseUnavailable()
        case DatabaseFailure.RETRYABLE:
            return DatabaseUnavailable(
                "The change collided with a concurrent one, also when retried; retry shortly."
            )
    return None


def database_error_to_app_error(error: Exception) -> AppError | None:
    """Map a driver/pool failure onto 422, 409 or 503; None for a real bug (500)."""
    info = classify_database_error(error)
    return app_error_for(info) if info is not None else None


def _validation_errors(error: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for item in error.errors():
        out.append(
            {
                "loc": [p if isinstance(p, int) else str(p) for p in item.get("loc", ())],
                # The service's own patterns (NUL-free text, timestamps) are no message for a
                # client; pydantic's text quotes them.
                "msg": pattern_message(item)
                or str(item.get("msg", "invalid")).removeprefix("Value error, "),
                "type": str(item.get("type", "value_error")),
            }
        )
    return out


# Methods a 405's Allow may name; each is listed only if some route of the path serves it.
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(app: Starlette, scope: Scope) -> list[str]:
    """Every method some route serves at the request's path.

    Starlette's 405 names the methods of the first route whose path matched, but one path is often
    served by several routes (GET and POST of /users), and FastAPI keeps included routers nested.
    So each method is asked of the whole route tree, through the routes' own matching.
    """
    allowed = []
    for method in _METHODS:
        probe = {**scope, "method": method, "fastapi": {}}
        if any(route.matches(probe)[0] is Match.FULL for route in app.router.routes):
            allowed.append(method)
    return allowed


def internal_error(exc: Exception) -> Response:
    logger.error("unhandled error", exc_info=exc)
    return problem_response(
        500, "Internal error", "The service failed to handle the request.", "internal"
    )


def failure_response(exc: Exception, scope: Scope | None = None) -> Response:
    """The answer to an exception no route turned into a problem: a database failure's 422, 409
    or 503, else a logged 500. With the request's `scope`, a serialization failure asks for the
    request to be replayed once (service/retry.py)."""
    if isinstance(exc, AppError):
        return exc.response()
    info = classify_database_error(exc)
    mapped = app_error_for(info) if info is not None else None
    if info is None or mapped is None:
        return internal_error(exc)
    retryable = info.failure is DatabaseFailure.RETRYABLE
    if retryable and scope is not None and ask_for_replay(scope):
        logger.info("replaying the request once: %s [%s]", type(exc).__name__, info.code)
    elif mapped.status >= 500:
        logger.warning("database unavailable: %s [%s]", type(exc).__name__, info.code)
    return mapped.response()


def add_exception_handlers(app: FastAPI) -> None:
    async def app_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, AppError)
        return exc.response()

    async def validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = _validation_errors(exc)
        if any(e["type"] == "json_invalid" for e in errors):
            return MalformedBody().response()
        first: dict[str, Any] = errors[0] if errors else {"loc": [], "msg": "invalid"}
        where = ".".join(str(p) for p in first["loc"])
        detail = f"{where}: {first['msg']}" if where else str(first["msg"])
        if len(errors) > 1:
            detail += f" (and {len(errors) - 1} more)"
        return problem_response(422, "Validation failed", detail, "validation", errors)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if isinstance(exc.__cause__, AppError):  # e.g. the body limit, hit while FastAPI read it
            return exc.__cause__.response()
        titles = {404: "Not found", 405: "Method not allowed"}
        detail = exc.detail if isinstance(exc.detail, str) else "The request cannot be processed."
        if exc.status_code == 404 and detail == "Not Found":
            detail = "No such route."
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request.app, request.scope))
        return problem_response(
            exc.status_code,
            titles.get(exc.status_code, "HTTP error"),
            detail,
            {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error"),
            headers=headers,
        )

    async def failure(request: Request, exc: Exception) -> Response:
        return failure_response(exc, request.scope)

    app.add_exception_handler(AppError, app_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    # Database and driver failures, answered by the exception middleware (a handler for
    # Exception runs in the outermost middleware, which re-raises it to the server's log).
    for database_error in DATABASE_ERRORS:
        app.add_exception_handler(database_error, failure)
    app.add_exception_handler(Exception, failure)
