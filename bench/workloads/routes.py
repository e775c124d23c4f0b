"""P10: a request's cost as routes are added. The hot paths on the service as it is, and on the
service with 100 extra routes after its real ones (bench/extra_routes.py), nested under the
/api/v1 router the way the service mounts its domains, and flat on the app. Each variant is its
own service process on the same database; each pair alternates as-is and variant.
"""

from __future__ import annotations

from bench.extra_routes import LAST_EXTRA_PATH
from bench.harness import Context, Result, versus
from bench.hotpaths import check_answers, memory_paths

WITHIN = 0.95  # within 5 %


async def run(ctx: Context) -> list[Result]:
    paths = await memory_paths(ctx)
    results = []
    for shape in ("nested", "flat"):
        variant = await ctx.proc(f"routes-{shape}")
        extra = await ctx.client.get(variant.base_url + LAST_EXTRA_PATH)
        if extra.status_code != 200:
            results.append(
                Result(
                    f"+100 routes, {shape}",
                    0,
                    "",
                    ok=False,
                    note=f"the last extra route answers {extra.status_code}: not mounted",
                )
            )
            continue
        await check_answers(ctx, paths, variant.base_url)
        for path in paths:
            await ctx.warm(path.requests, variant)
        for path in paths:
            load, as_is = await ctx.paired(
                path.requests, path.requests, ctx.service, target=variant
            )
            results.append(
                versus(
                    f"{path.name}, +100 routes {shape}",
                    load,
                    as_is,
                    "service as is",
                    at_least=WITHIN,
                )
            )
        await ctx.stop_proc(f"routes-{shape}")
    return results
