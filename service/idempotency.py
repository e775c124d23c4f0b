"""`Idempotency-Key`: a repeated POST gets the first answer instead of writing a second time.

Which POSTs: every `/api/v1` POST route, decided when a request arrives by the route it matches,
so a route added later is covered without being listed anywhere. Two kinds are left out and
ignore the header: POSTs that write nothing (lookups, verifications), marked `**READ_ONLY` on
their decorator (OpenAPI extension `x-read-only: true`), and routes that need the `secrets`
scope (`x-required-scope: secrets`), whose answers carry plaintext secrets that must not be kept
in another table. The OpenAPI document lists the header on exactly the POSTs that take it.

How (a pure ASGI middleware, inside the token check and the serialization-failure replay):

- No header: nothing is done but a scan of the header list; no database round trip.
- The key is scoped to the caller (the service-token name) and must be 1 to 255 printable ASCII
  characters without leading or trailing spaces (422 otherwise, like any invalid parameter).
- The request's fingerprint is SHA-256 over method, path, query and body bytes. The claim is one
  `INSERT … ON CONFLICT DO NOTHING` of an in-flight row; the unique (caller, key) constraint
  makes exactly one of concurrent duplicates the one that runs, on every instance.
- The winner runs the route and its answer is buffered. Routes answer only after their writes
  committed (the request session, the group commit), so the answer is stored (one UPDATE) before
  it is sent: a client that lost the answer finds it stored when it retries. 2xx and 4xx answers
  are stored, except 401/403 (the request was not handled); anything else (5xx, a 503 outage, an
  exception) releases the key, so the retry runs again.
- A repeat: same fingerprint and stored answer → that answer (status, headers such as Location,
  body) with `Idempotent-Replayed: true`; another fingerprint → 422 `idempotency-key-reused`,
  nothing written; still in flight → it waits up to WAIT_S for the answer (woken at once when
  the first runs on the same instance, polling the database otherwise), then 409
  `idempotency-key-in-flight` with `Retry-After`.
- A claim whose instance died (or whose answer could not be stored) is in flight for at most
  IN_FLIGHT_LEASE_S; then a repeat takes it over and runs.
- Answers are kept IDEMPOTENCY_TTL_SECONDS (24 h) from when they were stored: an expired key is
  free again at once, and expired rows are deleted in chunks, as the log retention does, at most
  every PURGE_INTERVAL_S per instance after a keyed answer has been sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from fastapi.routing import APIRoute
from sqlalchemy import Table, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.db import begin_autocommit_read, begin_write
from service.errors import (
    DATABASE_ERRORS,
    AppError,
    Conflict,
    ValidationFailed,
    database_error_to_app_error,
)
from service.models.base import utcnow
from service.models.idempotency import IdempotencyKey
from service.repositories.logs import delete_before
from service.state import AppState

logger = logging.getLogger("service.idempotency")

API_PREFIX = "/api/v1"
HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
READ_ONLY_EXTENSION = "x-read-only"
# Spread into the decorator of a POST that writes nothing: `@router.post(..., **READ_ONLY)`.
READ_ONLY: dict[str, Any] = {"openapi_extra": {READ_ONLY_EXTENSION: True}}

MAX_KEY_LENGTH = 255
# Printable ASCII; no space at either end, since HTTP strips it on the way.
KEY_PATTERN = r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$"
KEY_RULE = "must be 1 to 255 printable ASCII characters, without spaces at either end"
# How long a repeat waits for the answer of the request still running with its key.
WAIT_S = 5.0
RETRY_AFTER_S = 1
# How long a claim holds without an answer before a repeat may take it over and run.
IN_FLIGHT_LEASE_S = 60.0
PURGE_INTERVAL_S = 300.0

_KEY = re.compile(KEY_PATTERN)
_HEADER_NAME = HEADER.lower().encode()
_REPLAYED = (REPLAYED_HEADER.lower().encode(), b"true")
# Set again by whatever serves the replay; the request id is this request's own.
_NOT_STORED = frozenset({b"date", b"server", b"x-request-id"})
# Answered before the route ran: not an answer to this request's content.
_UNHANDLED = frozenset({401, 403})
_table = cast(Table, IdempotencyKey.__table__)
_c = _table.c


class IdempotencyKeyReused(ValidationFailed):
    title = "Idempotency key reused"
    type_ = "idempotency-key-reused"
    default_detail = "The Idempotency-Key was used for another request."


class IdempotencyKeyInFlight(Conflict):
    title = "Idempotency key in flight"
    type_ = "idempotency-key-in-flight"
    default_detail = "The first request with this Idempotency-Key is still running; retry shortly."

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"Retry-After": str(RETRY_AFTER_S)})
        super().__init__(detail, **kwargs)


def accepts_key(operation: dict[str, Any]) -> bool:
    """Whether a POST with these route extensions (or this OpenAPI operation) takes the header."""
    return not operation.get(READ_ONLY_EXTENSION) and operation.get("x-required-scope") != "secrets"


# --- the stored rows ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Claimed:
    id: int
    locked_at: datetime


@dataclass(frozen=True, slots=True)
class _Stored:
    status: int
    headers: list[list[str]]
    body: bytes


class _Reused:
    pass


class _InFlight:
    pass


_Outcome = _Claimed | _Stored | _Reused | _InFlight


@asynccontextmanager
async def _writing(state: AppState) -> AsyncIterator[AsyncSession]:
    """A short write: one transaction on SQLite (BEGIN IMMEDIATE, so the statements of a claim
    are atomic); autocommit statements on PostgreSQL, each atomic by its own WHERE clause, with
    no BEGIN and COMMIT round trips."""
    async with state.write_sessionmaker() as session:
        if state.backend == "postgresql":
            await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        else:
            await begin_write(session)
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


def _insert(state: AppState) -> Any:
    return (postgresql.insert if state.backend == "postgresql" else sqlite.insert)(_table)


_ROW = (_c.id, _c.fingerprint, _c.locked_at, _c.expires_at, _c.status, _c.headers, _c.body)


async def _read(state: AppState, caller: str, key: str) -> Any:
    async with state.sessionmaker() as session:
        await begin_autocommit_read(session)
        query = select(*_ROW).where(_c.caller == caller, _c.key == key)
        return (await session.execute(query)).one_or_none()


def _judge(row: Any, fingerprint: str, now: datetime) -> _Outcome | None:
    """What an existing row means for a request; None when the key is free to claim again."""
    if row is None or row.expires_at <= now:
        return None
    if row.fingerprint != fingerprint:
        return _Reused()
    if row.status is not None:
        return _Stored(row.status, row.headers or [], row.body or b"")
    if row.locked_at + timedelta(seconds=IN_FLIGHT_LEASE_S) <= now:
        return None
    return _InFlight()


async def _claim(
    state: AppState, caller: str, key: str, fingerprint: str, ttl: timedelta
) -> _Outcome:
    """Insert the in-flight row, or say what the row already there means."""
    for _ in range(3):  # the row may be released, expire or be taken over between statements
        now = utcnow()
        async with _writing(state) as session:
            claimed = await session.scalar(
                _insert(state)
                .values(
                    caller=caller,
                    key=key,
                    fingerprint=fingerprint,
                    locked_at=now,
                    expires_at=now + ttl,
                )
                .on_conflict_do_nothing(index_elements=[_c.caller, _c.key])
                .returning(_c.id)
            )
            if claimed is not None:
                return _Claimed(claimed, now)
            query = select(*_ROW).where(_c.caller == caller, _c.key == key)
            row = (await session.execute(query)).one_or_none()
            outcome = _judge(row, fingerprint, now)
            if outcome is not None:
                return outcome
            if row is None:
                continue
            if row.expires_at <= now:
                await session.execute(delete(_table).where(_c.id == row.id, _c.expires_at <= now))
                continue
            # An in-flight claim past its lease, with this fingerprint: take it over.
            taken = await session.execute(
                update(_table)
                .where(_c.id == row.id, _c.status.is_(None), _c.locked_at == row.locked_at)
                .values(locked_at=now, expires_at=now + ttl)
            )
            if taken.rowcount == 1:  # type: ignore[attr-defined]
                return _Claimed(row.id, now)
    return _InFlight()


async def _complete(state: AppState, claim: _Claimed, answer: _Stored, ttl: timedelta) -> None:
    async with _writing(state) as session:
        await session.execute(
            update(_table)
            .where(_c.id == claim.id, _c.locked_at == claim.locked_at, _c.status.is_(None))
            .values(
                status=answer.status,
                headers=answer.headers,
                body=answer.body,
                expires_at=utcnow() + ttl,
            )
        )


async def _release(state: AppState, claim: _Claimed) -> None:
    async with _writing(state) as session:
        await session.execute(
            delete(_table).where(
                _c.id == claim.id, _c.locked_at == claim.locked_at, _c.status.is_(None)
            )
        )


async def purge_expired(state: AppState) -> int:
    """Delete expired keys in chunks (the log retention's way); how many went."""
    return await delete_before(state.sessionmaker, _table, _c.expires_at, utcnow())


# --- the middleware ----------------------------------------------------------------------------


def _state(scope: Scope) -> AppState | None:
    app = scope.get("app")
    state = getattr(getattr(app, "state", None), "store", None)
    return state if isinstance(state, AppState) else None


def _fingerprint(scope: Scope, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (scope["method"].encode(), scope["path"].encode(), scope["query_string"], body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def _key(values: list[bytes]) -> str:
    if len(values) > 1:
        raise ValidationFailed.field(["header", HEADER], "must be sent once")
    try:
        key = values[0].decode("ascii")
    except UnicodeDecodeError:
        key = ""
    if len(key) > MAX_KEY_LENGTH or not _KEY.match(key):
        raise ValidationFailed.field(["header", HEADER], KEY_RULE)
    return key


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body (the route's own limits apply as it is read); None if the client left."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_answer(send: Send, answer: _Stored, *, replayed: bool) -> None:
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers]
    if replayed:
        headers.append(_REPLAYED)
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body, "more_body": False})


def _storable(status: int) -> bool:
    return (200 <= status < 300 or 400 <= status < 500) and status not in _UNHANDLED


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp, *, ttl_seconds: float) -> None:
        self.app = app
        self.ttl = timedelta(seconds=ttl_seconds)
        self._accepting: dict[int, bool] = {}  # by id(route): routes are not hashable
        # Set when the request holding a key on this instance has its answer, so repeats waiting
        # here need not poll the database for it.
        self._done: dict[tuple[str, str], asyncio.Event] = {}
        self._next_purge = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        values = [value for name, value in scope["headers"] if name == _HEADER_NAME]
        principal = scope.get("principal")
        state = _state(scope)
        route = None
        # Not ready: the route answers 503 itself. No principal: the token check answered.
        if values and principal is not None and state is not None and state.ready:
            route = self._route(scope)
        if route is None or principal is None or state is None:
            await self.app(scope, receive, send)
            return
        # What the router would record: metrics label a replayed answer by its route too.
        scope["route"] = route
        try:
            key = _key(values)
            body = await _read_body(receive)
        except AppError as problem:  # the key's form, or the body limit hit while reading it
            await problem.response()(scope, receive, send)
            return
        if body is None:
            return
        await self._keyed(state, principal.name, key, scope, _replaying(body, receive), send, body)

    def _route(self, scope: Scope) -> APIRoute | None:
        """The route the request matches, if it takes the header."""
        for route in scope["app"].router.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                accepting = self._accepting.get(id(route))
                if accepting is None:
                    accepting = self._accepting[id(route)] = (
                        isinstance(route, APIRoute)
                        and route.path_format.startswith(API_PREFIX)
                        and accepts_key(route.openapi_extra or {})
                    )
                return route if accepting else None
        return None

    async def _keyed(
        self,
        state: AppState,
        caller: str,
        key: str,
        scope: Scope,
        receive: Receive,
        send: Send,
        body: bytes,
    ) -> None:
        fingerprint = _fingerprint(scope, body)
        try:
            outcome = await self._outcome(state, caller, key, fingerprint)
        except DATABASE_ERRORS as error:
            problem = database_error_to_app_error(error)
            if problem is None:
                raise
            logger.warning("idempotency key unavailable: %s", type(error).__name__)
            await problem.response()(scope, receive, send)
            return
        match outcome:
            case _Claimed():
                await self._run(state, (caller, key), outcome, scope, receive, send)
            case _Stored():
                await _send_answer(send, outcome, replayed=True)
            case _Reused():
                await IdempotencyKeyReused(
                    f"The {HEADER} was used for a request with another method, path or body; "
                    "use a new key for a new request.",
                    errors=[
                        {
                            "loc": ["header", HEADER],
                            "msg": "was used for another request",
                            "type": "idempotency_key_reused",
                        }
                    ],
                ).response()(scope, receive, send)
            case _InFlight():
                await IdempotencyKeyInFlight().response()(scope, receive, send)
        await self._purge_now_and_then(state)

    async def _outcome(self, state: AppState, caller: str, key: str, fingerprint: str) -> _Outcome:
        """Claim the key, or wait (up to WAIT_S) while its first request is still running."""
        outcome = await _claim(state, caller, key, fingerprint, self.ttl)
        deadline = time.monotonic() + WAIT_S
        delay = 0.005
        while isinstance(outcome, _InFlight) and time.monotonic() < deadline:
            done = self._done.get((caller, key))
            pause = min(delay, max(deadline - time.monotonic(), 0))
            if done is not None:
                with suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), pause)
            else:
                await asyncio.sleep(pause)
            delay = min(delay * 2, 0.2)
            # A read while the answer is pending; a claim only once the key looks free.
            judged = _judge(await _read(state, caller, key), fingerprint, utcnow())
            outcome = (
                judged
                if judged is not None
                else await _claim(state, caller, key, fingerprint, self.ttl)
            )
        return outcome

    async def _run(
        self,
        state: AppState,
        ident: tuple[str, str],
        claim: _Claimed,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        done = self._done[ident] = asyncio.Event()
        start: Message | None = None
        chunks: list[bytes] = []

        async def buffer(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            try:
                await self.app(scope, receive, buffer)
            except BaseException:
                await asyncio.shield(self._release_quietly(state, claim))
                raise
            if start is None:
                await self._release_quietly(state, claim)
                return
            answer = _Stored(
                start["status"],
                [
                    [name.decode("latin-1"), value.decode("latin-1")]
                    for name, value in start.get("headers", ())
                    if name.lower() not in _NOT_STORED
                ],
                b"".join(chunks),
            )
            if _storable(answer.status):
                try:
                    await _complete(state, claim, answer, self.ttl)
                except DATABASE_ERRORS as error:
                    # The write is committed and this is its answer: send it. Unstored, the key
                    # stays in flight until its lease ends, then a repeat runs again.
                    logger.warning("idempotent answer not stored: %s", type(error).__name__)
            else:
                await self._release_quietly(state, claim)
        finally:
            done.set()
            if self._done.get(ident) is done:
                del self._done[ident]
        await send(start)
        await send({"type": "http.response.body", "body": answer.body, "more_body": False})

    async def _release_quietly(self, state: AppState, claim: _Claimed) -> None:
        try:
            await _release(state, claim)
        except DATABASE_ERRORS as error:
            logger.warning("idempotency key not released: %s", type(error).__name__)

    async def _purge_now_and_then(self, state: AppState) -> None:
        """After a keyed answer was sent: the expired keys, at most every PURGE_INTERVAL_S."""
        now = time.monotonic()
        if now < self._next_purge:
            return
        self._next_purge = now + PURGE_INTERVAL_S
        try:
            deleted = await purge_expired(state)
        except DATABASE_ERRORS as error:
            logger.warning("expired idempotency keys not purged: %s", type(error).__name__)
            return
        if deleted:
            logger.info("purged %d expired idempotency keys", deleted)


# --- the OpenAPI document ----------------------------------------------------------------------

_PARAMETER = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "description": "Makes this POST safe to retry: a repeat with the same key and the same "
    "method, path and body (byte for byte) within 24 h gets the first answer (status, headers, "
    f"body; `{REPLAYED_HEADER}: true`) without writing again. The same key with another request "
    "is a 422 `idempotency-key-reused`; while the first is still running, a repeat waits for it "
    f"up to {WAIT_S:g} s, then gets 409 `idempotency-key-in-flight` with `Retry-After`. Keys are "
    "per service token. 5xx answers are not kept: the retry runs again.",
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_KEY_LENGTH,
        "pattern": KEY_PATTERN,
    },
}
_REPLAYED_DOC = {
    "description": f"`true` when this is the stored answer to an earlier request with the same "
    f"`{HEADER}`.",
    "required": False,
    "schema": {"type": "string", "enum": ["true"]},
}
_RETRY_AFTER_DOC = {
    "description": f"Seconds to wait, when the first request with the `{HEADER}` is still running.",
    "required": False,
    "schema": {"type": "integer", "minimum": 0},
}


def document(schema: dict[str, Any]) -> None:
    """Declare the header, its replay marker and its 409 on every POST that takes it."""
    for path, operations in schema.get("paths", {}).items():
        operation = operations.get("post")
        if operation is None or not path.startswith(API_PREFIX) or not accepts_key(operation):
            continue
        operation.setdefault("parameters", []).append(dict(_PARAMETER))
        responses: dict[str, Any] = operation.setdefault("responses", {})
        for code, response in responses.items():
            if code.startswith("2"):
                response.setdefault("headers", {})[REPLAYED_HEADER] = _REPLAYED_DOC
        conflict = responses.setdefault("409", {"description": "Conflict"})
        conflict["description"] += f"; or the first request with this `{HEADER}` is still running"
        conflict.setdefault("headers", {})["Retry-After"] = _RETRY_AFTER_DOC
