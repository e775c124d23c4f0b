"""The fast lane: the order path's memory-served reads (and its log writes), answered without
FastAPI's routing, dependency solving and middleware layers.

Every order and every webhook alert of the platform makes these calls, and each answer is already
in memory; what they cost is the framework around them (py-spy on the running service put FastAPI's
routing, dependency solving and the middleware layers at about three quarters of a token lookup).
The symbol search and the option chain that the platform's screens poll are here for the same
reason: eight query parameters validated by FastAPI cost more than most searches.

A lane route serves only its happy path: an authorised request, well-formed beyond doubt, whose
answer is in memory. For anything else its handler returns None and the request goes through the
full app (middleware, routing, validation, the route), with its body replayed. So every error,
every edge case and the OpenAPI document come from one place, and the lane can only be a faster
way to the answer the route gives (tests/test_fastlane.py holds the two side by side for every
request shape it serves). The lane still does what the middleware does for every request: request
id, metrics, access log.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import orjson
from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import State
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import derivatives, orders
from service.errors import AppError, failure_response
from service.group_commit import GroupCommitWriter
from service.logs import request_id_var
from service.metrics import Metrics
from service.middleware import JSON_TYPE, request_id_of, served
from service.repositories import logs as logs_repo
from service.repositories import strategies as strategies_repo
from service.repositories.settings import cached_settings
from service.repositories.strategies import CHARTINK, STRATEGIES, StrategyKind
from service.routers.health import LIVE_BODY
from service.runtime import Writers
from service.runtime.api_keys import verification
from service.runtime.webhooks import WebhookLookup
from service.schemas.auth import ApiKeyVerify
from service.schemas.latency import LatencyCreate
from service.schemas.logs import ApiLogCreate, Batch
from service.schemas.orders import (
    OrderContextBasketQuery,
    OrderContextQuery,
    OrderRecordCreate,
)
from service.schemas.symbols import (
    DEFAULT_CHAIN_COUNT,
    DEFAULT_SEARCH_LIMIT,
    EXPIRY_PATTERN,
    MAX_CHAIN_COUNT,
    MAX_EXCHANGE,
    MAX_INSTRUMENT_TYPE,
    MAX_QUERY_TERMS,
    MAX_SEARCH_LIMIT,
    MAX_STRIKE,
    MAX_UNDERLYING,
)
from service.schemas.traffic import IPAddress, TrafficLogCreate
from service.security import Principal, TokenAuthenticator
from service.state import AppState

K = TypeVar("K", bound=ApiKeyVerify)

# (state, principal, query string, path parameter, body) -> the answer's body, or None: not here.
# None only before the handler changed anything; past that point it answers or raises AppError.
Handler = Callable[
    [AppState, Principal | None, bytes, str, bytes | None], Coroutine[Any, Any, bytes | None]
]

MAX_QUERY_TEXT = 255  # query_text(255) of the lookup's parameters
MAX_WEBHOOK_ID = 36  # WebhookId
MAX_STRATEGY_ID = 2**31 - 1  # StrategyId


@dataclass(frozen=True, slots=True)
class LaneRoute:
    method: str
    # The whole path, or for a route with one last path parameter the part before it.
    path: str
    template: str  # the route's path template, the metrics label the full app uses
    scope: str | None  # the token scope it needs; None: no token (health)
    handle: Handler
    status: int = 200

    @property
    def parameterised(self) -> bool:
        return self.path != self.template


def _query(query: bytes, names: frozenset[str]) -> dict[str, str] | None:
    """The query's parameters, if each is one of `names`, given once and NUL-free."""
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)  # as Starlette parses
    params = dict(pairs)
    if len(params) != len(pairs) or not params.keys() <= names:
        return None
    if any("\x00" in value for value in params.values()):
        return None
    return params


_LOOKUP_PARAMS = frozenset({"exchange", "symbol", "token", "brsymbol"})


async def token_lookup(
    state: AppState, _: Principal | None, query: bytes, __: str, ___: bytes | None
) -> bytes | None:
    params = _query(query, _LOOKUP_PARAMS)
    if params is None or len(params) != 2:
        return None
    exchange = params.get("exchange")
    if not exchange or any(len(value) > MAX_QUERY_TEXT for value in params.values()):
        return None
    index = state.runtime.symbols.index
    if index is None:
        return None
    i = index.find(
        exchange,
        symbol=params.get("symbol"),
        token=params.get("token"),
        brsymbol=params.get("brsymbol"),
    )
    return orjson.dumps(index.mapping(i)) if i is not None else None


# The lane's share of the symbol reads' parameters: plain values only. A value FastAPI might
# read otherwise (signs, exponents, leading zeros, blanks) goes to the route, which says.
_DECIMAL = re.compile(r"(?:0|[1-9][0-9]{0,12})(?:\.[0-9]{1,6})?")
_COUNT = re.compile(r"[1-9][0-9]{0,3}")
_EXPIRY = re.compile(EXPIRY_PATTERN)


class _RouteJudges(Exception):
    """A parameter the lane leaves to the route to judge (and to answer)."""


def _text(params: dict[str, str], name: str, max_length: int) -> str | None:
    value = params.get(name)
    if value is not None and not (0 < len(value) <= max_length and not value.isspace()):
        raise _RouteJudges
    return value


def _decimal(params: dict[str, str], name: str, maximum: float) -> float | None:
    value = params.get(name)
    if value is None:
        return None
    if not _DECIMAL.fullmatch(value) or float(value) > maximum:
        raise _RouteJudges
    return float(value)


def _count(params: dict[str, str], name: str, maximum: int, default: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    if not _COUNT.fullmatch(value) or int(value) > maximum:
        raise _RouteJudges
    return int(value)


def _expiry(params: dict[str, str]) -> str | None:
    value = params.get("expiry")
    if value is not None and not _EXPIRY.fullmatch(value):
        raise _RouteJudges
    return value


_SEARCH_PARAMS = frozenset(
    {"q", "exchange", "underlying", "instrumenttype", "expiry", "strike_min", "strike_max",
     "limit"}
)  # fmt: skip


async def symbol_search(
    state: AppState, _: Principal | None, query: bytes, __: str, ___: bytes | None
) -> bytes | None:
    params = _query(query, _SEARCH_PARAMS)
    index = state.runtime.symbols.index
    if params is None or index is None:
        return None
    try:
        q = params.get("q")
        if q is not None and len(q) > MAX_QUERY_TERMS:
            raise _RouteJudges
        return derivatives.search(
            index,
            q,
            exchange=_text(params, "exchange", MAX_EXCHANGE),
            underlying=_text(params, "underlying", MAX_UNDERLYING),
            instrumenttype=_text(params, "instrumenttype", MAX_INSTRUMENT_TYPE),
            expiry=_expiry(params),
            strike_min=_decimal(params, "strike_min", MAX_STRIKE),
            strike_max=_decimal(params, "strike_max", MAX_STRIKE),
            limit=_count(params, "limit", MAX_SEARCH_LIMIT, DEFAULT_SEARCH_LIMIT),
        )
    except _RouteJudges:
        return None


_CHAIN_PARAMS = frozenset({"exchange", "underlying", "expiry", "around", "count"})


async def option_chain(
    state: AppState, _: Principal | None, query: bytes, __: str, ___: bytes | None
) -> bytes | None:
    params = _query(query, _CHAIN_PARAMS)
    index = state.runtime.symbols.index
    if params is None or index is None:
        return None
    try:
        exchange = _text(params, "exchange", MAX_EXCHANGE)
        underlying = _text(params, "underlying", MAX_UNDERLYING)
        if exchange is None or underlying is None:
            raise _RouteJudges
        return derivatives.option_chain(
            index,
            exchange=exchange,
            underlying=underlying,
            expiry=_expiry(params),
            today=state.market_clock(),
            around=_decimal(params, "around", MAX_STRIKE),
            count=_count(params, "count", MAX_CHAIN_COUNT, DEFAULT_CHAIN_COUNT),
        )
    except _RouteJudges:
        return None


def _body_as(model: type[K], body: bytes | None) -> K | None:
    """The JSON body validated as the route validates it, or None (the route says what is wrong).

    orjson accepts a subset of what the route's json.loads does, and decodes it alike."""
    try:
        return model.model_validate(orjson.loads(body or b""))
    except (orjson.JSONDecodeError, ValidationError):
        return None


def _verified(
    state: AppState, principal: Principal | None, asked: ApiKeyVerify
) -> dict[str, Any] | None:
    """The key's verification answer when its owner is in memory and the caller may
    see the tokens it asks for; None otherwise. ApiKeyUnknown (401) when memory holds that no
    user has the key: a caller retrying a bad key is answered here, as cheaply as a good one."""
    auth, feed = asked.include_auth, asked.include_feed_token
    if principal is None or ((auth or feed) and not principal.has("secrets")):
        return None
    owner = state.runtime.verifier.cached(asked.api_key.get_secret_value())
    return verification(state.keyring, owner, auth=auth, feed=feed) if owner else None


async def api_key_verify(
    state: AppState, principal: Principal | None, _: bytes, __: str, body: bytes | None
) -> bytes | None:
    asked = _body_as(ApiKeyVerify, body)
    answer = _verified(state, principal, asked) if asked is not None else None
    return orjson.dumps(answer) if answer is not None else None


async def order_context(
    state: AppState, principal: Principal | None, _: bytes, __: str, body: bytes | None
) -> bytes | None:
    """orders/context when the key, the instrument and the settings are all in memory; any
    miss or problem but the broker token's goes to the route (service/orders.py)."""
    asked = _body_as(OrderContextQuery, body)
    index = state.runtime.symbols.index
    current = cached_settings(state.caches)
    if asked is None or index is None or current is None:
        return None
    i = index.find(asked.exchange, symbol=asked.symbol)
    if i is None:
        return None
    answer = _verified(state, principal, asked)
    if answer is None:
        return None
    answer["analyze_mode"] = current.analyze_mode
    answer["instrument"] = index.row(i)
    return orjson.dumps(answer)


async def order_basket(
    state: AppState, principal: Principal | None, _: bytes, __: str, body: bytes | None
) -> bytes | None:
    """orders/context/batch when the key and the settings are in memory (unknown symbols are
    answered in their items, as the route does)."""
    asked = _body_as(OrderContextBasketQuery, body)
    index = state.runtime.symbols.index
    current = cached_settings(state.caches)
    if asked is None or index is None or current is None:
        return None
    answer = _verified(state, principal, asked)
    if answer is None:
        return None
    answer["analyze_mode"] = current.analyze_mode
    answer["items"] = orders.basket(index, [(i.symbol, i.exchange) for i in asked.items])
    return orjson.dumps(answer)


async def order_record(
    state: AppState, _: Principal | None, __: bytes, ___: str, body: bytes | None
) -> bytes | None:
    """orders/record: the route's own parser, the settings cache for an unsaid analyze mode, and
    the route's group-committed write of both rows."""
    try:
        asked = OrderRecordCreate.model_validate_json(body or b"")
    except ValidationError:
        return None
    analyze = asked.analyze
    if analyze is None:
        current = cached_settings(state.caches)
        if current is None:
            return None
        analyze = current.analyze_mode
    # Past this point the rows are the writer's: a failure is answered here, never retried.
    table, log_id, latency_id = await orders.record(
        state.runtime.writers.orders, asked, analyze=analyze
    )
    return orjson.dumps({"log_table": table, "log_id": log_id, "latency_id": latency_id})


def strategy_read(kind: StrategyKind) -> Handler:
    """GET a strategy by id, uncached: the route's one statement and rendering (its 404 too)."""

    async def handle(
        state: AppState, _: Principal | None, __: bytes, strategy_id: str, ___: bytes | None
    ) -> bytes | None:
        # StrategyId: an integer 1..2^31-1, written plainly (no sign, no leading zero).
        if not strategy_id.isdecimal() or strategy_id[0] == "0" or len(strategy_id) > 10:
            return None
        number = int(strategy_id)
        if number > MAX_STRATEGY_ID:
            return None
        return await strategies_repo.get_strategy_json(state.reads, kind, number)

    return handle


_IP = TypeAdapter(IPAddress)
_NOT_BANNED = b'{"banned":false,"ban":null}'


async def ban_status(
    state: AppState, _: Principal | None, __: bytes, ip: str, ___: bytes | None
) -> bytes | None:
    try:
        address = _IP.validate_python(ip)
    except ValidationError:
        return None
    status = state.runtime.bans.cached(address)
    if status is None:
        return None
    return _NOT_BANNED if status.ban is None else status.model_dump_json(by_alias=True).encode()


def by_webhook(lookup: Callable[[AppState], WebhookLookup]) -> Handler:
    async def handle(
        state: AppState, _: Principal | None, __: bytes, webhook_id: str, ___: bytes | None
    ) -> bytes | None:
        if len(webhook_id) > MAX_WEBHOOK_ID:
            return None
        return lookup(state).cached(webhook_id)

    return handle


async def settings(
    state: AppState, _: Principal | None, __: bytes, ___: str, ____: bytes | None
) -> bytes | None:
    current = cached_settings(state.caches)
    return current.model_dump_json(by_alias=True).encode() if current is not None else None


async def live(
    _: AppState, __: Principal | None, ___: bytes, ____: str, _____: bytes | None
) -> bytes:
    return LIVE_BODY


def log_write(
    batch: Batch[Any], writer: Callable[[Writers], GroupCommitWriter], at: str, answer: str
) -> Handler:
    """A log route's POST: the route's own body parser, its group-commit writer, its answer
    (`ids` or `count`), 201 once committed."""

    async def handle(
        state: AppState, _: Principal | None, __: bytes, ___: str, body: bytes | None
    ) -> bytes | None:
        try:
            items = batch.parse(body or b"")
        except AppError:
            return None
        # Past this point the rows are the writer's: a failure is answered here, never retried.
        ids = await writer(state.runtime.writers).submit(logs_repo.rows_from(items, at))
        return orjson.dumps({"ids": ids or []} if answer == "ids" else {"count": len(items)})

    return handle


API = "/api/v1"
ROUTES = (
    LaneRoute("GET", "/health/live", "/health/live", None, live),
    LaneRoute("GET", f"{API}/tokens/lookup", f"{API}/tokens/lookup", "read", token_lookup),
    LaneRoute("GET", f"{API}/symbols/search", f"{API}/symbols/search", "read", symbol_search),
    LaneRoute(
        "GET", f"{API}/symbols/option-chain", f"{API}/symbols/option-chain", "read", option_chain
    ),
    LaneRoute(
        "POST",
        f"{API}/auth/api-keys/verify",
        f"{API}/auth/api-keys/verify",
        "write",
        api_key_verify,
    ),
    LaneRoute("GET", f"{API}/traffic/bans/", f"{API}/traffic/bans/{{ip}}", "read", ban_status),
    LaneRoute(
        "GET",
        f"{API}/strategies/by-webhook/",
        f"{API}/strategies/by-webhook/{{webhook_id}}",
        "read",
        by_webhook(lambda state: state.runtime.strategy_webhooks),
    ),
    LaneRoute(
        "GET",
        f"{API}/chartink/strategies/by-webhook/",
        f"{API}/chartink/strategies/by-webhook/{{webhook_id}}",
        "read",
        by_webhook(lambda state: state.runtime.chartink_webhooks),
    ),
    LaneRoute("GET", f"{API}/settings", f"{API}/settings", "read", settings),
    *(
        LaneRoute(
            "GET",
            f"{API}{kind.prefix}/",
            f"{API}{kind.prefix}/{{strategy_id}}",
            "read",
            strategy_read(kind),
        )
        for kind in (STRATEGIES, CHARTINK)
    ),
    LaneRoute("POST", f"{API}/orders/context", f"{API}/orders/context", "write", order_context),
    LaneRoute(
        "POST", f"{API}/orders/context/batch", f"{API}/orders/context/batch", "write", order_basket
    ),
    LaneRoute(
        "POST", f"{API}/orders/record", f"{API}/orders/record", "write", order_record, status=201
    ),
    *(
        LaneRoute("POST", f"{API}{path}", f"{API}{path}", "write", handle, status=201)
        for path, handle in [
            (
                "/order-logs",
                log_write(Batch(ApiLogCreate), lambda w: w.order_logs, "created_at", "ids"),
            ),
            (
                "/analyzer-logs",
                log_write(Batch(ApiLogCreate), lambda w: w.analyzer_logs, "created_at", "ids"),
            ),
            (
                "/traffic/logs",
                log_write(Batch(TrafficLogCreate), lambda w: w.traffic_logs, "timestamp", "count"),
            ),
            (
                "/latency",
                log_write(Batch(LatencyCreate), lambda w: w.latency, "timestamp", "count"),
            ),
        ]
    ),
)


class FastLane:
    """Outermost ASGI layer of the app: a lane route's request is answered here when its handler
    can; every other request, and every one it cannot, goes to `app` untouched."""

    def __init__(
        self,
        app: ASGIApp,
        app_state: State,
        *,
        metrics: Metrics,
        authenticator: TokenAuthenticator,
        max_body: int,
        routes: tuple[LaneRoute, ...] = ROUTES,
    ) -> None:
        self.app = app
        self._app_state = app_state
        self._metrics = metrics
        self._authenticator = authenticator
        self._max_body = max_body
        self._exact = {(r.method, r.path): r for r in routes if not r.parameterised}
        self._prefixed = [r for r in routes if r.parameterised]

    def _match(self, method: str, path: str) -> tuple[LaneRoute, str] | None:
        route = self._exact.get((method, path))
        if route is not None:
            return route, ""
        for route in self._prefixed:
            if route.method == method and path.startswith(route.path):
                tail = path[len(route.path) :]
                if tail and "/" not in tail:
                    return route, tail
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path: str = scope["path"]
        query: bytes = scope["query_string"]
        matched = self._match(scope["method"], path)
        state: AppState | None = getattr(self._app_state, "store", None)
        if matched is None or state is None or "\x00" in path or b"%00" in query:
            await self.app(scope, receive, send)
            return
        route, tail = matched
        headers = dict(scope["headers"])
        principal = None
        if route.scope is not None:
            principal = self._authenticator.authenticate(headers.get(b"authorization"))
            if (
                principal is None
                or not principal.has(route.scope)
                or not state.ready
                or b"idempotency-key" in headers  # stored answers are the full app's
            ):
                await self.app(scope, receive, send)
                return
        body: bytes | None = None
        received: list[Message] = []
        if route.method == "POST":
            body, received = await self._body(headers, receive)
            if body is None:
                await self.app(scope, _replaying(received, receive), send)
                return
        request_id, echo = request_id_of(headers)
        token = request_id_var.set(request_id)
        try:
            try:
                answer = await route.handle(state, principal, query, tail, body)
            except Exception as error:  # answered the one way errors are (service/errors.py)
                failed = failure_response(error)
                failed.raw_headers.append(echo)
                await failed(scope, receive, send)
                served(self._metrics, route.template, scope, failed.status_code, started)
                return
            if answer is None:  # not this lane's to answer: the full app does it, and counts it
                await self.app(scope, _replaying(received, receive), send)
                return
            headers_out = [
                (b"content-length", str(len(answer)).encode()),
                (b"content-type", b"application/json"),
                echo,
            ]
            await send(
                {"type": "http.response.start", "status": route.status, "headers": headers_out}
            )
            await send({"type": "http.response.body", "body": answer})
            served(self._metrics, route.template, scope, route.status, started)
        finally:
            request_id_var.reset(token)

    async def _body(
        self, headers: dict[bytes, bytes], receive: Receive
    ) -> tuple[bytes | None, list[Message]]:
        """The whole JSON body within the size limit; None (with what was read) otherwise."""
        received: list[Message] = []
        if not JSON_TYPE.match(headers.get(b"content-type", b"").decode("latin-1")):
            return None, received
        length = headers.get(b"content-length")
        if length is not None and not (length.isdigit() and int(length) <= self._max_body):
            return None, received
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":
                return None, received
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                return None, received
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), received


def _replaying(received: list[Message], receive: Receive) -> Receive:
    """`receive` as if nothing had been read from it yet."""
    pending = iter(received)

    async def replay() -> Message:
        message: Message | None = next(pending, None)
        return message if message is not None else await receive()

    return replay
