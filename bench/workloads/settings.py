"""The foundation's workload: GET /api/v1/settings (served from the settings cache)."""

from __future__ import annotations

from bench.harness import Context, Result


async def run(ctx: Context) -> list[Result]:
    load = await ctx.wrk("/api/v1/settings")
    bare = ctx.floor["bare"]
    return [
        Result("GET /api/v1/settings throughput", load.rps, "req/s", note=load.brief()),
        Result("  ÷ bare floor", load.rps / bare.rps, "x"),
        Result("raw-pg floor ÷ bare floor", ctx.floor["raw_pg"].rps / bare.rps, "x"),
    ]
