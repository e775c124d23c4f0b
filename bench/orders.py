"""Issue 12: one round trip per order. POST /api/v1/orders/context (warm, with the broker token
decrypted) beside the bare FastAPI floor (≥ 0.7 x), and beside the separate calls it replaces,
in the same run: per order, in turn,

1. POST /api/v1/auth/api-keys/verify with include_auth (the key's user and broker token),
2. GET /api/v1/tokens/lookup?symbol=&exchange= (the symbol's broker token and exchange),
3. GET /api/v1/symbols/{exchange}/{symbol} (the rest of the instrument: lot size, expiry …),
4. GET /api/v1/settings (analyze mode).

End to end the context must place an order's lookups at least 3 x faster: compared as orders per
second, the context's requests against the separate calls' requests / 4, both on the service,
floor-style in interleaved rounds. On one connection wrk sends each order's four requests one
after another (sequential per order, as a caller without pipelining does), so there the ratio is
that of the time an order's lookups take; on the run's connections it is the throughput ratio.
The three-call minimum (verify, symbol row, settings) is reported beside it for reference.

Also POST /api/v1/orders/record against the two writes it replaces (an order log, then a latency
row), in orders committed per second.
"""

from __future__ import annotations

import json
import random
import secrets
from urllib.parse import quote, urlencode

from bench.harness import BARE, Context, Load, Result, Spec, versus
from bench.hotpaths import USER, HotPath, check_answers, ensure_api_key, ensure_contract
from tests.contract import Row

CONTEXT_AT_LEAST = 0.7
END_TO_END_AT_LEAST = 3.0
ORDERS = 300
SEED = 12


def _compact(body: object) -> str:
    return json.dumps(body, separators=(",", ":"))


def _separate(key: str, row: Row, *, minimal: bool = False) -> list[Spec]:
    """The calls one order makes without the context, in the order it makes them."""
    symbol, exchange = row["symbol"], row["exchange"]
    calls: list[Spec] = [
        ("POST", "/api/v1/auth/api-keys/verify", _compact({"api_key": key, "include_auth": True}))
    ]
    if not minimal:
        query = urlencode({"symbol": symbol, "exchange": exchange})
        calls.append(("GET", f"/api/v1/tokens/lookup?{query}", ""))
    calls.append(("GET", f"/api/v1/symbols/{quote(exchange, safe='')}/{quote(symbol)}", ""))
    calls.append(("GET", "/api/v1/settings", ""))
    return calls


def _per_order(
    name: str, context: Load, separate: Load, calls: int, *, target: bool = True
) -> Result:
    """The context's orders per second over the separate calls': each separate order is `calls`
    requests."""
    ratio = context.rps / (separate.rps / calls) if separate.rps else 0.0
    result = Result(
        name,
        ratio,
        "x",
        note=f"{context.rps:,.0f} vs {separate.rps / calls:,.0f} orders/s; "
        f"p50 {context.p50_ms:.2f} vs {calls} x {separate.p50_ms:.2f} ms",
        load=context,
        floor=separate,
        comparable=False,
    )
    result.floor_name = f"the {calls} separate calls"
    if target:
        result.target = f"≥ {END_TO_END_AT_LEAST:g} x"
        result.ok = ratio >= END_TO_END_AT_LEAST and not context.errors and not separate.errors
    if context.round_ratios:
        result.note += "; per round " + ", ".join(f"{r * calls:.2f}" for r in context.round_ratios)
    return result


async def _ensure_broker_token(ctx: Context) -> None:
    if "broker_token" not in ctx.seeded:
        token = {"auth_token": secrets.token_hex(32), "feed_token": secrets.token_hex(16)}
        stored = await ctx.client.put(
            f"/api/v1/auth/broker-tokens/{USER}", json={**token, "broker": "zerodha"}
        )
        stored.raise_for_status()
        ctx.seeded["broker_token"] = token


async def _record(ctx: Context) -> list[Result]:
    """orders/record against an order-log POST then a latency POST, in orders written per
    second."""
    rng = random.Random(SEED)
    log = {"api_type": "placeorder", "request_data": {"symbol": "RELIANCE", "quantity": 1},
           "response_data": {"status": "success", "orderid": "1"}}  # fmt: skip
    bodies = []
    for n in range(50):
        latency = {"order_id": f"bench-{n}", "broker": "zerodha", "symbol": "RELIANCE",
                   "rtt_ms": rng.uniform(20, 80), "total_latency_ms": rng.uniform(25, 100),
                   "status": "SUCCESS"}  # fmt: skip
        bodies.append((log, latency))
    record = [
        ("POST", "/api/v1/orders/record", _compact({"log": a, "latency": b})) for a, b in bodies
    ]
    separate: list[Spec] = []
    for a, b in bodies:
        separate += [
            ("POST", "/api/v1/order-logs", _compact(a)),
            ("POST", "/api/v1/latency", _compact(b)),
        ]
    await check_answers(ctx, [HotPath("record", record, 0), HotPath("separate", separate, 0)])
    # Each request is answered once its rows are committed: requests answered are orders written.
    record_load, separate_load = await ctx.paired(record, separate, ctx.service)
    return [
        _per_order(
            "POST /orders/record ÷ order-log + latency POSTs (writes per order, "
            f"{ctx.connections} connections)",
            record_load,
            separate_load,
            2,
            target=False,
        )
    ]


async def run(ctx: Context) -> list[Result]:
    rows = await ensure_contract(ctx)
    key = await ensure_api_key(ctx)
    await _ensure_broker_token(ctx)
    orders = random.Random(SEED).sample(rows, ORDERS)
    context = [
        ("POST", "/api/v1/orders/context", _compact({"api_key": key, "symbol": r["symbol"],
         "exchange": r["exchange"], "include_auth": True}))
        for r in orders
    ]  # fmt: skip
    separate = [spec for r in orders for spec in _separate(key, r)]
    minimal = [spec for r in orders for spec in _separate(key, r, minimal=True)]
    await check_answers(
        ctx,
        [
            HotPath("context", context, CONTEXT_AT_LEAST),
            HotPath("separate", separate, 0),
            HotPath("minimal", minimal, 0),
        ],
    )

    bare = await ctx.proc("bare")
    context_load, floor = await ctx.paired(context, BARE, bare)
    separate_load, separate_floor = await ctx.paired(separate, BARE, bare)
    sequential, sequential_separate = await ctx.paired(
        context, separate, ctx.service, connections=1
    )
    parallel, parallel_separate = await ctx.paired(context, separate, ctx.service)
    beside_minimal, minimal_load = await ctx.paired(context, minimal, ctx.service)
    return [
        versus(
            "POST /orders/context, warm, with the broker token",
            context_load,
            floor,
            "bare FastAPI",
            at_least=CONTEXT_AT_LEAST,
            p99_factor=2.0,
        ),
        versus(
            "the 4 separate calls, in turn (req/s; 4 per order)",
            separate_load,
            separate_floor,
            "bare FastAPI",
        ),
        _per_order(
            "orders/context ÷ the separate calls, end to end, 1 connection (sequential per order)",
            sequential,
            sequential_separate,
            4,
        ),
        _per_order(
            f"orders/context ÷ the separate calls, {ctx.connections} connections",
            parallel,
            parallel_separate,
            4,
        ),
        _per_order(
            f"  for reference: ÷ the 3-call minimum, {ctx.connections} connections",
            beside_minimal,
            minimal_load,
            3,
            target=False,
        ),
        *await _record(ctx),
    ]
