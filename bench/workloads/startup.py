"""P8 and P7 as an operator sees them: `python -m service serve` exec'd on a database holding
the 200k-row contract, timed until /health/ready is 200 *and* a token lookup answers the right
row; with WORKERS=1 and WORKERS=2 (where the first worker ready answers; "all workers" waits for
each worker's "Application startup complete" in the log). Then each process's RSS.

The CPU seconds the process tree used by then are reported beside the wall time: start-up is
CPU-bound (imports, building the symbol index), so on a loaded machine the wall time stretches
while the CPU time does not. That is why a start measured under load (5.6 s in the previous
results) and one on a quiet machine (2.5 s in issue 11) differ: see bench/results.md.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time

import httpx

from bench.harness import ROOT, Context, Proc, Result, cpu_seconds, rss_mb, service_command
from bench.hotpaths import ensure_contract, lookups

READY_TARGET_S = 3.0
RSS_TARGET_MB = 250.0
STARTED_LINE = b"Application startup complete"


def _ready_with_lookup(path: str, token: str):  # type: ignore[no-untyped-def]
    async def ready(client: httpx.AsyncClient, base_url: str) -> bool:
        health = await client.get(base_url + "/health/ready", timeout=2)
        if health.status_code != 200:
            return False
        lookup = await client.get(base_url + path, headers=_auth(), timeout=2)
        return lookup.status_code == 200 and lookup.json().get("token") == token

    return ready


def _auth() -> dict[str, str]:
    from bench.harness import TOKEN

    return {"Authorization": f"Bearer {TOKEN}"}


async def _start(ctx: Context, workers: int, path: str, token: str) -> dict[str, float]:
    command, extra = service_command(workers)
    env = {**ctx.env, **extra, "LOG_LEVEL": "INFO"}
    proc = Proc(f"startup-w{workers}", command, env, ready=_ready_with_lookup(path, token))
    try:
        ready_s = await proc.start(poll_s=0.01)
        cpu_s = sum(cpu_seconds(pid) for pid in proc.pids())
        all_s = ready_s
        assert proc.log_path is not None
        while proc.log_path.read_bytes().count(STARTED_LINE) < workers:
            if time.perf_counter() - proc.started_at > 120:
                raise RuntimeError(f"not every worker started; see {proc.log_path}")
            await asyncio.sleep(0.01)
            all_s = time.perf_counter() - proc.started_at
        await asyncio.sleep(0.5)  # let the last worker finish what it does right after start
        rss = [rss_mb(pid) for pid in proc.pids()]
        return {
            "ready": ready_s,
            "all": all_s,
            "cpu": cpu_s,
            "rss_max": max(rss),
            "rss_total": sum(rss),
            "processes": len(rss),
        }
    finally:
        await proc.stop()


async def _imports_alone() -> tuple[float, float]:
    """Wall and CPU seconds of a process that only imports the app: the floor of any start."""
    started = time.perf_counter()
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", "import os, service.main; t = os.times(); print(t.user + t.system)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return time.perf_counter() - started, float(done.stdout.strip())


async def run(ctx: Context) -> list[Result]:
    rows = await ensure_contract(ctx)
    _, path, _ = lookups(rows)[0]
    expected = (await ctx.client.get(path)).json()["token"]
    rounds = 1 if ctx.quick else 2
    runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    for _ in range(rounds):
        for workers in (1, 2):
            runs[workers].append(await _start(ctx, workers, path, expected))
    imports_wall, imports_cpu = await _imports_alone()
    bare = await ctx.proc("bare")
    bare_start = ctx.seeded.get(f"start:{bare.name}")
    results = []
    for workers, measured in runs.items():
        ready = statistics.median(m["ready"] for m in measured)
        every = statistics.median(m["all"] for m in measured)
        cpu = statistics.median(m["cpu"] for m in measured)
        rss_max = max(m["rss_max"] for m in measured)
        rss_total = max(m["rss_total"] for m in measured)
        label = f"WORKERS={workers}"
        results += [
            Result(
                f"{label}: exec to ready + lookup answering (P8)",
                ready,
                "s",
                f"≤ {READY_TARGET_S:g}",
                ready <= READY_TARGET_S,
                note=", ".join(f"{m['ready']:.2f}" for m in measured),
            ),
            Result(f"  {label}: CPU seconds used by then (all processes)", cpu, "s"),
            Result(
                f"  {label}: every worker started",
                every,
                "s",
                f"≤ {READY_TARGET_S:g}",
                every <= READY_TARGET_S,
            ),
            Result(
                f"  {label}: RSS of the largest process (P7)",
                rss_max,
                "MB",
                f"≤ {RSS_TARGET_MB:g}",
                rss_max <= RSS_TARGET_MB,
            ),
            Result(
                f"  {label}: RSS of all {int(measured[0]['processes'])} processes",
                rss_total,
                "MB",
            ),
        ]
    results += [
        Result(
            "imports alone (`import service.main`), wall",
            imports_wall,
            "s",
            note=f"{imports_cpu:.2f} s CPU",
        ),
        Result(
            "bare FastAPI floor: exec to first answer",
            bare_start or 0.0,
            "s",
            note="when the run started it",
        ),
    ]
    return results
