"""P2, P3 (warm), P9: every memory-served hot path against the bare FastAPI floor, one worker.

Also /health/live, the cost of the middleware stack alone (issue 11 §5: its overhead ≤ 15 % of
the floor, so ≥ 1 / 1.15 of the floor's throughput). Each path runs beside the floor,
floor-path-path-floor, at the same connections, and must answer 2xx before it is timed.
"""

from __future__ import annotations

from bench.harness import BARE, Context, Result, versus
from bench.hotpaths import memory_paths

P99_FACTOR = 2.0
LIVE_AT_LEAST = round(1 / 1.15, 2)


async def run(ctx: Context) -> list[Result]:
    paths = await memory_paths(ctx)
    bare = await ctx.proc("bare")
    results = []
    for path in paths:
        load, floor = await ctx.paired(path.requests, BARE, bare)
        results.append(
            versus(
                path.name,
                load,
                floor,
                "bare FastAPI",
                at_least=path.at_least,
                p99_factor=P99_FACTOR,
            )
        )
    load, floor = await ctx.paired([("GET", "/health/live", "")], BARE, bare)
    results.append(
        versus(
            "GET /health/live (middleware stack, §5)",
            load,
            floor,
            "bare FastAPI",
            at_least=LIVE_AT_LEAST,
        )
    )
    return results
