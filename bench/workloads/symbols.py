"""symbols: P1 (load), P4 (search), P7 (memory). The token lookup (P2) is a hot path
(workloads/hot.py); start to ready (P8) is workloads/startup.py.

- P1: a 200k-row CSV replace through PUT /api/v1/symbols against `psql \\copy` of the same file
  into a scratch table with the same indexes (`LIKE symbols INCLUDING ALL`), in the same run.
- P4: 2-3-term searches rotating over realistic queries (underlying + strike + CE/PE, + FUT,
  + expiry), at 4 connections and at 1: a latency target, not a saturation one; beside the bare
  floor at the same connections.
- P7: the server's RSS with the contract loaded, after the loads; and the index's own size
  (tracemalloc, built in this process from the same rows).
- Issue 14: a full NIFTY option chain (p99 ≤ 5 ms, at 4 connections and at one) and the
  streamed export of the 200k rows against `psql \\copy (SELECT ...) TO STDOUT` (at most 1.5
  times).
- The same file loaded into SQLite, in this process (the app on a temporary database).
"""

from __future__ import annotations

import asyncio
import gc
import random
import shutil
import subprocess
import tempfile
import time
import tracemalloc
from pathlib import Path
from urllib.parse import urlencode

import asyncpg
import httpx

from bench.harness import BARE, WORK, Context, Result, rss_mb, versus
from bench.hotpaths import ROWS, SEED, contract_csv, contract_rows
from service.symbol_index import COLUMNS
from tests.contract import Row

P1_TARGET = 1.5
CSV = {"content-type": "text/csv"}


async def run(ctx: Context) -> list[Result]:
    rows = await contract_rows()
    body = await contract_csv(rows)
    path = WORK / f"contract-{ROWS}-{SEED}.csv"
    results: list[Result] = []
    rss_before = rss_mb(ctx.service.pid)

    # P1: psql \copy into an identically indexed table, then the service's load, twice each.
    copy_s = min([await _psql_copy(ctx.dsn, path) for _ in range(1 if ctx.quick else 2)])
    first = await _put(ctx, body)
    replace = await _put(ctx, body)
    ctx.seeded["contract"] = rows
    results += [
        Result("psql \\copy into an indexed table (best of 2)", copy_s, "s"),
        Result("PUT 200k rows into an empty table", first, "s"),
        Result("PUT 200k rows replacing 200k (P1)", replace, "s"),
        Result(
            "  ÷ psql \\copy",
            replace / copy_s,
            "x",
            f"≤ {P1_TARGET}",
            replace / copy_s <= P1_TARGET,
        ),
    ]
    rss_loaded = rss_mb(ctx.service.pid)
    results += [
        Result("server RSS before the loads", rss_before, "MB"),
        Result("server RSS after two loads (P7)", rss_loaded, "MB", "≤ 250", rss_loaded <= 250),
        Result("index size (tracemalloc)", await asyncio.to_thread(_index_mb, rows), "MB"),
    ]

    # P4: search, 2-3 terms.
    queries = _searches(rows)
    for path_ in queries[:40]:  # the first use of a term computes its block masks
        await ctx.client.get(path_)
    specs = [("GET", p, "") for p in queries]
    bare = await ctx.proc("bare")
    search, floor = await ctx.paired(specs, BARE, bare, connections=4)
    single, single_floor = await ctx.paired(specs, BARE, bare, connections=1)
    results += [
        versus(
            "GET /api/v1/symbols/search, 2-3 terms, 4 connections", search, floor, "bare FastAPI"
        ),
        Result("  p50 (P4)", search.p50_ms, "ms", "≤ 5", search.p50_ms <= 5),
        Result("  p99 (P4)", search.p99_ms, "ms", "≤ 20", search.p99_ms <= 20),
        versus("  one connection", single, single_floor, "bare FastAPI"),
    ]
    cold = await _cold_searches(ctx, rows)
    results.append(Result("  first use of new terms (median of 20)", cold, "ms"))

    # Issue 14: a full NIFTY option chain (p99 ≤ 5 ms), and the export against psql \copy out.
    chains = _chains(rows)
    for path_ in chains:
        (await ctx.client.get(path_)).raise_for_status()  # the first use builds the chain
    chain_specs = [("GET", p, "") for p in chains]
    chain, chain_floor = await ctx.paired(chain_specs, BARE, bare, connections=4)
    # At 4 connections on a 2-core machine, wrk's threads and the server queue for the CPUs:
    # the bare floor's own p99 is then 5-9 ms. One connection shows a chain's own latency.
    chain_one, chain_one_floor = await ctx.paired(chain_specs, BARE, bare, connections=1)
    results += [
        versus(
            "GET /api/v1/symbols/option-chain, NIFTY, 4 connections",
            chain,
            chain_floor,
            "bare FastAPI",
        ),
        Result("  p99", chain.p99_ms, "ms", "≤ 5", chain.p99_ms <= 5),
        versus("  one connection", chain_one, chain_one_floor, "bare FastAPI"),
        Result("  p99, one connection", chain_one.p99_ms, "ms", "≤ 5", chain_one.p99_ms <= 5),
    ]
    copy_out = min([await _psql_copy_out(ctx.dsn) for _ in range(1 if ctx.quick else 2)])
    export = min([await _export(ctx) for _ in range(1 if ctx.quick else 2)])
    results += [
        Result("psql \\copy symbols to stdout (best of 2)", copy_out, "s"),
        Result("GET /api/v1/symbols/export, 200k rows CSV (best of 2)", export, "s"),
        Result("  ÷ psql \\copy out", export / copy_out, "x", "≤ 1.5", export / copy_out <= 1.5),
    ]

    results.append(Result("SQLite: PUT 200k rows replacing 200k", await _sqlite_load(body), "s"))
    return results


def _chains(rows: list[Row]) -> list[str]:
    """Full NIFTY chains, one per expiry of the contract (given explicitly: the bench contract's
    dates may all be past, and the default is the nearest live one)."""
    expiries = sorted(
        {r["expiry"] for r in rows if r["name"] == "NIFTY" and r["instrumenttype"] == "CE"}
    )
    query = {"exchange": "NFO", "underlying": "NIFTY"}
    return [f"/api/v1/symbols/option-chain?{urlencode({**query, 'expiry': e})}" for e in expiries]


async def _export(ctx: Context) -> float:
    started = time.perf_counter()
    size = 0
    async with ctx.client.stream("GET", "/api/v1/symbols/export") as response:
        response.raise_for_status()
        async for chunk in response.aiter_bytes():
            size += len(chunk)
    elapsed = time.perf_counter() - started
    assert size > 0
    return elapsed


async def _psql_copy_out(dsn: str) -> float:
    query = f"SELECT {', '.join(COLUMNS)} FROM symbols"
    command = f"\\copy ({query}) TO STDOUT WITH (FORMAT csv, HEADER true)"
    started = time.perf_counter()
    await asyncio.to_thread(
        subprocess.run, ["psql", dsn, "-qc", command], check=True, stdout=subprocess.DEVNULL
    )
    return time.perf_counter() - started


async def _put(ctx: Context, body: bytes) -> float:
    started = time.perf_counter()
    response = await ctx.client.put("/api/v1/symbols", content=body, headers=CSV)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    assert response.json()["rows"] == ROWS, response.text
    return elapsed


async def _psql_copy(dsn: str, path: Path) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP TABLE IF EXISTS bench_symbols_copy")
        await conn.execute("CREATE TABLE bench_symbols_copy (LIKE symbols INCLUDING ALL)")
        started = time.perf_counter()
        await asyncio.to_thread(
            subprocess.run,
            [
                "psql",
                dsn,
                "-qc",
                f"\\copy bench_symbols_copy FROM '{path}' WITH (FORMAT csv, HEADER true)",
            ],
            check=True,
            capture_output=True,
        )
        elapsed = time.perf_counter() - started
        count = await conn.fetchval("SELECT count(*) FROM bench_symbols_copy")
        assert count == ROWS, count
        await conn.execute("DROP TABLE bench_symbols_copy")
        return elapsed
    finally:
        await conn.close()


def _index_mb(rows: list[Row]) -> float:
    from service.symbol_index import IndexBuilder

    ordered = sorted(
        (tuple(r[c] for c in COLUMNS) for r in rows),
        key=lambda r: (len(r[0]), r[0], r[3]),
    )
    gc.collect()
    tracemalloc.start()
    try:
        builder = IndexBuilder(1, None)
        for i in range(0, len(ordered), 20_000):
            builder.add_rows(ordered[i : i + 20_000])
        index = builder.finish()
        del builder
        gc.collect()
        size, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del index
    return size / 1e6


def _searches(rows: list[Row]) -> list[str]:
    """Realistic 2-3-term queries: what people type to find a derivative."""
    rng = random.Random(SEED)
    options = [r for r in rows if r["instrumenttype"] in ("CE", "PE")]
    futures = [r for r in rows if r["instrumenttype"] == "FUT"]
    queries = []
    for r in rng.sample(options, 40):
        strike = f"{r['strike']:g}"
        queries.append(f"{r['name']} {strike} {r['instrumenttype']}")
        queries.append(f"{r['name']} {strike}")
    for r in rng.sample(futures, 20):
        queries.append(f"{r['name']} FUT")
        day, month, _ = r["expiry"].split("-")
        queries.append(f"{r['name']} {day}{month} {r['instrumenttype']}")
    rng.shuffle(queries)
    return [f"/api/v1/symbols/search?{urlencode({'q': q})}" for q in queries]


async def _cold_searches(ctx: Context, rows: list[Row]) -> float:
    """Latency of searches whose terms were never searched on this snapshot."""
    rng = random.Random(SEED + 1)
    equities = [r for r in rows if r["instrumenttype"] == "EQ"]
    timings = []
    for r in rng.sample(equities, 20):
        started = time.perf_counter()
        response = await ctx.client.get(
            "/api/v1/symbols/search", params={"q": f"{r['symbol']} {r['token']}"}
        )
        timings.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    return sorted(timings)[len(timings) // 2]


async def _sqlite_load(body: bytes) -> float:
    from service.config import load_settings
    from service.main import create_app

    directory = Path(tempfile.mkdtemp(dir=WORK))
    try:
        token = "bench-sqlite-0123456789abcdef"
        settings = load_settings(
            DATABASE_URL=f"sqlite+aiosqlite:///{directory / 'bench.db'}",
            API_KEY_PEPPER="bench-pepper-0123456789-abcdefghijklmnopqrstuvwxyz",
            FERNET_SALT="00112233445566778899aabbccddeeff",
            SERVICE_TOKENS=f"bench:{token}:read+write",
            LOG_LEVEL="WARNING",
            _env_file=None,
        )
        app = create_app(settings)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://sqlite",
                headers={"Authorization": f"Bearer {token}", **CSV},
                timeout=600,
            ) as client,
        ):
            timings = []
            for _ in range(2):
                started = time.perf_counter()
                response = await client.put("/api/v1/symbols", content=body)
                timings.append(time.perf_counter() - started)
                response.raise_for_status()
        return timings[-1]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
