"""Problem documents (RFC 9457, application/problem+json) as typed exceptions."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx


class StoreError(Exception):
    """A problem answered by the store: `status`, `type` (its URI), `title`, `detail`, `errors`
    (field problems on 422)."""

    def __init__(
        self,
        status: int,
        type: str = "about:blank",
        title: str = "",
        detail: str = "",
        errors: list[dict[str, Any]] | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(f"{status} {type.rsplit('/', 1)[-1]}: {detail or title}")
        self.status = status
        self.type = type
        self.title = title
        self.detail = detail
        self.errors = errors or []
        self.response = response

    @property
    def type_suffix(self) -> str:
        return self.type.rsplit("/", 1)[-1]


class Unauthorized(StoreError):
    """401: the service token is missing or unknown."""


class ApiKeyUnknown(Unauthorized):
    """401 api-key-unknown: the platform user's API key matches no user."""


class Forbidden(StoreError):
    """403: the service token lacks the scope."""


class NotFound(StoreError):
    """404: unknown resource."""


class BrokerTokenMissing(NotFound):
    """404 broker-token-missing: the key's user has no broker token stored."""


class SymbolUnknown(NotFound):
    """404 symbol-unknown: no such symbol on that exchange."""


class BrokerTokenRevoked(StoreError):
    """410 broker-token-revoked (or -expired): the user must log in to the broker again."""


class Conflict(StoreError):
    """409: a unique value is taken."""


class ValidationFailed(StoreError):
    """422: the request broke a rule; `errors` lists the fields."""


class Unavailable(StoreError):
    """503: the database is unreachable or busy; `retry_after` is the advised wait in seconds."""

    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


BY_TYPE: dict[str, type[StoreError]] = {
    "api-key-unknown": ApiKeyUnknown,
    "broker-token-missing": BrokerTokenMissing,
    "broker-token-revoked": BrokerTokenRevoked,
    "broker-token-expired": BrokerTokenRevoked,
    "symbol-unknown": SymbolUnknown,
}
BY_STATUS: dict[int, type[StoreError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: BrokerTokenRevoked,
    422: ValidationFailed,
    503: Unavailable,
}


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent/bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def error_from_response(response: httpx.Response) -> StoreError:
    """The typed exception for an error answer (a problem document or not)."""
    body: Any = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"detail": response.text[:500]}
    problem_type = str(body.get("type") or "about:blank")
    suffix = problem_type.rsplit("/", 1)[-1]
    cls = BY_TYPE.get(suffix) or BY_STATUS.get(response.status_code, StoreError)
    errors = body.get("errors")
    kwargs: dict[str, Any] = {
        "status": response.status_code,
        "type": problem_type,
        "title": str(body.get("title") or response.reason_phrase),
        "detail": str(body.get("detail") or ""),
        "errors": errors if isinstance(errors, list) else None,
        "response": response,
    }
    if cls is Unavailable:
        return Unavailable(
            retry_after=parse_retry_after(response.headers.get("Retry-After")), **kwargs
        )
    return cls(**kwargs)
