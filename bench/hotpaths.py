"""The hot paths and the data they need, seeded once per run through the API.

A hot path is the set of requests wrk sends for it, each answered 200 by the service; the
memory-served ones (P2, P3 warm, P9) are measured against the bare FastAPI floor, the uncached
read (P6) against the bare asyncpg floor. `seed` is idempotent within a run, so any workload can
ask for it (`--only routes` seeds what it measures).
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
from dataclasses import dataclass
from urllib.parse import urlencode

from bench.harness import WORK, Context, Spec
from tests.contract import Row, generate, write_csv

ROWS = 200_000
SEED = 7
STRATEGIES = 200
SYMBOLS_EACH = 5
USER = "bench-user"
CSV = {"content-type": "text/csv"}


@dataclass(frozen=True)
class HotPath:
    name: str
    requests: list[Spec]
    at_least: float  # x the bare FastAPI floor (DESIGN.md P2, P3, P9)


async def contract_rows() -> list[Row]:
    return await asyncio.to_thread(generate, ROWS, SEED)


async def contract_csv(rows: list[Row]) -> bytes:
    path = WORK / f"contract-{ROWS}-{SEED}.csv"
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(write_csv, path, rows)
    return path.read_bytes()


async def ensure_contract(ctx: Context) -> list[Row]:
    """The 200k-row contract, loaded through PUT /api/v1/symbols unless this run already did."""
    if "contract" not in ctx.seeded:
        rows = await contract_rows()
        response = await ctx.client.put(
            "/api/v1/symbols", content=await contract_csv(rows), headers=CSV
        )
        response.raise_for_status()
        ctx.seeded["contract"] = rows
    rows_: list[Row] = ctx.seeded["contract"]
    return rows_


def lookups(rows: list[Row]) -> list[Spec]:
    """300 lookups rotating over symbol, token and brsymbol."""
    rng = random.Random(SEED)
    out = []
    for n, row in enumerate(rng.sample(rows, 300)):
        key = ("symbol", "token", "brsymbol")[n % 3]
        query = urlencode({key: row[key], "exchange": row["exchange"]})
        out.append(("GET", f"/api/v1/tokens/lookup?{query}", ""))
    return out


async def ensure_api_key(ctx: Context) -> str:
    if "api_key" not in ctx.seeded:
        user = {"username": USER, "email": "bench@example.com", "password": secrets.token_hex(16)}
        (await ctx.client.post("/api/v1/users", json=user)).raise_for_status()
        created = await ctx.client.put(f"/api/v1/auth/api-keys/{USER}", json={})
        created.raise_for_status()
        ctx.seeded["api_key"] = created.json()["api_key"]
    key: str = ctx.seeded["api_key"]
    return key


async def ensure_bans(ctx: Context) -> list[str]:
    if "bans" not in ctx.seeded:
        banned = [f"203.0.113.{i}" for i in range(1, 11)]
        for ip in banned:
            response = await ctx.client.post("/api/v1/traffic/bans", json={"ip_address": ip})
            response.raise_for_status()
        ctx.seeded["bans"] = banned
    bans: list[str] = ctx.seeded["bans"]
    return bans


async def ensure_strategies(ctx: Context) -> list[dict[str, object]]:
    if "strategies" not in ctx.seeded:
        strategies = []
        for n in range(STRATEGIES):
            response = await ctx.client.post(
                "/api/v1/strategies",
                json={
                    "name": f"bench {n}",
                    "user_id": f"user{n % 20}",
                    "start_time": "09:15",
                    "end_time": "15:00",
                    "squareoff_time": "15:15",
                },
            )
            response.raise_for_status()
            strategy = response.json()
            symbols = [
                {
                    "symbol": f"SYM{n}_{i}",
                    "exchange": "NSE",
                    "quantity": i + 1,
                    "product_type": "MIS",
                }
                for i in range(SYMBOLS_EACH)
            ]
            added = await ctx.client.post(
                f"/api/v1/strategies/{strategy['id']}/symbols", json=symbols
            )
            added.raise_for_status()
            strategies.append(strategy)
        ctx.seeded["strategies"] = strategies
    seeded: list[dict[str, object]] = ctx.seeded["strategies"]
    return seeded


def _compact(body: object) -> str:
    return json.dumps(body, separators=(",", ":"))


async def memory_paths(ctx: Context) -> list[HotPath]:
    """Every memory-served hot path, seeded, in the order they are reported."""
    rows = await ensure_contract(ctx)
    key = await ensure_api_key(ctx)
    banned = await ensure_bans(ctx)
    strategies = await ensure_strategies(ctx)
    # Half the checks hit a banned address, half a clean one: both are answered from memory.
    checks = [("GET", f"/api/v1/traffic/bans/{ip}", "") for ip in banned] + [
        ("GET", f"/api/v1/traffic/bans/198.51.100.{i}", "") for i in range(1, 11)
    ]
    paths = [
        HotPath("GET /api/v1/tokens/lookup (P2)", lookups(rows), 0.8),
        HotPath(
            "POST /api/v1/auth/api-keys/verify, warm (P3)",
            [("POST", "/api/v1/auth/api-keys/verify", _compact({"api_key": key}))],
            0.7,
        ),
        HotPath("GET /api/v1/traffic/bans/{ip} (P9)", checks, 0.7),
        HotPath(
            "GET /api/v1/strategies/by-webhook/{id} (P9)",
            [("GET", f"/api/v1/strategies/by-webhook/{s['webhook_id']}", "") for s in strategies],
            0.7,
        ),
        HotPath("GET /api/v1/settings (P9)", [("GET", "/api/v1/settings", "")], 0.7),
    ]
    await check_answers(ctx, paths)
    return paths


async def uncached_read(ctx: Context) -> tuple[list[Spec], list[Spec]]:
    """GET /api/v1/strategies/{id} and the same statement on the asyncpg floor."""
    ids = [s["id"] for s in await ensure_strategies(ctx)]
    return (
        [("GET", f"/api/v1/strategies/{i}", "") for i in ids],
        [("GET", f"/strategies/{i}", "") for i in ids],
    )


async def check_answers(ctx: Context, paths: list[HotPath], base_url: str | None = None) -> None:
    """Every distinct request of every path answers 2xx before it is timed: a fast 4xx measures
    nothing. Made once each, they also fill the caches a memory-served path is answered from:
    a request timed cold is a database read, not the hot path (the by-webhook path's 200
    strategies, 20 of them warmed, put its p99 at 2.5 x the floor's)."""
    for path in paths:
        for method, target, body in dict.fromkeys(path.requests):
            response = await ctx.client.request(
                method,
                (base_url or ctx.base_url) + target,
                content=body or None,
                headers={"content-type": "application/json"} if body else None,
            )
            if not response.is_success:
                raise RuntimeError(f"{path.name}: {method} {target} -> {response.status_code}")
