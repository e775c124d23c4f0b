"""The fast lane (service/fastlane.py) against the full app behind it, request by request.

Every request below goes once through the app as served (lane first) and once straight into the
full middleware stack the lane falls back to, on the same instance; the two answers must agree in
status, content type and body. The lane must also really serve the happy paths (else the
comparison proves nothing) and leave everything else to the full app.
"""

from __future__ import annotations

import io
import json
import logging
from datetime import date
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import DatabaseUnavailable
from service.fastlane import FastLane
from service.logs import configure_logging
from tests.contract import generate, put_contract, row
from tests.support import FULL_TOKEN, RO_TOKEN, RW_TOKEN, WO_TOKEN, add_users, auth

LOOKUP = "/api/v1/tokens/lookup"
VERIFY = "/api/v1/auth/api-keys/verify"
BANS = "/api/v1/traffic/bans"
ROWS = [
    row("RELIANCE", "NSE", brsymbol="RELIANCE-EQ", token="2885"),
    row("NIFTY28NOV2424000CE", "NFO", brsymbol="NIFTY24NOV24000CE", name="NIFTY", token="43512",
        expiry="28-NOV-24", strike=24000.0, lotsize=25, instrumenttype="CE"),
    row("ÜNICODE & CO", "NSE", brsymbol="UNI/CO", token="77"),
]  # fmt: skip


class Lanes:
    """One app instance, reached through its lane and past it."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        app: Any = client.app  # type: ignore[attr-defined]
        lane = app.middleware_stack
        assert isinstance(lane, FastLane)
        self.fallbacks: list[str] = []
        full: ASGIApp = lane.app

        async def counted(scope: Scope, receive: Receive, send: Send) -> None:
            self.fallbacks.append(f"{scope['method']} {scope['path']}")
            await full(scope, receive, send)

        async def past_the_lane(scope: Scope, receive: Receive, send: Send) -> None:
            scope["app"] = app  # as Starlette sets it before its middleware stack
            await full(scope, receive, send)

        lane.app = counted
        self.full = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=past_the_lane),
            base_url="http://test",
            headers=dict(client.headers),
        )

    async def same(self, method: str, url: str, **options: Any) -> tuple[httpx.Response, bool]:
        """Both answers, checked equal: (the lane's, whether the lane answered it itself)."""
        before = len(self.fallbacks)
        fast = await self.client.request(method, url, **options)
        laned = len(self.fallbacks) == before
        full = await self.full.request(method, url, **options)
        assert fast.status_code == full.status_code, (url, fast.text, full.text)
        assert fast.headers["content-type"] == full.headers["content-type"]
        assert fast.json() == full.json()
        assert len(fast.headers["x-request-id"]) == 32
        return fast, laned


@pytest.fixture
async def lanes(client: httpx.AsyncClient) -> Lanes:
    assert (await client.get("/health/live")).status_code == 200  # builds the middleware stack
    return Lanes(client)


async def test_token_lookups(client, lanes: Lanes) -> None:
    await put_contract(client, ROWS)
    served = [
        {"exchange": "NSE", "symbol": "RELIANCE"},
        {"exchange": "NFO", "token": "43512"},
        {"exchange": "NSE", "brsymbol": "UNI/CO"},
        {"exchange": "NSE", "symbol": "ÜNICODE & CO"},
    ]
    for params in served:
        response, laned = await lanes.same("GET", LOOKUP, params=params)
        assert response.status_code == 200 and laned, params
    assert (await client.get(LOOKUP, params=served[1])).json()["symbol"] == "NIFTY28NOV2424000CE"
    refused = [
        {"exchange": "NSE", "symbol": "NOPE"},  # 404
        {"exchange": "NSE"},  # none of the three
        {"exchange": "NSE", "symbol": "RELIANCE", "token": "2885"},  # two of them
        {"symbol": "RELIANCE"},
        {"exchange": "", "symbol": "RELIANCE"},
        {"exchange": "NSE", "symbol": "X" * 256},
        {"exchange": "NSE", "symbol": "RELI\x00ANCE"},
        {"exchange": "NSE", "symbol": "RELIANCE", "extra": "ignored"},
        [("exchange", "NSE"), ("symbol", "NOPE"), ("symbol", "RELIANCE")],  # the last counts
    ]
    for params in refused:
        response, laned = await lanes.same("GET", LOOKUP, params=params)
        assert not laned, params
    statuses = [(await client.get(LOOKUP, params=p)).status_code for p in refused]
    assert statuses == [404, 422, 422, 422, 422, 422, 422, 200, 200]


SEARCH = "/api/v1/symbols/search"
CHAIN = "/api/v1/symbols/option-chain"
DERIVATIVES = generate(3000, seed=5, base=date(2026, 11, 26))


async def test_symbol_searches(client, lanes: Lanes) -> None:
    assert (await put_contract(client, DERIVATIVES)).status_code == 200
    served: list[Any] = [
        {"q": "nifty 24000"},
        {"q": "NIFTY", "exchange": "NFO", "instrumenttype": "options", "limit": "5"},
        {"exchange": "NFO", "underlying": "nifty", "strike_min": "23900.5", "strike_max": "24100"},
        {"q": "crudeoil fut", "expiry": "17-dec-26"},
        {"exchange": "MCX"},
        {"q": "   "},
        {},
        {"q": "ZZZZ"},  # nothing matches
    ]
    for params in served:
        response, laned = await lanes.same("GET", SEARCH, params=params)
        assert response.status_code == 200 and laned, params
    nifty = (await client.get(SEARCH, params=served[0])).json()["items"]
    assert nifty and all("NIFTY" in r["symbol"] and "24000" in r["symbol"] for r in nifty)
    assert [r["exchange"] for r in (await client.get(SEARCH, params=served[4])).json()["items"]]
    refused: list[Any] = [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "050"},
        {"limit": "5.0"},
        {"strike_min": "-1"},
        {"strike_min": "1e3"},
        {"strike_max": "inf"},
        {"strike_max": "2e12"},
        {"expiry": "3-DEC-26"},
        {"expiry": "03-DEC-26\n"},
        {"exchange": ""},
        {"underlying": " "},
        {"instrumenttype": "X" * 33},
        {"q": "X" * 257},
        {"q": "NIFTY", "extra": "ignored"},
        [("q", "NIFTY"), ("q", "BANKNIFTY")],
    ]
    for params in refused:
        _, laned = await lanes.same("GET", SEARCH, params=params)
        assert not laned, params


async def test_option_chains(client, lanes: Lanes) -> None:
    client.app.state.store.market_clock = lambda: date(2026, 11, 30)
    assert (await put_contract(client, DERIVATIVES)).status_code == 200
    nifty = {"exchange": "NFO", "underlying": "NIFTY"}
    served: list[Any] = [
        nifty,  # the nearest live expiry, by the pinned clock
        {**nifty, "underlying": "nifty", "expiry": "03-dec-26"},
        {**nifty, "around": "24012.5", "count": "3"},
        {**nifty, "around": "0", "count": "1000"},
        {**nifty, "underlying": "NOPE"},  # 404
        {**nifty, "expiry": "01-JAN-01"},  # 404
    ]
    statuses = []
    for params in served:
        response, laned = await lanes.same("GET", CHAIN, params=params)
        assert laned, params
        statuses.append(response.status_code)
    assert statuses == [200, 200, 200, 200, 404, 404]
    chain = (await client.get(CHAIN, params=served[2])).json()
    assert chain["expiry"] == "03-DEC-26"
    strikes = sorted(
        {r["strike"] for r in DERIVATIVES if r["exchange"] == "NFO" and r["name"] == "NIFTY"
         and r["expiry"] == "03-DEC-26" and r["instrumenttype"] in ("CE", "PE")},
    )  # fmt: skip
    nearest = sorted(sorted(strikes, key=lambda k: (abs(k - 24012.5), k))[:3])
    assert [s["strike"] for s in chain["strikes"]] == nearest
    assert chain["strikes"][nearest.index(24000.0)]["CE"]["symbol"] == "NIFTY03DEC2624000CE"
    client.app.state.store.market_clock = lambda: date(2026, 12, 4)
    later = (await client.get(CHAIN, params=nifty)).json()
    assert later["expiry"] != "03-DEC-26"  # the clock moved past it
    refused: list[Any] = [
        {"exchange": "NFO"},
        {"underlying": "NIFTY"},
        {**nifty, "exchange": ""},
        {**nifty, "count": "0"},
        {**nifty, "count": "1001"},
        {**nifty, "around": "-5"},
        {**nifty, "around": "nan"},
        {**nifty, "expiry": "2026-12-03"},
        {**nifty, "strike": "24000"},
    ]
    for params in refused:
        _, laned = await lanes.same("GET", CHAIN, params=params)
        assert not laned, params


async def test_api_key_verification(client, db, lanes: Lanes) -> None:
    await add_users(db, "alice", "bob")
    key = (await client.put("/api/v1/auth/api-keys/alice", json={})).json()["api_key"]
    bob = (await client.put("/api/v1/auth/api-keys/bob", json={})).json()["api_key"]
    broker = {"auth_token": "auth-1", "feed_token": "feed-1", "broker": "zerodha"}
    assert (await client.put("/api/v1/auth/broker-tokens/alice", json=broker)).status_code < 300
    cold, laned = await lanes.same("POST", VERIFY, json={"api_key": key})
    assert cold.status_code == 200 and not laned  # a cold key is looked up by the route
    cases: list[tuple[dict[str, Any], dict[str, Any], int, bool]] = [
        ({"api_key": key}, {}, 200, True),
        ({"api_key": f" {key}"}, {}, 401, False),  # a secret is taken as given, never trimmed
        ({"api_key": key, "include_auth": True}, {}, 200, True),
        ({"api_key": key, "include_auth": True, "include_feed_token": True}, {}, 200, True),
        ({"api_key": key, "include_auth": True}, auth(RW_TOKEN), 403, False),
        ({"api_key": key}, auth(RO_TOKEN), 403, False),
        ({"api_key": key}, auth(WO_TOKEN), 200, True),
        ({"api_key": "no-such-key"}, {}, 401, False),
        ({"api_key": ""}, {}, 422, False),
        ({"api_key": key, "include_auth": "yes"}, {}, 422, False),
        ({"api_key": key, "extra": 1}, {}, 422, False),
    ]
    for body, headers, status, expect_lane in cases:
        response, laned = await lanes.same("POST", VERIFY, json=body, headers=headers)
        assert (response.status_code, laned) == (status, expect_lane), body
    # A key the route found unknown is known unknown: asked again, the lane answers the 401.
    for body in ({"api_key": "no-such-key"}, {"api_key": "no-such-key", "include_auth": True}):
        response, laned = await lanes.same("POST", VERIFY, json=body)
        assert (response.status_code, laned) == (401, True), body
        assert response.json()["type"].endswith("/api-key-unknown")
    answer = (await client.post(VERIFY, json={"api_key": key, "include_auth": True})).json()
    assert answer == {
        "user_id": "alice",
        "order_mode": "auto",
        "broker": "zerodha",
        "broker_token": "active",
        "auth_token": "auth-1",
    }
    # Bob has no broker token: his plain verification is served, asking for it is the same 404
    # problem from the lane as from the route.
    assert (await lanes.same("POST", VERIFY, json={"api_key": bob}))[0].status_code == 200
    response, laned = await lanes.same("POST", VERIFY, json={"api_key": bob, "include_auth": True})
    assert (response.status_code, laned) == (404, True)
    assert response.json()["type"].endswith("/broker-token-missing")
    # Bodies that are not plain JSON objects go to the route, which says what is wrong.
    for content, headers in [
        (b'{"api_key": NaN}', {"content-type": "application/json"}),
        (b"not json", {"content-type": "application/json"}),
        (f'{{"api_key": "{key}"}}'.encode(), {"content-type": "text/plain"}),
        (b"[]", {"content-type": "application/json"}),
    ]:
        response, laned = await lanes.same("POST", VERIFY, content=content, headers=headers)
        assert response.status_code in (400, 415, 422) and not laned, content
    # A rotated key stops verifying at once, in the lane too.
    assert (await client.put("/api/v1/auth/api-keys/alice", json={})).status_code == 200
    response, laned = await lanes.same("POST", VERIFY, json={"api_key": key})
    assert (response.status_code, laned) == (401, False)
    # ... and a key set again is no longer unknown, in the lane either.
    assert (await client.put("/api/v1/auth/api-keys/bob", json={"api_key": key})).status_code == 200
    response, laned = await lanes.same("POST", VERIFY, json={"api_key": key})
    assert response.status_code == 200 and response.json()["user_id"] == "bob"


async def test_ban_checks(client, lanes: Lanes) -> None:
    assert (await client.post(BANS, json={"ip_address": "203.0.113.7"})).status_code == 201
    temporary = {"ip_address": "2001:db8::1", "duration_hours": 1}
    assert (await client.post(BANS, json=temporary)).status_code == 201
    for ip in ("203.0.113.7", "198.51.100.1", "2001:db8::1"):
        await client.get(f"{BANS}/{ip}")  # fills the cache
        response, laned = await lanes.same("GET", f"{BANS}/{ip}")
        assert response.status_code == 200 and laned, ip
    assert (await client.get(f"{BANS}/203.0.113.7")).json()["ban"]["ip_address"] == "203.0.113.7"
    assert (await client.get(f"{BANS}/198.51.100.1")).json() == {"banned": False, "ban": None}
    # Another spelling of a cached address is the same address.
    response, laned = await lanes.same("GET", f"{BANS}/2001:DB8:0::1")
    assert (response.status_code, response.json()["banned"], laned) == (200, True, True)
    for ip in ("999.1.1.1", "x", "203.0.113.7%00"):
        response, laned = await lanes.same("GET", f"{BANS}/{ip}")
        assert response.status_code == 422 and not laned, ip
    # Lifting a ban is seen at once.
    assert (await client.delete(f"{BANS}/203.0.113.7")).status_code == 204
    assert (await lanes.same("GET", f"{BANS}/203.0.113.7"))[0].json()["banned"] is False


@pytest.mark.parametrize("prefix", ["/api/v1/strategies", "/api/v1/chartink/strategies"])
async def test_webhook_resolution(client, lanes: Lanes, prefix: str) -> None:
    body = {"name": "Momentum", "user_id": "alice", "start_time": "09:15", "end_time": "15:00"}
    body |= {"squareoff_time": "15:15"}
    if prefix == "/api/v1/strategies":
        body |= {"platform": "tradingview", "trading_mode": "LONG"}
    created = (await client.post(prefix, json=body)).json()
    url = f"{prefix}/by-webhook/{created['webhook_id']}"
    first, laned = await lanes.same("GET", url)
    assert first.status_code == 200 and not laned  # read from the database, then cached
    second, laned = await lanes.same("GET", url)
    assert (second.status_code, second.json()["id"], laned) == (200, created["id"], True)
    for webhook_id in ("0" * 36, "0" * 37):
        response, laned = await lanes.same("GET", f"{prefix}/by-webhook/{webhook_id}")
        assert response.status_code in (404, 422) and not laned
    assert (await client.patch(f"{prefix}/{created['id']}", json={"name": "B"})).status_code == 200
    assert (await lanes.same("GET", url))[0].json()["name"] == "B"


TRAFFIC = {"client_ip": "203.0.113.9", "method": "POST", "path": "/x", "status_code": 200}
TRAFFIC |= {"duration_ms": 1.5}
ORDER = {"api_type": "placeorder", "request_data": {"symbol": "RELIANCE"}, "response_data": {}}


async def test_log_writes_are_committed_before_their_201(client, db, lanes: Lanes) -> None:
    for body in (TRAFFIC, [TRAFFIC, {**TRAFFIC, "path": "/y"}]):
        before = len(lanes.fallbacks)
        response = await client.post("/api/v1/traffic/logs", json=body)
        assert len(lanes.fallbacks) == before, "served by the lane"
        assert (response.status_code, response.json()) == (
            201,
            {"count": len(body) if isinstance(body, list) else 1},
        )
    async with db.connect() as conn:
        paths = (await conn.execute(text("SELECT path FROM traffic_logs ORDER BY id"))).scalars()
        assert list(paths) == ["/x", "/x", "/y"]
    response = await client.post("/api/v1/order-logs", json=[ORDER, ORDER])
    assert response.status_code == 201
    ids = response.json()["ids"]
    async with db.connect() as conn:
        stored = (await conn.execute(text("SELECT id FROM order_logs ORDER BY id"))).scalars()
        assert list(stored) == ids and len(ids) == 2
    # What the lane cannot take goes to the route, which refuses it the usual way, writing nothing.
    for body in ({**TRAFFIC, "status_code": 99}, [], {**TRAFFIC, "extra": 1}):
        response, laned = await lanes.same("POST", "/api/v1/traffic/logs", json=body)
        assert response.status_code == 422 and not laned, body
    before = len(lanes.fallbacks)
    keyed = await client.post(
        "/api/v1/latency",
        json={"order_id": "1", "total_latency_ms": 2.0},
        headers={"Idempotency-Key": "k1"},
    )
    assert len(lanes.fallbacks) == before + 1  # keyed writes are the full app's
    assert keyed.status_code == 201
    async with db.connect() as conn:
        count = (await conn.execute(text("SELECT count(*) FROM traffic_logs"))).scalar_one()
        assert count == 3


async def test_a_failed_log_write_is_answered_with_the_usual_problem(
    client, lanes: Lanes, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = client.app.state.store.runtime.writers.traffic_logs  # type: ignore[attr-defined]

    async def unavailable(rows: Any) -> None:
        raise DatabaseUnavailable()

    monkeypatch.setattr(writer, "submit", unavailable)
    response, laned = await lanes.same("POST", "/api/v1/traffic/logs", json=TRAFFIC)
    assert laned  # answered by the lane, not tried again by the full app
    assert response.status_code == 503 and response.headers["retry-after"]
    assert response.json()["type"].endswith("/database-unavailable")


@pytest.mark.parametrize("prefix", ["/api/v1/strategies", "/api/v1/chartink/strategies"])
async def test_strategy_reads(client, lanes: Lanes, prefix: str) -> None:
    body = {"name": "Momentum", "user_id": "alice", "start_time": "09:15", "end_time": "15:00"}
    body |= {"squareoff_time": "15:15"}
    if prefix == "/api/v1/strategies":
        body |= {"platform": "tradingview", "trading_mode": "LONG"}
    created = (await client.post(prefix, json=body)).json()
    mapping = {"exchange": "NSE", "quantity": 1, "product_type": "MIS"}
    mapping["symbol" if prefix == "/api/v1/strategies" else "chartink_symbol"] = "RELIANCE"
    assert (
        await client.post(f"{prefix}/{created['id']}/symbols", json=[mapping])
    ).status_code == 201
    response, laned = await lanes.same("GET", f"{prefix}/{created['id']}")
    assert (response.status_code, laned) == (200, True)
    assert response.json()["symbols"][0]["exchange"] == "NSE"
    # A missing strategy is the route's 404, answered by the lane from the same code.
    response, laned = await lanes.same("GET", f"{prefix}/999")
    assert (response.status_code, laned) == (404, True)
    # Other spellings are the route's to parse (it may take "01" as 1, the lane never guesses).
    for strategy_id in ("0", "01", "-1", "+1", "2147483648", "1.0", "x", "by-webhook"):
        _, laned = await lanes.same("GET", f"{prefix}/{strategy_id}")
        assert not laned, strategy_id
    response, laned = await lanes.same("GET", f"{prefix}/{created['id']}/symbols")
    assert response.status_code in (200, 405) and not laned


async def test_a_database_failure_in_the_lane_is_the_usual_503(
    client, lanes: Lanes, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy import exc as sa_exc

    from service.repositories import strategies as strategies_repo

    async def unreachable(*_: Any) -> bytes:
        raise sa_exc.OperationalError("SELECT", {}, ConnectionRefusedError())

    monkeypatch.setattr(strategies_repo, "get_strategy_json", unreachable)
    response, laned = await lanes.same("GET", "/api/v1/strategies/1")
    assert (response.status_code, laned) == (503, True)
    assert response.json()["type"].endswith("/database-unavailable")
    assert response.headers["retry-after"]


async def test_settings_and_liveness(client, lanes: Lanes) -> None:
    await client.get("/api/v1/settings")
    response, laned = await lanes.same("GET", "/api/v1/settings")
    assert response.status_code == 200 and laned
    response, laned = await lanes.same("GET", "/api/v1/settings", params={"any": "thing"})
    assert response.status_code == 200 and laned
    patch = await client.patch("/api/v1/settings", json={"analyze_mode": True})
    assert patch.status_code == 200
    assert (await lanes.same("GET", "/api/v1/settings"))[0].json()["analyze_mode"] is True
    response, laned = await lanes.same("GET", "/health/live", headers={})
    assert (response.json(), laned) == ({"status": "ok"}, True)
    # Other methods and near paths are the full app's.
    for method, url in [("HEAD", "/health/live"), ("GET", "/api/v1/settings/")]:
        before = len(lanes.fallbacks)
        await client.request(method, url)
        assert len(lanes.fallbacks) == before + 1, url


async def test_no_token_or_a_service_not_ready_is_the_full_apps_to_answer(
    client, lanes: Lanes
) -> None:
    await client.get("/api/v1/settings")
    for headers, status in [({"authorization": "Bearer nope"}, 401), (auth(WO_TOKEN), 403)]:
        response, laned = await lanes.same("GET", "/api/v1/settings", headers=headers)
        assert (response.status_code, laned) == (status, False)
    state = client.app.state.store  # type: ignore[attr-defined]
    state.ready, state.not_ready_reason = False, "testing"
    response, laned = await lanes.same("GET", "/api/v1/settings")
    assert (response.status_code, laned) == (503, False)
    response, laned = await lanes.same("GET", "/health/live")
    assert (response.status_code, laned) == (200, True)


async def test_what_the_lane_serves_is_counted_logged_and_echoes_the_request_id(
    client, lanes: Lanes
) -> None:
    await client.get("/api/v1/settings")
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    writer = configure_logging("INFO", "json", stream)
    try:
        given = await client.get("/api/v1/settings", headers={"X-Request-ID": "order-42"})
    finally:
        root.handlers, level = saved
        root.setLevel(level)
        writer.stop()
    assert given.headers["x-request-id"] == "order-42"
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    [access] = [line for line in lines if line["logger"] == "service.access"]
    assert (access["request_id"], access["status"]) == ("order-42", 200)
    assert access["message"].startswith("GET /api/v1/settings 200")
    metrics = (await client.get("/metrics", headers=auth(FULL_TOKEN))).text
    line = 'algoways_http_requests_total{method="GET",route="/api/v1/settings",status="200"} 2.0'
    assert line in metrics
