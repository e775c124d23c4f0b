"""Both cores: every hot path with WORKERS=2 against WORKERS=1, in the same run, and the
WORKERS=2 service against floors that also run two workers (the same uvicorn settings).

Until the service has a WORKERS setting, bench/serve.py starts it with `--workers 2` and the
service's own uvicorn options; once it has one, `python -m service serve` with WORKERS=2.
"""

from __future__ import annotations

from bench.floors import POOL_SIZE
from bench.harness import BARE, Context, Result, versus
from bench.hotpaths import check_answers, memory_paths, uncached_read
from service.config import DEFAULT_MAX_OVERFLOW, DEFAULT_POOL_SIZE

# Open at once during the uncached read: both services' pools at their defaults with overflow,
# and listeners (one worker: 32 + 8 + 1; two: 2 x (16 + 8 + 1)), the asyncpg floor with one
# worker and with two (16 + 2 x 16), and the harness's own few.
CONNECTIONS = (
    (DEFAULT_POOL_SIZE + DEFAULT_MAX_OVERFLOW + 1)
    + 2 * (DEFAULT_POOL_SIZE // 2 + DEFAULT_MAX_OVERFLOW + 1)
    + 3 * POOL_SIZE
    + 5
)


async def run(ctx: Context) -> list[Result]:
    paths = await memory_paths(ctx)
    two = await ctx.proc("service", workers=2)
    await check_answers(ctx, paths, two.base_url)
    for path in paths:
        await ctx.warm(path.requests, two)
    bare2 = await ctx.proc("bare", workers=2)
    results = []
    for path in paths:
        load, one = await ctx.paired(path.requests, path.requests, ctx.service, target=two)
        results.append(versus(f"{path.name}, WORKERS=2", load, one, "WORKERS=1"))
        load, floor = await ctx.paired(path.requests, BARE, bare2, target=two)
        results.append(
            versus(
                f"{path.name}, WORKERS=2",
                load,
                floor,
                "bare FastAPI, 2 workers",
                at_least=path.at_least,
                p99_factor=2.0,
            )
        )
    reads, floor_reads = await uncached_read(ctx)
    asyncpg2 = await ctx.proc("asyncpg", workers=2)
    load, one = await ctx.paired(reads, reads, ctx.service, target=two)
    results.append(versus("GET /api/v1/strategies/{id}, WORKERS=2", load, one, "WORKERS=1"))
    load, floor = await ctx.paired(reads, floor_reads, asyncpg2, target=two)
    results.append(
        versus(
            "GET /api/v1/strategies/{id}, WORKERS=2",
            load,
            floor,
            "bare asyncpg, 2 workers",
            at_least=0.5,
        )
    )
    for key in ("service", "bare", "asyncpg"):
        await ctx.stop_proc(key, workers=2)
    return results
