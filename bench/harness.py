"""The benchmark harness.

`python -m bench [--only NAME ...]` creates a scratch PostgreSQL database, migrates it, serves the
app with uvicorn (one worker, `BENCH_ENDPOINTS=true` mounts the floor endpoints), measures the
floor (a bare endpoint returning a constant, and one indexed query on raw asyncpg) with wrk, then
runs each workload in bench/workloads/ and reports every number beside its target. Ratios are
taken against the floor measured in the same run; absolute numbers drift between machines.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import pkgutil
import platform
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work"
TOKEN = "bench-" + secrets.token_hex(16)
PEPPER = secrets.token_urlsafe(48)
SALT = secrets.token_hex(16)

_LUA = r"""
local reqs = {}
local idx = 0
function init(args)
  local spec = io.open(args[1]):read("*a")
  for line in spec:gmatch("[^\n]+") do
    local method, path, body = line:match("^(%S+) (%S+) ?(.*)$")
    local headers = {}
    headers["Authorization"] = "Bearer " .. args[2]
    if body ~= nil and body ~= "" then headers["Content-Type"] = args[3] end
    table.insert(reqs, wrk.format(method, path, headers, body ~= "" and body or nil))
  end
  idx = math.random(#reqs) - 1
end
function request()
  idx = (idx % #reqs) + 1
  return reqs[idx]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "p50": %d, "p90": %d, "p99": %d, "max": %d, "errors": %d, "status_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclass
class Load:
    """What one wrk run measured."""

    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    requests: int

    def brief(self) -> str:
        return f"{self.rps:,.0f} req/s, p50 {self.p50_ms:.2f} ms, p99 {self.p99_ms:.2f} ms" + (
            f", {self.errors} errors" if self.errors else ""
        )


@dataclass
class Result:
    """One reported number: `value unit`, its target in words, and whether it met it."""

    name: str
    value: float
    unit: str
    target: str | None = None
    ok: bool | None = None
    note: str = ""


@dataclass
class Server:
    env: dict[str, str]
    port: int
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 60) -> float:
        """Start uvicorn and wait for /health/ready = 200; returns the seconds it took."""
        WORK.mkdir(parents=True, exist_ok=True)
        self.log_path = WORK / f"server-{self.port}.log"
        log = self.log_path.open("ab")
        started = time.perf_counter()
        # Popen only forks; it does not wait, so it does not block the loop.
        self.process = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "service", "serve"],
            cwd=ROOT,
            env={**os.environ, **self.env, "PORT": str(self.port), "HOST": "127.0.0.1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        async with httpx.AsyncClient() as client:
            while time.perf_counter() - started < timeout:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited; see {self.log_path}")
                try:
                    response = await client.get(self.base_url + "/health/ready", timeout=1)
                    if response.status_code == 200:
                        return time.perf_counter() - started
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.02)
        raise RuntimeError(f"server not ready after {timeout}s; see {self.log_path}")

    async def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.process.wait, 30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None


@dataclass
class Context:
    """What a workload gets: the running server, a client on it, wrk, and the floor."""

    server: Server
    dsn: str
    client: httpx.AsyncClient
    duration: int
    connections: int
    floor: dict[str, Load] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=lambda: {"Authorization": f"Bearer {TOKEN}"})

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def server_pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    async def restart(self, **env: str) -> float:
        """Restart the server (with extra environment); returns seconds from start to ready."""
        await self.server.stop()
        self.server.env.update(env)
        seconds = await self.server.start()
        await self.client.aclose()
        self.client = _client(self.server)
        return seconds

    async def wrk(
        self,
        path: str | None = None,
        *,
        method: str = "GET",
        body: str | bytes | None = None,
        content_type: str = "application/json",
        requests: list[tuple[str, str, str]] | None = None,
        connections: int | None = None,
        duration: int | None = None,
        threads: int = 2,
    ) -> Load:
        """Drive the server with wrk: one request, or `requests` [(method, path, body)] in turn."""
        specs = requests or [(method, path or "/", _text(body))]
        for _, _, spec_body in specs:
            if "\n" in spec_body:
                raise ValueError("bodies must be one line (compact JSON)")
        WORK.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=WORK, suffix=".req", delete=False) as spec:
            spec.write("\n".join(f"{m} {p} {b}".rstrip() for m, p, b in specs) + "\n")
        script = WORK / "driver.lua"
        script.write_text(_LUA)
        conns = connections or self.connections
        command = [
            "wrk",
            f"-t{min(threads, conns)}",
            f"-c{conns}",
            f"-d{duration or self.duration}s",
            "--latency",
            "-s",
            str(script),
            self.base_url,
            "--",
            spec.name,
            TOKEN,
            content_type,
        ]
        result = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True)
        os.unlink(spec.name)
        line = next((x for x in result.stdout.splitlines() if x.startswith("WRKJSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk failed: {shlex.join(command)}\n{result.stdout}{result.stderr}")
        data = json.loads(line.removeprefix("WRKJSON "))
        seconds = data["duration_us"] / 1e6
        return Load(
            rps=data["requests"] / seconds,
            p50_ms=data["p50"] / 1000,
            p90_ms=data["p90"] / 1000,
            p99_ms=data["p99"] / 1000,
            errors=data["errors"] + data["status_errors"],
            requests=data["requests"],
        )


def _text(body: str | bytes | None) -> str:
    if body is None:
        return ""
    return body.decode() if isinstance(body, bytes) else body


def _client(server: Server) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=600
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{mem_kb / 1024 / 1024:.0f} GiB"
    except OSError:
        memory = "?"
    return f"{cpu}, {os.cpu_count()} cores, {memory} RAM, Python {platform.python_version()}"


async def _measure_floor(ctx: Context) -> None:
    await ctx.client.patch("/api/v1/settings", json={"analyze_mode": False})
    ctx.floor["bare"] = await ctx.wrk("/bench/bare")
    ctx.floor["raw_pg"] = await ctx.wrk("/bench/raw-pg?id=1")


def _workloads(only: list[str]) -> list[tuple[str, Any]]:
    names = [m.name for m in pkgutil.iter_modules([str(ROOT / "bench" / "workloads")])]
    chosen = [n for n in names if not only or n in only]
    missing = set(only) - set(names)
    if missing:
        raise SystemExit(
            f"no such workload: {', '.join(sorted(missing))} (have {', '.join(names)})"
        )
    return [(n, importlib.import_module(f"bench.workloads.{n}")) for n in chosen]


def _report(sections: list[tuple[str, list[Result]]], floor: dict[str, Load], command: str) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {_machine()}",
        f"- command: `{command}`",
        "- server: uvicorn, one worker, PostgreSQL on the same machine; load from wrk (2 threads)"
        " on the same machine",
        "",
        "## Floor (same run)",
        "",
    ]
    lines += [f"- `{name}`: {load.brief()}" for name, load in floor.items()]
    for name, results in sections:
        lines += ["", f"## {name}", "", "| measure | value | target | met |", "|---|---|---|---|"]
        for r in results:
            met = {True: "yes", False: "**no**", None: ""}[r.ok]
            value = f"{r.value:,.2f} {r.unit}".strip()
            note = f" ({r.note})" if r.note else ""
            lines.append(f"| {r.name}{note} | {value} | {r.target or ''} | {met} |")
    return "\n".join(lines) + "\n"


async def run(args: argparse.Namespace) -> int:
    admin_url = args.pg_url
    name = f"algoways_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = admin_url.rsplit("/", 1)[0] + "/" + name
    env = {
        "DATABASE_URL": dsn,
        "API_KEY_PEPPER": PEPPER,
        "FERNET_SALT": SALT,
        "SERVICE_TOKENS": f"bench:{TOKEN}:read+write+secrets",
        "BENCH_ENDPOINTS": "true",
        "LOG_LEVEL": "WARNING",
    }
    server = Server(env=env, port=_free_port())
    sections: list[tuple[str, list[Result]]] = []
    try:
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "service", "migrate"],
            cwd=ROOT,
            env={**os.environ, **env},
            check=True,
            capture_output=True,
        )
        await server.start()
        ctx = Context(server, dsn, _client(server), args.duration, args.connections)
        await _measure_floor(ctx)
        print("floor:", {k: v.brief() for k, v in ctx.floor.items()}, flush=True)
        for module_name, module in _workloads(args.only):
            print(f"== {module_name}", flush=True)
            results = await module.run(ctx)
            for r in results:
                flag = {True: "ok", False: "MISSED", None: ""}[r.ok]
                print(
                    f"  {r.name}: {r.value:,.2f} {r.unit}  {r.target or ''} {flag} {r.note}",
                    flush=True,
                )
            sections.append((module_name, results))
        await ctx.client.aclose()
    finally:
        await server.stop()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    command = "python -m bench" + "".join(f" --only {n}" for n in args.only)
    report = _report(sections, ctx.floor, command)
    target = (
        ROOT / "bench" / "results.md"
        if not args.only
        else WORK / f"results-{'-'.join(args.only)}.md"
    )
    WORK.mkdir(parents=True, exist_ok=True)
    target.write_text(report)
    print(f"wrote {target}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", action="append", default=[], help="run only this workload")
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help="an admin URL of the PostgreSQL server to create the scratch database on",
    )
    return asyncio.run(run(parser.parse_args()))
