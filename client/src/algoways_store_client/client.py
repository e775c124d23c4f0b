"""StoreClient: the async client of the AlgoWays Store API."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter

from algoways_store_client import models as m
from algoways_store_client._operations import OPERATIONS, GeneratedOperations, Operation
from algoways_store_client.errors import StoreError, Unavailable, error_from_response

T = TypeVar("T", bound=BaseModel)
JSON_TYPES = ("application/json", "application/problem+json")
DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=3.0)
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


class RetryPolicy:
    """Exponential backoff with full jitter, bounded attempts, honouring Retry-After.

    Only 503 answers and connection errors are retried (a timeout on a write may have been
    applied, so it is not), and only for calls that are safe to repeat (see `StoreClient`)."""

    def __init__(
        self,
        attempts: int = 4,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        max_retry_after: float = 30.0,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number `attempt` (1 = the first retry)."""
        ceiling = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        wait = random.uniform(0, ceiling)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_retry_after))
        return wait


class StoreClient(GeneratedOperations):
    """Every operation of the API as a method; the order path's ones typed.

    Pooled connections (`limits`) and timeouts (`timeout`) are httpx's; `transport` replaces the
    network (tests pass httpx.ASGITransport). Errors are raised as `StoreError` subclasses.

    Retries: GET/PUT/DELETE and the POSTs that only read are retried on 503 and connection
    errors. A POST that writes is retried only under an Idempotency-Key (the server answers a
    repeat with the first answer): the client makes one per call (uuid4) and sends it on every
    attempt, unless `auto_idempotency_keys=False` and the caller passes none. PATCH is never
    retried.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: httpx.Timeout | float | None = DEFAULT_TIMEOUT,
        limits: httpx.Limits = DEFAULT_LIMITS,
        retry: RetryPolicy | None = None,
        auto_idempotency_keys: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        all_headers = {"Accept": "application/json", **(headers or {})}
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.AsyncClient(
            base_url=base_url,
            headers=all_headers,
            timeout=timeout,
            limits=limits,
            transport=transport,
        )
        self.retry = retry or RetryPolicy()
        self.auto_idempotency_keys = auto_idempotency_keys
        self._sleep = sleep

    async def __aenter__(self) -> StoreClient:
        await self.http.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.http.__aexit__(exc_type, exc, tb)

    async def aclose(self) -> None:
        await self.http.aclose()

    # --- the transport of every call ------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: str | bytes | None = None,
        content_type: str | None = None,
        idempotent: bool | None = None,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        """Send one logical call (retrying when safe) and return the successful response.

        `idempotent` None means: by method (GET/PUT/DELETE/HEAD/OPTIONS yes, others no).
        An `idempotency_key` is sent as the Idempotency-Key header on every attempt and makes
        the call safe to retry."""
        method = method.upper()
        headers: dict[str, str] = {}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        if content_type is not None:
            headers["Content-Type"] = content_type
        if idempotent is None:
            idempotent = method in {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}
        retriable = idempotent or idempotency_key is not None
        query = _query(params)
        attempt = 0
        while True:
            attempt += 1
            last = attempt >= self.retry.attempts or not retriable
            try:
                response = await self.http.request(
                    method, path, params=query, json=json, content=content, headers=headers
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError):
                # RemoteProtocolError: a pooled keep-alive connection the server had closed.
                if last:
                    raise
                await self._sleep(self.retry.delay(attempt, None))
                continue
            if response.is_success:
                return response
            await response.aread()
            problem = error_from_response(response)
            if isinstance(problem, Unavailable) and not last:
                await self._sleep(self.retry.delay(attempt, problem.retry_after))
                continue
            raise problem

    async def _call(
        self,
        name: str,
        *,
        path: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        json: Any = None,
        content: str | bytes | None = None,
        content_type: str | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        """Call the operation `name` of `OPERATIONS`; the decoded body (None for no content)."""
        response = await self._send(
            OPERATIONS[name],
            path=path,
            params=params,
            json=json,
            content=content,
            content_type=content_type,
            idempotency_key=idempotency_key,
        )
        if response.status_code == 204 or not response.content:
            return None
        if response.headers.get("content-type", "").startswith(JSON_TYPES):
            return response.json()
        return response.text

    async def _send(
        self,
        operation: Operation,
        *,
        path: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: str | bytes | None = None,
        content_type: str | None = None,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        url = operation.path
        for key, value in (path or {}).items():
            url = url.replace("{" + key + "}", _segment(value))
        if operation.writes and idempotency_key is None and self.auto_idempotency_keys:
            idempotency_key = str(uuid.uuid4())
        if isinstance(json, BaseModel):
            json = json.model_dump(mode="json", exclude_unset=True)
        elif isinstance(json, list):
            json = [
                item.model_dump(mode="json", exclude_unset=True)
                if isinstance(item, BaseModel)
                else item
                for item in json
            ]
        return await self.request(
            operation.method,
            url,
            params=params,
            json=json,
            content=content,
            content_type=content_type,
            idempotent=operation.method != "PATCH" and not operation.writes,
            idempotency_key=idempotency_key,
        )

    async def _typed(self, model: type[T], name: str, **kwargs: Any) -> T:
        response = await self._send(OPERATIONS[name], **kwargs)
        return model.model_validate_json(response.content)

    # --- orders ---------------------------------------------------------------------------------

    async def orders_context(
        self,
        api_key: str,
        symbol: str,
        exchange: str,
        include_auth: bool = False,
        include_feed_token: bool = False,
    ) -> m.OrderContext:
        """Everything an order needs in one call: the key's user, broker token state (and, with
        the flags, the broker's tokens), analyze mode and the instrument."""
        body = m.OrderContextQuery(
            api_key=api_key,
            symbol=symbol,
            exchange=exchange,
            include_auth=include_auth,
            include_feed_token=include_feed_token,
        )
        return await self._typed(m.OrderContext, "orders_context", json=body)

    async def orders_context_batch(
        self,
        api_key: str,
        items: Sequence[tuple[str, str] | m.InstrumentRef],
        include_auth: bool = False,
        include_feed_token: bool = False,
    ) -> m.OrderContextBasket:
        """The context of a basket (up to 50 (symbol, exchange) pairs, one key); an unknown
        symbol is a per-item `problem`, not an error of the call."""
        refs = [
            item
            if isinstance(item, m.InstrumentRef)
            else m.InstrumentRef(symbol=item[0], exchange=item[1])
            for item in items
        ]
        body = m.OrderContextBasketQuery(
            api_key=api_key,
            items=refs,
            include_auth=include_auth,
            include_feed_token=include_feed_token,
        )
        return await self._typed(m.OrderContextBasket, "orders_context_batch", json=body)

    async def orders_record(
        self,
        *,
        log: m.ApiLogCreate | Mapping[str, Any],
        latency: m.LatencyCreate | Mapping[str, Any],
        analyze: bool | None = None,
        idempotency_key: str | None = None,
    ) -> m.OrderRecorded:
        """Write the order's log (order or analyzer log) and its latency row: both or neither."""
        body = m.OrderRecordCreate(
            log=_model(m.ApiLogCreate, log), latency=_model(m.LatencyCreate, latency)
        )
        if analyze is not None:
            body.analyze = analyze
        return await self._typed(
            m.OrderRecorded, "orders_record", json=body, idempotency_key=idempotency_key
        )

    # --- API keys, tokens -----------------------------------------------------------------------

    async def verify_api_key(
        self, api_key: str, include_auth: bool = False, include_feed_token: bool = False
    ) -> m.ApiKeyVerification:
        body = m.ApiKeyVerify(
            api_key=api_key, include_auth=include_auth, include_feed_token=include_feed_token
        )
        return await self._typed(m.ApiKeyVerification, "verify_api_key", json=body)

    async def put_api_key(self, user_id: str, api_key: str | None = None) -> m.ApiKeyRead:
        """Store `api_key` for the user, or (None) have the server generate one."""
        body = m.ApiKeyPut() if api_key is None else m.ApiKeyPut(api_key=api_key)
        return await self._typed(m.ApiKeyRead, "put_api_key", path={"user_id": user_id}, json=body)

    async def get_api_key(self, user_id: str) -> m.ApiKeyRead:
        return await self._typed(m.ApiKeyRead, "get_api_key", path={"user_id": user_id})

    async def delete_api_key(self, user_id: str) -> None:
        await self._send(OPERATIONS["delete_api_key"], path={"user_id": user_id})

    async def lookup_token(
        self,
        exchange: str,
        *,
        symbol: str | None = None,
        token: str | None = None,
        brsymbol: str | None = None,
    ) -> m.TokenMapping:
        """The broker mapping of exactly one of symbol, token or brsymbol on `exchange`."""
        given = {"symbol": symbol, "token": token, "brsymbol": brsymbol}
        keys = [(k, v) for k, v in given.items() if v is not None]
        if len(keys) != 1:
            raise ValueError("give exactly one of symbol, token, brsymbol")
        params = {"exchange": exchange, keys[0][0]: keys[0][1]}
        return await self._typed(m.TokenMapping, "lookup_token", params=params)

    async def lookup_tokens(
        self, items: Sequence[m.TokenQuery | Mapping[str, Any]]
    ) -> m.TokenLookupResults:
        body = m.TokenLookupBatch(items=[_model(m.TokenQuery, item) for item in items])
        return await self._typed(m.TokenLookupResults, "lookup_tokens", json=body)

    # --- traffic, strategies, settings ----------------------------------------------------------

    async def ban_status(self, ip: str) -> m.BanStatus:
        return await self._typed(m.BanStatus, "ban_status", path={"ip": ip})

    async def strategy_by_webhook(self, webhook_id: str) -> m.StrategyDetail:
        return await self._typed(
            m.StrategyDetail, "strategy_by_webhook", path={"webhook_id": webhook_id}
        )

    async def get_settings(self) -> m.SettingsRead:
        return await self._typed(m.SettingsRead, "get_settings")

    # --- logs -----------------------------------------------------------------------------------

    async def create_order_logs(
        self,
        entries: m.ApiLogCreate | Mapping[str, Any] | Sequence[m.ApiLogCreate | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> m.Ids:
        """Write one order-log entry or a list of them; their ids, in order."""
        return await self._typed(
            m.Ids, "create_order_logs", json=_entries(entries), idempotency_key=idempotency_key
        )

    async def create_analyzer_logs(
        self,
        entries: m.ApiLogCreate | Mapping[str, Any] | Sequence[m.ApiLogCreate | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> m.Ids:
        return await self._typed(
            m.Ids, "create_analyzer_logs", json=_entries(entries), idempotency_key=idempotency_key
        )

    async def create_latency(
        self,
        entries: m.LatencyCreate
        | Mapping[str, Any]
        | Sequence[m.LatencyCreate | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> m.Count:
        if isinstance(entries, m.LatencyCreate | Mapping):
            body: Any = _model(m.LatencyCreate, entries)
        else:
            body = [_model(m.LatencyCreate, entry) for entry in entries]
        return await self._typed(
            m.Count, "create_latency", json=body, idempotency_key=idempotency_key
        )

    # --- users ----------------------------------------------------------------------------------

    async def create_user(
        self,
        username: str,
        email: str,
        password: str,
        *,
        is_admin: bool = False,
        first_name: str | None = None,
        last_name: str | None = None,
        idempotency_key: str | None = None,
    ) -> m.UserRead:
        body = m.UserCreate(
            username=username,
            email=email,
            password=password,
            is_admin=is_admin,
            first_name=first_name,
            last_name=last_name,
        )
        return await self._typed(
            m.UserRead, "create_user", json=body, idempotency_key=idempotency_key
        )

    async def get_user(self, username: str) -> m.UserRead:
        return await self._typed(m.UserRead, "get_user", path={"username": username})

    async def list_users(
        self, *, is_admin: bool | None = None, email: str | None = None, limit: int | None = None
    ) -> list[m.UserRead]:
        response = await self._send(
            OPERATIONS["list_users"],
            params={"is_admin": is_admin, "email": email, "limit": limit},
        )
        return _USERS.validate_python(response.json()["items"])


_USERS = TypeAdapter(list[m.UserRead])
M = TypeVar("M", bound=BaseModel)


def _model(model: type[M], value: M | Mapping[str, Any]) -> M:
    return value if isinstance(value, model) else model.model_validate(value)


def _entries(
    entries: m.ApiLogCreate | Mapping[str, Any] | Sequence[m.ApiLogCreate | Mapping[str, Any]],
) -> Any:
    if isinstance(entries, m.ApiLogCreate | Mapping):
        return _model(m.ApiLogCreate, entries)
    return [_model(m.ApiLogCreate, entry) for entry in entries]


def _segment(value: Any) -> str:
    """A path parameter, percent-encoded (a symbol may hold '&' or spaces)."""
    return quote(str(value).lower() if isinstance(value, bool) else str(value), safe="")


def _query(params: Mapping[str, Any] | None) -> httpx.QueryParams | None:
    """Query parameters without the unset (None) ones; lists repeat the key; bools lowercase."""
    if not params:
        return None
    pairs: list[tuple[str, str | int | float | bool | None]] = []
    for key, value in params.items():
        values = value if isinstance(value, list | tuple) else [value]
        for item in values:
            if item is None:
                continue
            pairs.append((key, str(item).lower() if isinstance(item, bool) else str(item)))
    return httpx.QueryParams(pairs)


__all__ = ["RetryPolicy", "StoreClient", "StoreError"]
