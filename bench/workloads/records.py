"""Records (P5): log ingestion on PostgreSQL, single rows from 64 clients (group commit) and
1000-row batches; and the ban check that every inbound request of the platform makes.

Rows per second come from counting the table before and after each run, not from response counts:
a request is answered only after its rows are committed, so the count is what actually landed.
"""

from __future__ import annotations

import asyncpg
import orjson

from bench.harness import Context, Load, Result

SINGLE_TARGET = 5_000
BATCH_TARGET = 50_000
BATCH_SIZE = 1000
BATCH_CLIENTS = 4


def _row(i: int) -> dict[str, object]:
    return {
        "client_ip": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
        "method": "POST",
        "path": f"/api/v1/placeorder/{i % 17}",
        "status_code": 200 if i % 10 else 404,
        "duration_ms": 1.5 + i % 40,
        "host": "algoways.example",
        "user_id": f"user{i % 50}",
    }


async def _count(ctx: Context) -> int:
    conn = await asyncpg.connect(ctx.dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM traffic_logs"))
    finally:
        await conn.close()


async def _ingest(ctx: Context, body: bytes, connections: int) -> tuple[float, Load]:
    """(rows committed per second, the wrk load) for posting `body` over `connections`."""
    before = await _count(ctx)
    load = await ctx.wrk("/api/v1/traffic/logs", method="POST", body=body, connections=connections)
    landed = await _count(ctx) - before
    return landed / (load.requests / load.rps), load


async def run(ctx: Context) -> list[Result]:
    # The bare floor again, right beside each measure: on a shared machine the load drifts
    # within one run, and a ratio only means something side by side.
    bare_single = await ctx.wrk("/bench/bare", connections=64)
    single_rate, single = await _ingest(ctx, orjson.dumps(_row(1)), connections=64)
    batch = orjson.dumps([_row(i) for i in range(BATCH_SIZE)])
    batch_rate, batched = await _ingest(ctx, batch, connections=BATCH_CLIENTS)

    banned = [f"203.0.113.{i}" for i in range(1, 11)]
    for ip in banned:
        response = await ctx.client.post("/api/v1/traffic/bans", json={"ip_address": ip})
        response.raise_for_status()
    # Half the checks hit a banned address, half a clean one: both are answered from memory.
    checks = [("GET", f"/api/v1/traffic/bans/{ip}", "") for ip in banned] + [
        ("GET", f"/api/v1/traffic/bans/198.51.100.{i}", "") for i in range(1, 11)
    ]
    bare_check = await ctx.wrk("/bench/bare")
    ban_check = await ctx.wrk(requests=checks)
    bare = ctx.floor["bare"]
    return [
        Result(
            "single rows, 64 clients",
            single_rate,
            "rows/s",
            f">= {SINGLE_TARGET:,}",
            single_rate >= SINGLE_TARGET and not single.errors,
            single.brief(),
        ),
        Result(
            "  ÷ bare floor beside it (64 connections)",
            single_rate / bare_single.rps,
            "x",
            note=bare_single.brief(),
        ),
        Result(
            f"{BATCH_SIZE}-row batches, {BATCH_CLIENTS} clients",
            batch_rate,
            "rows/s",
            f">= {BATCH_TARGET:,}",
            batch_rate >= BATCH_TARGET and not batched.errors,
            batched.brief(),
        ),
        Result("GET /api/v1/traffic/bans/{ip}", ban_check.rps, "req/s", note=ban_check.brief()),
        Result("  ÷ bare floor", ban_check.rps / bare.rps, "x", note=bare.brief()),
        Result(
            "  ÷ bare floor beside it", ban_check.rps / bare_check.rps, "x", note=bare_check.brief()
        ),
    ]
