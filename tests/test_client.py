"""The Python client (client/, `algoways_store_client`) against the app, through ASGITransport:
typed results with the values the API holds, each problem as its typed exception, retries only
where repeating is safe, and a drift check against the served OpenAPI document."""

from __future__ import annotations

import copy
import importlib.util
import inspect
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from algoways_store_client import (
    OPERATIONS,
    ApiKeyUnknown,
    BrokerTokenMissing,
    BrokerTokenRevoked,
    Conflict,
    Forbidden,
    NotFound,
    RetryPolicy,
    StoreClient,
    StoreError,
    SymbolUnknown,
    Unauthorized,
    Unavailable,
    ValidationFailed,
    models,
)
from algoways_store_client.errors import parse_retry_after
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import ClientFactory
from tests.contract import encode, row
from tests.support import FULL_TOKEN, RO_TOKEN, RW_TOKEN, add_users

ROWS = [
    row("RELIANCE", "NSE", brsymbol="RELIANCE-EQ", token="2885", name="RELIANCE INDUSTRIES"),
    row("NIFTY28NOV2424000CE", "NFO", brsymbol="NIFTY24NOV24000CE", name="NIFTY", token="43512",
        expiry="28-NOV-24", strike=24000.0, lotsize=25, instrumenttype="CE", brexchange="NFO"),
]  # fmt: skip
BROKER = {"auth_token": "broker-auth-1", "feed_token": "broker-feed-1", "broker": "zerodha"}
LOG = {"api_type": "placeorder", "request_data": {"symbol": "RELIANCE"}, "response_data": {"ok": 1}}
LATENCY = {"order_id": "o-1", "broker": "zerodha", "symbol": "RELIANCE", "total_latency_ms": 48.25}

StoreFactory = Callable[..., Any]


class Flaky(httpx.AsyncBaseTransport):
    """Fails the first `failures` attempts (a 503 problem with Retry-After, or a refused
    connection) without reaching the app, then passes to it; records every attempt."""

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        failures: int,
        kind: str = "503",
        retry_after: str = "0",
    ):
        self.inner = inner
        self.retry_after = retry_after
        self.failures = failures
        self.kind = kind
        self.attempts: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts.append(request)
        if len(self.attempts) <= self.failures:
            if self.kind == "connect":
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(
                503,
                headers={
                    "Retry-After": self.retry_after,
                    "Content-Type": "application/problem+json",
                },
                json={
                    "type": "https://algoways.dev/problems/database-unavailable",
                    "title": "Service Unavailable",
                    "status": 503,
                    "detail": "The database is busy.",
                },
            )
        return await self.inner.handle_async_request(request)


@pytest.fixture
async def stores(client_factory: ClientFactory) -> AsyncIterator[StoreFactory]:
    """StoreClients on one app instance: `stores(token, failures=, kind=, **client options)`."""
    app = (await client_factory()).app  # type: ignore[attr-defined]
    opened: list[StoreClient] = []

    def make(
        token: str | None = FULL_TOKEN,
        failures: int = 0,
        kind: str = "503",
        retry_after: str = "0",
        **options: Any,
    ) -> StoreClient:
        transport: httpx.AsyncBaseTransport = httpx.ASGITransport(app=app)
        if failures or kind != "503":
            transport = Flaky(transport, failures, kind, retry_after)
        options.setdefault("retry", RetryPolicy(attempts=4, backoff=0.001))
        store = StoreClient("http://test", token, transport=transport, **options)
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.aclose()


@pytest.fixture
async def store(stores: StoreFactory) -> StoreClient:
    result: StoreClient = stores()
    return result


async def _arrange(store: StoreClient, db: AsyncEngine, *, broker: bool = True) -> str:
    """Alice with an API key (and a broker token), and the contract; her key."""
    await add_users(db, "alice")
    key = await store.put_api_key("alice")
    if broker:
        await store.put_broker_token("alice", body=BROKER)
    body, headers = encode(ROWS)
    loaded = await store.load_symbols(content=body, content_type=headers["content-type"])
    assert loaded["rows"] == len(ROWS)
    return key.api_key


async def _count(db: AsyncEngine, table: str) -> int:
    async with db.connect() as conn:
        return int(await conn.scalar(text(f"SELECT count(*) FROM {table}")))


class TestTypedResults:
    async def test_orders_context_and_verify(self, store: StoreClient, db: AsyncEngine):
        key = await _arrange(store, db)
        context = await store.orders_context(key, "RELIANCE", "NSE", include_auth=True)
        assert isinstance(context, models.OrderContext)
        assert (context.user_id, context.order_mode, context.broker) == ("alice", "auto", "zerodha")
        assert (context.broker_token, context.analyze_mode) == ("active", False)
        assert (context.auth_token, context.feed_token) == ("broker-auth-1", None)
        assert context.instrument == models.SymbolRead(
            symbol="RELIANCE", brsymbol="RELIANCE-EQ", name="RELIANCE INDUSTRIES", exchange="NSE",
            brexchange="NSE", token="2885", expiry=None, strike=None, lotsize=1,
            instrumenttype="EQ", tick_size=0.05,
        )  # fmt: skip
        verified = await store.verify_api_key(key, include_feed_token=True)
        assert (verified.user_id, verified.broker, verified.feed_token) == (
            "alice",
            "zerodha",
            "broker-feed-1",
        )
        assert verified.auth_token is None

    async def test_orders_context_batch(self, store: StoreClient, db: AsyncEngine):
        key = await _arrange(store, db)
        basket = await store.orders_context_batch(
            key,
            [("NIFTY28NOV2424000CE", "NFO"), models.InstrumentRef(symbol="NOPE", exchange="NSE")],
        )
        assert basket.user_id == "alice"
        first, second = basket.items
        assert first.instrument is not None and first.problem is None
        assert (first.instrument.token, first.instrument.strike, first.instrument.lotsize) == (
            "43512",
            24000.0,
            25,
        )
        assert second.instrument is None and second.problem is not None
        assert (second.problem.status, second.problem.type.rsplit("/", 1)[-1]) == (
            404,
            "symbol-unknown",
        )

    async def test_orders_record_writes_both_rows(self, store: StoreClient, db: AsyncEngine):
        recorded = await store.orders_record(log=LOG, latency=models.LatencyCreate(**LATENCY))
        assert recorded.log_table == "order_logs"
        async with db.connect() as conn:
            log = (await conn.execute(text("SELECT id, api_type FROM order_logs"))).one()
            latency = (await conn.execute(text("SELECT id, order_id FROM order_latency"))).one()
        assert (recorded.log_id, recorded.latency_id) == (log.id, latency.id)
        assert (log.api_type, latency.order_id) == ("placeorder", "o-1")
        analyzed = await store.orders_record(log=LOG, latency=LATENCY, analyze=True)
        assert analyzed.log_table == "analyzer_logs"
        assert (await _count(db, "analyzer_logs"), await _count(db, "order_latency")) == (1, 2)

    async def test_lookups(self, store: StoreClient, db: AsyncEngine):
        await _arrange(store, db)
        mapping = await store.lookup_token("NSE", symbol="RELIANCE")
        assert (mapping.brsymbol, mapping.token, mapping.lotsize) == ("RELIANCE-EQ", "2885", 1)
        assert (await store.lookup_token("NFO", token="43512")).symbol == "NIFTY28NOV2424000CE"
        with pytest.raises(ValueError):
            await store.lookup_token("NSE", symbol="RELIANCE", token="2885")
        results = await store.lookup_tokens(
            [
                {"brsymbol": "NIFTY24NOV24000CE", "exchange": "NFO"},
                {"symbol": "X", "exchange": "NSE"},
            ]
        )
        assert [r.symbol if r else None for r in results.items] == ["NIFTY28NOV2424000CE", None]

    async def test_bans_strategies_settings(self, store: StoreClient, db: AsyncEngine):
        assert (await store.ban_status("10.0.0.9")) == models.BanStatus(banned=False, ban=None)
        await store.create_ban(
            body={"ip_address": "10.0.0.9", "reason": "abuse", "permanent": True}
        )
        status = await store.ban_status("10.0.0.9")
        assert status.banned and status.ban is not None
        assert (status.ban.reason, status.ban.is_permanent) == ("abuse", True)

        await add_users(db, "alice")
        created = await store.create_strategy(
            body={"name": "breakout", "user_id": "alice", "is_intraday": False}
        )
        await store.add_symbols(
            created["id"],
            body=[{"symbol": "RELIANCE", "exchange": "NSE", "quantity": 5, "product_type": "MIS"}],
        )  # fmt: skip
        detail = await store.strategy_by_webhook(created["webhook_id"])
        assert (detail.id, detail.name, detail.user_id) == (created["id"], "breakout", "alice")
        assert [(s.symbol, s.quantity) for s in detail.symbols] == [("RELIANCE", 5)]

        await store.update_settings(body={"analyze_mode": True})
        settings = await store.get_settings()
        assert settings.analyze_mode is True
        assert settings.security.threshold_404 == 100

    async def test_users_keys_and_logs(self, store: StoreClient, db: AsyncEngine):
        user = await store.create_user("bob", "bob@example.com", "a-long-passphrase-1")
        assert (user.username, user.email, user.is_admin) == ("bob", "bob@example.com", False)
        assert (await store.get_user("bob")).id == user.id
        assert [u.username for u in await store.list_users()] == ["bob"]
        key = await store.put_api_key("bob", "k" * 40)
        assert (key.user_id, key.api_key) == ("bob", "k" * 40)
        assert (await store.get_api_key("bob")).api_key == "k" * 40
        await store.delete_api_key("bob")
        with pytest.raises(NotFound):
            await store.get_api_key("bob")
        ids = await store.create_order_logs([LOG, LOG])
        assert len(ids.ids) == 2 and await _count(db, "order_logs") == 2
        assert len((await store.create_analyzer_logs(LOG)).ids) == 1
        assert (await store.create_latency([LATENCY, LATENCY])).count == 2
        assert await _count(db, "order_latency") == 2
        assert (await store.health_live()) == {"status": "ok"}


class TestProblems:
    async def test_order_path_problems(self, store: StoreClient, db: AsyncEngine):
        key = await _arrange(store, db)
        with pytest.raises(ApiKeyUnknown) as unknown:
            await store.orders_context("z" * 64, "RELIANCE", "NSE")
        assert (unknown.value.status, unknown.value.type_suffix) == (401, "api-key-unknown")
        with pytest.raises(SymbolUnknown) as symbol:
            await store.orders_context(key, "NOPE", "NSE")
        assert symbol.value.status == 404 and "NOPE" in symbol.value.detail
        await store.revoke_broker_token("alice")
        with pytest.raises(BrokerTokenRevoked) as revoked:
            await store.orders_context(key, "RELIANCE", "NSE", include_auth=True)
        assert revoked.value.status == 410

    async def test_broker_token_missing(self, store: StoreClient, db: AsyncEngine):
        key = await _arrange(store, db, broker=False)
        with pytest.raises(BrokerTokenMissing) as missing:
            await store.orders_context(key, "RELIANCE", "NSE", include_auth=True)
        assert missing.value.status == 404 and "alice" in missing.value.detail

    async def test_generic_problems(self, stores: StoreFactory, db: AsyncEngine):
        store = stores()
        await store.create_user("bob", "bob@example.com", "a-long-passphrase-1")
        with pytest.raises(Conflict) as conflict:
            await store.create_user("bob", "bob2@example.com", "a-long-passphrase-1")
        assert conflict.value.status == 409
        with pytest.raises(ValidationFailed) as invalid:
            await store.create_user("carol", "not-an-email", "a-long-passphrase-1")
        assert invalid.value.status == 422
        assert any(e["loc"][-1] == "email" for e in invalid.value.errors)
        with pytest.raises(NotFound) as missing:
            await store.get_user("nobody")
        assert type(missing.value) is NotFound and missing.value.type_suffix == "not-found"
        with pytest.raises(Unauthorized) as unauthorized:
            await stores("not-a-token").get_settings()
        assert type(unauthorized.value) is Unauthorized and unauthorized.value.status == 401
        with pytest.raises(Forbidden):
            await stores(RO_TOKEN).create_order_logs(LOG)
        with pytest.raises(Forbidden):
            await stores(RW_TOKEN).orders_context("x" * 64, "RELIANCE", "NSE", include_auth=True)
        assert await _count(db, "users") == 1 and await _count(db, "order_logs") == 0

    async def test_unavailable_with_retry_after(self, stores: StoreFactory):
        store = stores(failures=1, retry=RetryPolicy(attempts=1))
        with pytest.raises(Unavailable) as unavailable:
            await store.get_settings()
        assert (unavailable.value.status, unavailable.value.retry_after) == (503, 0.0)
        assert isinstance(unavailable.value, StoreError)
        assert parse_retry_after("7") == 7.0
        assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
        assert parse_retry_after("soon") is None


class TestRetries:
    @pytest.mark.parametrize("kind", ["503", "connect"])
    async def test_reads_are_retried(self, stores: StoreFactory, db: AsyncEngine, kind: str):
        key = await _arrange(stores(), db)
        store = stores(failures=2, kind=kind)
        context = await store.orders_context(key, "RELIANCE", "NSE")
        assert context.instrument.token == "2885"
        transport: Flaky = store.http._transport  # type: ignore[assignment]
        assert len(transport.attempts) == 3
        assert all("Idempotency-Key" not in r.headers for r in transport.attempts)

    async def test_attempts_are_bounded(self, stores: StoreFactory):
        store = stores(failures=10, retry=RetryPolicy(attempts=3, backoff=0.001))
        with pytest.raises(Unavailable):
            await store.get_settings()
        assert len(store.http._transport.attempts) == 3  # type: ignore[attr-defined]

    async def test_backoff_grows_and_honours_retry_after(self, stores: StoreFactory):
        waits: list[float] = []

        async def sleep(seconds: float) -> None:
            waits.append(seconds)

        policy = RetryPolicy(attempts=5, backoff=0.5, max_backoff=1.5)
        store = stores(failures=4, kind="connect", retry=policy, sleep=sleep)
        await store.get_settings()
        assert len(waits) == 4
        assert all(0 <= w <= c for w, c in zip(waits, [0.5, 1.0, 1.5, 1.5], strict=True)), waits
        waits.clear()
        advised = stores(failures=2, retry_after="2", retry=policy, sleep=sleep)
        assert (await advised.get_settings()).analyze_mode is False
        assert waits == [2.0, 2.0]
        waits.clear()
        capped = stores(failures=1, retry_after="3600", sleep=sleep)
        await capped.get_settings()
        assert waits == [RetryPolicy().max_retry_after]

    async def test_a_write_is_retried_under_one_key(self, stores: StoreFactory, db: AsyncEngine):
        store = stores(failures=2, kind="connect")
        recorded = await store.orders_record(log=LOG, latency=LATENCY)
        attempts = store.http._transport.attempts  # type: ignore[attr-defined]
        keys = {r.headers.get("Idempotency-Key") for r in attempts}
        assert len(attempts) == 3 and len(keys) == 1 and None not in keys
        assert (await _count(db, "order_logs"), await _count(db, "order_latency")) == (1, 1)
        async with db.connect() as conn:
            assert await conn.scalar(text("SELECT id FROM order_logs")) == recorded.log_id
        # The next logical write gets its own key.
        await store.orders_record(log=LOG, latency=LATENCY)
        assert attempts[-1].headers["Idempotency-Key"] not in keys

    async def test_a_callers_key_is_sent_on_every_attempt(self, stores: StoreFactory):
        store = stores(failures=1)
        await store.create_order_logs(LOG, idempotency_key="order-77")
        attempts = store.http._transport.attempts  # type: ignore[attr-defined]
        assert [r.headers["Idempotency-Key"] for r in attempts] == ["order-77", "order-77"]

    async def test_a_repeated_keyed_write_is_written_once(
        self, store: StoreClient, db: AsyncEngine
    ):
        """The server keeps the first answer under the key: a retry that reaches it twice (the
        first answer lost on the way back) writes nothing more."""
        first = await store.create_order_logs(LOG, idempotency_key="order-88")
        again = await store.create_order_logs(LOG, idempotency_key="order-88")
        assert first == again
        assert await _count(db, "order_logs") == 1

    async def test_a_write_without_key_is_not_retried(self, stores: StoreFactory, db: AsyncEngine):
        store = stores(failures=1, auto_idempotency_keys=False)
        with pytest.raises(Unavailable):
            await store.create_order_logs(LOG)
        attempts = store.http._transport.attempts  # type: ignore[attr-defined]
        assert len(attempts) == 1 and "Idempotency-Key" not in attempts[0].headers
        assert await _count(db, "order_logs") == 0
        # PATCH is not retried either; other errors never are.
        patching = stores(failures=1)
        with pytest.raises(Unavailable):
            await patching.update_settings(body={"analyze_mode": True})
        assert len(patching.http._transport.attempts) == 1  # type: ignore[attr-defined]
        conflicting = stores(kind="connect")
        await conflicting.create_user("bob", "bob@example.com", "a-long-passphrase-1")
        with pytest.raises(Conflict):
            await conflicting.create_user("bob", "bob@example.com", "a-long-passphrase-1")
        assert len(conflicting.http._transport.attempts) == 2  # type: ignore[attr-defined]


def _generator() -> Any:
    path = Path(__file__).resolve().parents[1] / "client" / "tools" / "generate_operations.py"
    spec = importlib.util.spec_from_file_location("generate_operations", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _schema_of(document: dict[str, Any], target: str) -> dict[str, Any]:
    if ":" not in target:
        return document["components"]["schemas"][target]
    name, where = target.split(":")
    operation = OPERATIONS[name]
    op = document["paths"][operation.path][operation.method.lower()]
    schema = _resolve(document, op["requestBody"]["content"]["application/json"]["schema"])
    for part in where.split(".")[1:]:
        schema = _resolve(document, schema["properties"][part])
    return schema


def drift(document: dict[str, Any]) -> list[str]:
    """What differs between the client and `document`: operations without a method (or methods
    without an operation), parameters a method lacks, model fields unlike the schema's."""
    found: list[str] = []
    served = {(verb, path) for path, ops in document["paths"].items() for verb in ops}
    table = {(op.method.lower(), op.path) for op in OPERATIONS.values()}
    found += [f"no client method for {v.upper()} {p}" for v, p in sorted(served - table)]
    found += [f"the client calls {v.upper()} {p}, not served" for v, p in sorted(table - served)]
    generator = _generator()
    expected = {n: (v, p, w) for n, v, p, w, _ in generator.operations(document)}
    actual = {n: (op.method, op.path, op.writes) for n, op in OPERATIONS.items()}
    if expected != actual:
        found.append("OPERATIONS differs from generate_operations.py's table: regenerate it")
    for name, verb, path, _, operation in generator.operations(document):
        method = getattr(StoreClient, name, None)
        if not inspect.iscoroutinefunction(method):
            found.append(f"{verb} {path}: no method {name}")
            continue
        accepted = set(inspect.signature(method).parameters)
        for parameter in operation.get("parameters", []):
            pname = parameter["name"]
            # Hand-typed methods may shape their query (e.g. lookup_token's one-of-three keys).
            if parameter["in"] != "path" and name in generator.HAND_TYPED:
                continue
            # A header is a keyword in Python's spelling: Idempotency-Key -> idempotency_key.
            python_name = pname.lower().replace("-", "_")
            if not {pname, pname + "_", python_name} & accepted:
                found.append(f"{name} lacks the parameter {pname}")
    for model, target in models.SCHEMAS.items():
        schema = _schema_of(document, target)
        if set(model.model_fields) != set(schema["properties"]):
            found.append(f"{model.__name__} fields differ from {target}")
        required = {n for n, f in model.model_fields.items() if f.is_required()}
        served_required = set(schema.get("required", []))
        if issubclass(model, models.Request) and required != served_required:
            found.append(f"{model.__name__} required fields differ from {target}")
        if issubclass(model, models.Response) and not required <= served_required:
            found.append(f"{model.__name__} requires fields {target} may omit")
    return found


class TestDrift:
    async def test_client_matches_the_served_document(self, client_factory: ClientFactory):
        document = (await client_factory()).app.openapi()  # type: ignore[attr-defined]
        assert drift(document) == []

    async def test_drift_is_reported(self, client_factory: ClientFactory):
        document = copy.deepcopy((await client_factory()).app.openapi())  # type: ignore[attr-defined]
        document["paths"]["/api/v1/orders/cancel"] = {
            "post": {"operationId": "cancel_order_api_v1_orders_cancel_post"}
        }
        context = document["components"]["schemas"]["OrderContext"]
        context["properties"]["exchange_open"] = {"type": "boolean"}
        context["required"].append("exchange_open")
        document["paths"]["/api/v1/users/{username}"]["get"]["parameters"][0]["name"] = "login"
        assert drift(document) == [
            "no client method for POST /api/v1/orders/cancel",
            "OPERATIONS differs from generate_operations.py's table: regenerate it",
            "get_user lacks the parameter login",
            "POST /api/v1/orders/cancel: no method cancel_order",
            "OrderContext fields differ from OrderContext",
        ]
