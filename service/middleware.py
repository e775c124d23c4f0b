"""The ASGI middleware in front of every route: request id, metrics, access log, body limits,
content type, NUL in the path or query, and service-token authentication (401 before anything
else is looked at)."""

from __future__ import annotations

import logging
import os
import random
import re
import time
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge, Unauthorized, UnsupportedMediaType, ValidationFailed
from service.logs import request_id_var
from service.metrics import Metrics
from service.retry import ReplayOnSerializationFailure
from service.security import TokenAuthenticator

access_log = logging.getLogger("service.access")
_ids = random.Random()  # seeded from the OS once, per process (see os.register_at_fork below)
os.register_at_fork(after_in_child=_ids.seed)

API_PREFIX = "/api/v1"
# Routes whose body is not JSON, with the larger upload limit.
RAW_BODY_ROUTES = frozenset({("PUT", "/api/v1/symbols")})
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH", "POST", "PUT", "PATCH"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
JSON_TYPE = re.compile(r"^application/([a-z0-9.+-]+\+)?json\s*(;.*)?$", re.I)


class ServiceMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        authenticator: TokenAuthenticator,
        max_body: int,
        max_upload: int,
    ) -> None:
        self.app = app
        # What serves the routes outside /api/v1 (health, metrics, docs): `app` without the
        # replay wrapper (the request copy it makes), since they run no transaction to replay.
        self.unreplayed = app.app if isinstance(app, ReplayOnSerializationFailure) else app
        self.metrics = metrics
        self.authenticator = authenticator
        self.max_body = max_body
        self.max_upload = max_upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope["headers"])
        request_id, echo = request_id_of(headers)
        token = request_id_var.set(request_id)
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), echo]
            await send(message)

        try:
            if not scope["path"].startswith(API_PREFIX):
                await self.unreplayed(scope, _limited(receive, self.max_body), send_wrapper)
            else:
                problem = self._reject(scope, headers)
                if problem is not None:
                    await problem.response()(scope, receive, send_wrapper)
                else:
                    limit = self._limit(scope)
                    await self.app(scope, _limited(receive, limit), send_wrapper)
        finally:
            served(self.metrics, _route_template(scope), scope, status, started)
            request_id_var.reset(token)

    def _limit(self, scope: Scope) -> int:
        if (scope["method"], scope["path"].rstrip("/")) in RAW_BODY_ROUTES:
            return self.max_upload
        return self.max_body

    def _reject(self, scope: Scope, headers: dict[bytes, bytes]) -> Any:
        """The problem that answers an /api/v1 request before any route sees it, if any."""
        path: str = scope["path"]
        principal = self.authenticator.authenticate(headers.get(b"authorization"))
        if principal is None:
            return Unauthorized()
        scope["principal"] = principal
        nul = _nul_in_target(scope)
        if nul is not None:
            return nul
        method = scope["method"]
        if method not in _BODY_METHODS:
            return None
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self._limit(scope):
            return PayloadTooLarge(f"The body exceeds {self._limit(scope)} bytes.")
        has_body = (length is not None and length != b"0") or b"transfer-encoding" in headers
        if has_body and (method, path.rstrip("/")) not in RAW_BODY_ROUTES:
            content_type = headers.get(b"content-type", b"").decode("latin-1")
            if not JSON_TYPE.match(content_type):
                return UnsupportedMediaType(
                    f"Expected application/json, got {content_type or 'no content type'}."
                )
        return None


def request_id_of(headers: dict[bytes, bytes]) -> tuple[str, tuple[bytes, bytes]]:
    """The request's id (the caller's X-Request-ID when well-formed, else a new one) and the
    response header that echoes it."""
    given = headers.get(b"x-request-id")
    if given is not None and _REQUEST_ID.match(given.decode("latin-1")):
        return given.decode("latin-1"), (b"x-request-id", given)
    # 32 hex digits, as uuid4().hex, without its system call per request: an id to correlate
    # log lines needs to be unique, not unpredictable.
    request_id = f"{_ids.getrandbits(128):032x}"
    return request_id, (b"x-request-id", request_id.encode())


def served(metrics: Metrics, template: str, scope: Scope, status: int, started: float) -> None:
    """Count a finished request in the metrics and write its access line."""
    elapsed = time.perf_counter() - started
    metrics.observe(template, scope["method"], status, elapsed)
    if access_log.isEnabledFor(logging.INFO):
        _log_access(scope["method"], scope["path"], status, elapsed)


def _log_access(method: str, path: str, status: int, elapsed: float) -> None:
    """One access line, built without the caller lookup of Logger.info (a stack walk per
    request): the record goes straight to the handlers, which hand it to the writer thread."""
    record = logging.LogRecord(
        access_log.name,
        logging.INFO,
        __file__,
        0,
        "%s %s %d %.1fms",
        (method, path, status, elapsed * 1000),
        None,
        "__call__",
    )
    record.status = status
    record.duration_ms = round(elapsed * 1000, 3)
    access_log.handle(record)


NUL_MESSAGE = "must not contain NUL (\\u0000)"


def _nul_in_target(scope: Scope) -> ValidationFailed | None:
    """A NUL in the path or a query parameter: no database stores it in text.

    Every string parameter's schema pattern refuses NUL already; this is the backstop that keeps
    one the routes forgot from reaching the database. Cheap: one scan of each, decoded only when
    a NUL is there.
    """
    errors: list[dict[str, Any]] = []
    if "\x00" in scope["path"]:
        for name in _path_parameters_with_nul(scope) or [""]:
            loc = ["path", name] if name else ["path"]
            errors.append({"loc": loc, "msg": NUL_MESSAGE, "type": "value_error"})
    query: bytes = scope.get("query_string", b"")
    if b"%00" in query:
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if "\x00" in name or "\x00" in value:
                loc = ["query", name.replace("\x00", "\\u0000")]
                errors.append({"loc": loc, "msg": NUL_MESSAGE, "type": "value_error"})
    if not errors:
        return None
    where = ".".join(errors[0]["loc"])
    return ValidationFailed(f"{where}: {NUL_MESSAGE}", errors=errors)


def _path_parameters_with_nul(scope: Scope) -> list[str]:
    """The names of the path parameters holding the NUL, from the OpenAPI path templates (the
    route is not matched yet); none when no template matches."""
    app: Any = scope.get("app")
    paths = app.openapi().get("paths", {}) if hasattr(app, "openapi") else {}
    path: str = scope["path"]
    for segment in (r"[^/]*", r".*"):  # a last `{x:path}` parameter may span segments
        for template in paths:
            parts = re.split(r"\{(\w+)\}", template)
            pattern = "".join(
                f"(?P<{part}>{segment})" if i % 2 else re.escape(part)
                for i, part in enumerate(parts)
            )
            match = re.fullmatch(pattern, path)
            if match:
                return [name for name, value in match.groupdict().items() if "\x00" in value]
    return []


def _route_template(scope: Scope) -> str:
    """The matched route's full path template (`/api/v1/strategies/{id}`), for metric labels.

    FastAPI keeps included routers nested, so the route object holds only its own part of the
    path; the full template is on the effective route context it records in the scope.
    """
    fastapi_scope = scope.get("fastapi")
    context = (
        fastapi_scope.get("effective_route_context") if isinstance(fastapi_scope, dict) else None
    )
    template = getattr(context, "path_format", None) or getattr(
        scope.get("route"), "path_format", None
    )
    return template or "<unmatched>"


def _limited(receive: Receive, limit: int) -> Receive:
    """Count streamed body bytes, so a chunked body cannot get past the limit either."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise PayloadTooLarge(f"The body exceeds {limit} bytes.")
        return message

    return wrapped
