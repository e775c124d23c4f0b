"""P5: log ingestion on PostgreSQL. Single rows from 64 connections (group commit) against the
bare FastAPI floor at 64 connections; 1000-row batches from 4 connections (≥ 50,000 rows/s),
beside the floor at 4 connections for reference.

Rows per second come from counting the table before and after each run, not from response
counts: a request is answered only after its rows are committed, so the count is what landed.
"""

from __future__ import annotations

import asyncpg
import orjson

from bench.harness import BARE, Context, Load, Result, Spec, versus

SINGLE_CONNECTIONS = 64
SINGLE_AT_LEAST = 0.5
BATCH_TARGET = 50_000
BATCH_SIZE = 1000
BATCH_CONNECTIONS = 4


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


async def _ingest(ctx: Context, body: bytes, connections: int) -> tuple[float, Load, Load]:
    """(rows committed per second, the ingest's load, the floor's) posting `body` beside the
    bare floor."""
    request: list[Spec] = [("POST", "/api/v1/traffic/logs", body.decode())]
    conn = await asyncpg.connect(ctx.dsn)
    landed = 0

    async def count() -> int:
        return int(await conn.fetchval("SELECT count(*) FROM traffic_logs"))

    async def before() -> None:
        nonlocal landed
        landed -= await count()

    async def after(_: Load) -> None:
        nonlocal landed
        landed += await count()

    try:
        bare = await ctx.proc("bare")
        load, floor = await ctx.paired(
            request, BARE, bare, connections=connections, before=before, after=after
        )
    finally:
        await conn.close()
    return landed / load.seconds, load, floor


async def run(ctx: Context) -> list[Result]:
    single_rate, single, single_floor = await _ingest(
        ctx, orjson.dumps(_row(1)), SINGLE_CONNECTIONS
    )
    batch = orjson.dumps([_row(i) for i in range(BATCH_SIZE)])
    batch_rate, batched, batch_floor = await _ingest(ctx, batch, BATCH_CONNECTIONS)
    batches = versus(
        f"{BATCH_SIZE}-row batches, {BATCH_CONNECTIONS} connections",
        batched,
        batch_floor,
        "bare FastAPI",
        value=batch_rate,
        unit="rows/s",
        note=f"{batched.rps:,.1f} req/s; the floor is for reference (req/s)",
    )
    batches.comparable = False
    # Rows per second beside requests per second: neither the ratio nor its rounds mean anything.
    batches.note = f"{batched.rps:,.1f} req/s; the floor is for reference (req/s)"
    batches.target = f"≥ {BATCH_TARGET:,} rows/s"
    batches.ok = batch_rate >= BATCH_TARGET and not batched.errors
    return [
        versus(
            f"single rows, {SINGLE_CONNECTIONS} connections",
            single,
            single_floor,
            f"bare FastAPI, {SINGLE_CONNECTIONS} connections",
            at_least=SINGLE_AT_LEAST,
            value=single_rate,
            unit="rows/s",
        ),
        batches,
    ]
