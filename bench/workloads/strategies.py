"""P6: GET /api/v1/strategies/{id}, uncached (one statement), against the bare asyncpg floor
running the same statement (bench/floors.py), which must answer the same strategy first.

Also what the pool does meanwhile, seen from PostgreSQL: the sessions opened on the bench's
database during the service's runs (pg_stat_database.sessions). The floor's pool is fixed and
opened at its start, so every session counted is the service connecting again (issue 11 §4).
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from bench.harness import Context, Load, Result, versus
from bench.hotpaths import uncached_read

P6_AT_LEAST = 0.5
# PostgreSQL publishes a backend's statistics up to a second late.
STATS_DELAY_S = 1.2


def _untimed(strategy: dict[str, Any]) -> dict[str, Any]:
    """The answer without timestamps (both render them, but not necessarily alike)."""
    out = {k: v for k, v in strategy.items() if not k.endswith("_at")}
    out["symbols"] = [{k: v for k, v in s.items() if not k.endswith("_at")} for s in out["symbols"]]
    return out


async def _sessions(conn: asyncpg.Connection) -> int:
    await asyncio.sleep(STATS_DELAY_S)
    value = await conn.fetchval(
        "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
    )
    return int(value)


async def run(ctx: Context) -> list[Result]:
    reads, floor_reads = await uncached_read(ctx)
    floor = await ctx.proc("asyncpg")
    ours = await ctx.client.get(reads[0][1])
    theirs = await ctx.client.get(floor.base_url + floor_reads[0][1])
    if theirs.status_code != 200 or _untimed(theirs.json()) != _untimed(ours.json()):
        raise RuntimeError(f"the asyncpg floor does not answer what the API does: {theirs.text}")

    # After a warm-up, as the measure is meant (steady state): a second of load fills the pool,
    # which a run that starts cold would count as sessions opened.
    await ctx.warm(reads, ctx.service)
    opened = 0
    # One probe connection for the whole measure, so that it opens no session in between.
    probe = await asyncpg.connect(ctx.dsn)

    async def before() -> None:
        nonlocal opened
        opened -= await _sessions(probe)

    async def after(_: Load) -> None:
        nonlocal opened
        opened += await _sessions(probe)

    try:
        load, floor_load = await ctx.paired(reads, floor_reads, floor, before=before, after=after)
    finally:
        await probe.close()
    return [
        versus(
            "GET /api/v1/strategies/{id}, uncached (P6)",
            load,
            floor_load,
            "bare asyncpg",
            at_least=P6_AT_LEAST,
        ),
        Result(
            "  PostgreSQL sessions opened during those runs",
            opened,
            "sessions",
            note=f"over {load.seconds:.0f} s, {load.requests:,} requests; flat is none",
        ),
    ]
