"""The benchmark harness.

`python -m bench [--only NAME ...] [--quick]` creates a scratch PostgreSQL database, migrates it,
starts the service with `python -m service serve` (as an operator does) and, beside it, the two
floors of DESIGN.md in their own uvicorn processes (bench/floors.py, served by bench/serve.py
with the service's own uvicorn options). Each workload in bench/workloads/ then measures with wrk
and reports every number next to its floor measured right beside it in the same run, as a ratio.
Absolute numbers drift between machines and, on a shared machine, within a run: only the ratios
taken side by side mean something.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import importlib
import json
import os
import platform
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work"
RESULTS = ROOT / "bench" / "results.md"
TOKEN = "bench-" + secrets.token_hex(16)
PEPPER = secrets.token_urlsafe(48)
SALT = secrets.token_hex(16)

# The order a full run takes: the contract load first (the hot paths need the contract), the
# start-up measure last (it starts its own service processes on the loaded database).
WORKLOADS = (
    "symbols", "hot", "routes", "workers", "strategies", "records", "auth", "orders", "startup"
)  # fmt: skip
# Workloads kept outside bench/workloads/.
MODULES = {"orders": "bench.orders"}

# (method, path, body) of one request; wrk sends a list of them in turn.
Spec = tuple[str, str, str]
BARE = [("GET", "/", "")]

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
    """What one wrk run (or several, summed) measured."""

    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    requests: int
    # Workload / floor in each floor-workload-workload-floor round that made this load.
    round_ratios: tuple[float, ...] = ()
    # CPU seconds the serving processes used during the run(s). On a shared machine the wall
    # time a request takes depends on who else runs; the CPU it costs much less so.
    cpu_s: float = 0.0

    @property
    def cpu_us(self) -> float | None:
        """Serving processes' CPU per request, in microseconds (the database's not counted)."""
        return self.cpu_s / self.requests * 1e6 if self.requests and self.cpu_s else None

    @property
    def seconds(self) -> float:
        return self.requests / self.rps if self.rps else 0.0

    def brief(self) -> str:
        return f"{self.rps:,.0f} req/s, p50 {self.p50_ms:.2f} ms, p99 {self.p99_ms:.2f} ms" + (
            f", {self.errors} errors" if self.errors else ""
        )


def combine(loads: list[Load]) -> Load:
    """Several runs as one: requests over total time; of the latencies, the worse run's (a
    percentile cannot be merged exactly, and the worse one is the honest side to err on)."""
    seconds = sum(load.seconds for load in loads)
    return Load(
        rps=sum(load.requests for load in loads) / seconds if seconds else 0.0,
        p50_ms=max(load.p50_ms for load in loads),
        p90_ms=max(load.p90_ms for load in loads),
        p99_ms=max(load.p99_ms for load in loads),
        errors=sum(load.errors for load in loads),
        requests=sum(load.requests for load in loads),
        cpu_s=sum(load.cpu_s for load in loads),
    )


@dataclass
class Result:
    """One reported number, with the wrk load behind it and its floor beside it, if any.

    `ratio` is value / the floor's req/s; `target_ratio` and `p99_factor` make `ok` when given.
    """

    name: str
    value: float
    unit: str
    target: str = ""
    ok: bool | None = None
    note: str = ""
    load: Load | None = None
    floor: Load | None = None
    floor_name: str = ""
    # False where the value is not in the floor's unit (rows/s beside a floor's req/s).
    comparable: bool = True

    @property
    def ratio(self) -> float | None:
        if not self.comparable or self.floor is None or not self.floor.rps:
            return None
        return self.value / self.floor.rps

    @property
    def p99_ratio(self) -> float | None:
        if not self.comparable or self.load is None or self.floor is None:
            return None
        if not self.floor.p99_ms:
            return None
        return self.load.p99_ms / self.floor.p99_ms

    @property
    def cpu_ratio(self) -> float | None:
        """The floor's CPU per request / the workload's: the throughput ratio one fully used
        core would give, whatever else the machine runs."""
        if not self.comparable or self.load is None or self.floor is None:
            return None
        ours, floor = self.load.cpu_us, self.floor.cpu_us
        return floor / ours if ours and floor else None


def versus(
    name: str,
    load: Load,
    floor: Load,
    floor_name: str,
    *,
    at_least: float | None = None,
    p99_factor: float | None = None,
    value: float | None = None,
    unit: str = "req/s",
    note: str = "",
) -> Result:
    """A workload against its floor: the ratio of throughputs, met when it is at least
    `at_least`, the p99 within `p99_factor` x the floor's, and nothing failed."""
    result = Result(
        name, load.rps if value is None else value, unit, note=note, load=load, floor=floor
    )
    result.floor_name = floor_name
    targets, met = [], []
    if at_least is not None:
        targets.append(f"≥ {at_least:g} x")
        met.append((result.ratio or 0) >= at_least)
    if p99_factor is not None:
        targets.append(f"p99 ≤ {p99_factor:g} x floor's")
        met.append((result.p99_ratio or float("inf")) <= p99_factor)
    if targets:
        result.target = "; ".join(targets)
        result.ok = all(met) and not load.errors
    if len(load.round_ratios) > 1:
        spread = ", ".join(f"{r:.2f}" for r in load.round_ratios)
        result.note = (result.note + "; " if result.note else "") + f"per round {spread}"
    if load.errors:
        result.note = (result.note + "; " if result.note else "") + f"{load.errors} errors"
    return result


def _pids_under(root: int) -> list[int]:
    """The process and all its descendants (uvicorn's workers, multiprocessing helpers)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += parents.get(pid, [])
    return found


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and of its children already waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")


Ready = Callable[[httpx.AsyncClient, str], Awaitable[bool]]


async def health_ready(client: httpx.AsyncClient, base_url: str) -> bool:
    response = await client.get(base_url + "/health/ready", timeout=2)
    return response.status_code == 200


async def answers(client: httpx.AsyncClient, base_url: str) -> bool:
    """Any HTTP answer: uvicorn binds its socket only after the app's start-up finished."""
    await client.get(base_url + "/", timeout=2)
    return True


@dataclass
class Proc:
    """One uvicorn process tree (the service, a variant of it, or a floor) on its own port."""

    name: str
    command: list[str]
    env: dict[str, str]
    ready: Ready = health_ready
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    started_at: float = 0.0  # time.perf_counter() at exec

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} is not running"
        return self.process.pid

    def pids(self) -> list[int]:
        return _pids_under(self.pid)

    def cpu_seconds(self) -> float:
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError):  # a helper process that just ended
                total += cpu_seconds(pid)
        return total

    async def start(self, timeout: float = 120, poll_s: float = 0.02) -> float:
        """Exec the command and wait until `ready`; returns the seconds from exec to ready."""
        WORK.mkdir(parents=True, exist_ok=True)
        self.port = self.port or _free_port()
        self.log_path = WORK / f"{self.name}-{self.port}.log"
        log = self.log_path.open("wb")
        env = {**os.environ, **self.env, "PORT": str(self.port), "HOST": "127.0.0.1"}
        async with httpx.AsyncClient() as client:
            started = self.started_at = time.perf_counter()
            # Popen forks and execs without waiting: it does not block the loop.
            self.process = subprocess.Popen(  # noqa: ASYNC220
                self.command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
            while time.perf_counter() - started < timeout:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited; see {self.log_path}")
                try:
                    if await self.ready(client, self.base_url):
                        return time.perf_counter() - started
                except httpx.TransportError:
                    pass
                await asyncio.sleep(poll_s)
        raise RuntimeError(f"{self.name} not ready after {timeout}s; see {self.log_path}")

    async def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.process.wait, 40)
            except subprocess.TimeoutExpired:
                for pid in reversed(self.pids()):
                    os.kill(pid, signal.SIGKILL)
                await asyncio.to_thread(self.process.wait, 10)
        self.process = None


def service_command(workers: int) -> tuple[list[str], dict[str, str]]:
    """How to run the service with `workers` processes: the operator's command and the WORKERS
    setting once the service has it; until then bench/serve.py with the service's options."""
    from service.config import Settings

    env = {"WORKERS": str(workers)}
    if workers == 1 or "WORKERS" in Settings.model_fields:
        return [sys.executable, "-m", "service", "serve"], env
    return [sys.executable, "-m", "bench.serve", "service", "--workers", str(workers)], env


def serve_command(target: str, workers: int) -> list[str]:
    return [sys.executable, "-m", "bench.serve", target, "--workers", str(workers)]


@dataclass
class Context:
    """What a workload gets: the service, the floors, clients, wrk and the run's settings."""

    service: Proc
    dsn: str
    env: dict[str, str]
    client: httpx.AsyncClient
    duration: int
    rounds: int
    connections: int
    quick: bool
    procs: dict[str, Proc] = field(default_factory=dict)
    seeded: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=lambda: {"Authorization": f"Bearer {TOKEN}"})

    @property
    def base_url(self) -> str:
        return self.service.base_url

    async def proc(self, key: str, workers: int = 1) -> Proc:
        """A floor ("bare", "asyncpg"), a service variant ("routes-flat", "routes-nested") or
        the service itself ("service") with `workers` workers: started on first use, kept for
        the rest of the run."""
        name = f"{key}-w{workers}"
        if key == "service" and workers == 1:
            return self.service
        if name not in self.procs:
            env = {**self.env, "WORKERS": str(workers)}
            if key == "service":
                command, extra = service_command(workers)
                proc = Proc(name, command, {**env, **extra})
            elif key in ("bare", "asyncpg"):
                proc = Proc(name, serve_command(key, workers), env, ready=answers)
            else:
                proc = Proc(name, serve_command(key, workers), env)
            seconds = await proc.start()
            self.seeded[f"start:{name}"] = seconds
            self.procs[name] = proc
        return self.procs[name]

    async def stop_proc(self, key: str, workers: int = 1) -> None:
        proc = self.procs.pop(f"{key}-w{workers}", None)
        if proc is not None:
            await proc.stop()

    async def wrk(
        self,
        requests: list[Spec],
        *,
        target: Proc | None = None,
        connections: int | None = None,
        duration: int | None = None,
        content_type: str = "application/json",
    ) -> Load:
        proc = target or self.service
        cpu_before = proc.cpu_seconds()
        load = await wrk(
            proc.base_url,
            requests,
            connections=connections or self.connections,
            duration=duration or self.duration,
            content_type=content_type,
        )
        load.cpu_s = proc.cpu_seconds() - cpu_before
        return load

    async def paired(
        self,
        requests: list[Spec],
        floor_requests: list[Spec],
        floor: Proc,
        *,
        target: Proc | None = None,
        connections: int | None = None,
        before: Callable[[], Awaitable[Any]] | None = None,
        after: Callable[[Load], Awaitable[Any]] | None = None,
    ) -> tuple[Load, Load]:
        """The workload and its floor side by side, in `rounds` of floor-workload-workload-floor
        runs: load drifting on a shared machine falls on both sides alike. `before`/`after`
        wrap each of the workload's runs (to count rows that landed)."""
        ours: list[Load] = []
        floors: list[Load] = []
        ratios = []
        for _ in range(self.rounds):
            for order in ("floor", "ours", "ours", "floor"):
                if order == "floor":
                    floors.append(
                        await self.wrk(floor_requests, target=floor, connections=connections)
                    )
                    continue
                if before is not None:
                    await before()
                load = await self.wrk(requests, target=target, connections=connections)
                if after is not None:
                    await after(load)
                ours.append(load)
            ratios.append(combine(ours[-2:]).rps / (combine(floors[-2:]).rps or 1))
        total = combine(ours)
        total.round_ratios = tuple(ratios)
        return total, combine(floors)

    async def warm(self, requests: list[Spec], target: Proc) -> None:
        """A second of load on a process just started: every worker fills its caches."""
        await self.wrk(requests, target=target, duration=1)


async def wrk(
    base_url: str,
    requests: list[Spec],
    *,
    connections: int,
    duration: int,
    content_type: str = "application/json",
    threads: int = 2,
) -> Load:
    """Drive a server with wrk, sending `requests` in turn from a random start per thread."""
    for _, _, body in requests:
        if "\n" in body:
            raise ValueError("bodies must be one line (compact JSON)")
    WORK.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=WORK, suffix=".req", delete=False) as spec:
        spec.write("\n".join(f"{m} {p} {b}".rstrip() for m, p, b in requests) + "\n")
    script = WORK / "driver.lua"
    script.write_text(_LUA)
    command = [
        "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "-s",
        str(script),
        base_url,
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


def client_for(base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=600
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


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _uvicorn_options(env: dict[str, str]) -> str:
    """The options the service passes to uvicorn.run, as bench/serve.py reads them."""
    probe = subprocess.run(
        [sys.executable, "-c", "from bench.serve import printable_options as o; print(o())"],
        cwd=ROOT,
        env={**os.environ, **env, "PORT": "1"},
        capture_output=True,
        text=True,
    )
    if probe.returncode:
        return probe.stderr.strip().splitlines()[-1]
    options = ast.literal_eval(probe.stdout.strip())
    # Where it listens and what it serves differ per process by design.
    return ", ".join(f"{k}={v!r}" for k, v in options.items() if k not in ("host", "port", "app"))


async def _enough_connections(admin: asyncpg.Connection, workloads: list[tuple[str, Any]]) -> None:
    """Fail before anything runs if a workload would hold more connections at once than the
    server allows (its `CONNECTIONS` says how many): refused connections would read as the
    service's errors (stop 17's WORKERS=2 uncached read: 1,454 of them at max_connections 100)."""
    allowed = int(await admin.fetchval("SHOW max_connections"))
    for name, module in workloads:
        needed = getattr(module, "CONNECTIONS", 0)
        if needed > allowed:
            raise SystemExit(
                f"the {name} workload holds up to {needed} PostgreSQL connections at once and "
                f"the server allows {allowed}: ALTER SYSTEM SET max_connections = {needed + 50}, "
                "restart PostgreSQL, or leave the workload out (--only)"
            )


def _workloads(only: list[str]) -> list[tuple[str, Any]]:
    missing = set(only) - set(WORKLOADS)
    if missing:
        raise SystemExit(
            f"no such workload: {', '.join(sorted(missing))} (have {', '.join(WORKLOADS)})"
        )
    chosen = [n for n in WORKLOADS if not only or n in only]
    return [(n, importlib.import_module(MODULES.get(n, f"bench.workloads.{n}"))) for n in chosen]


def _cell(value: float | None, fmt: str = "{:,.2f}") -> str:
    return "" if value is None else fmt.format(value)


def render(sections: list[tuple[str, list[Result]]], header: list[str], level: int = 3) -> str:
    lines = [*header]
    for name, results in sections:
        lines += [
            "",
            f"{'#' * level} {name}",
            "",
            "| measure | value | p50 ms | p99 ms | floor | floor req/s | floor p99 ms "
            "| ÷ floor | p99 ÷ floor's | CPU µs/req | floor CPU µs/req | floor CPU ÷ CPU "
            "| target | met |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in results:
            met = {True: "yes", False: "**no**", None: ""}[r.ok]
            note = f" ({r.note})" if r.note else ""
            lines.append(
                "| "
                + " | ".join(
                    [
                        f"{r.name}{note}",
                        f"{r.value:,.2f} {r.unit}".strip(),
                        _cell(r.load.p50_ms if r.load else None),
                        _cell(r.load.p99_ms if r.load else None),
                        r.floor_name,
                        _cell(r.floor.rps if r.floor else None, "{:,.0f}"),
                        _cell(r.floor.p99_ms if r.floor else None),
                        _cell(r.ratio, "{:.2f} x"),
                        _cell(r.p99_ratio, "{:.2f} x"),
                        _cell(r.load.cpu_us if r.load else None, "{:,.0f}"),
                        _cell(r.floor.cpu_us if r.floor else None, "{:,.0f}"),
                        _cell(r.cpu_ratio, "{:.2f} x"),
                        r.target,
                        met,
                    ]
                )
                + " |"
            )
    return "\n".join(lines) + "\n"


def _print(result: Result) -> None:
    flag = {True: "ok", False: "MISSED", None: ""}[result.ok]
    ratio = f" = {result.ratio:.2f} x {result.floor_name}" if result.ratio is not None else ""
    p99 = f" (p99 {result.p99_ratio:.2f} x floor's)" if result.p99_ratio is not None else ""
    if result.cpu_ratio is not None:
        p99 += f" [CPU: {result.cpu_ratio:.2f} x]"
    print(
        f"  {result.name}: {result.value:,.2f} {result.unit}{ratio}{p99}"
        f"  {result.target} {flag} {result.note}",
        flush=True,
    )


async def run(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        raise SystemExit("the bench drives load with wrk: install it (apt-get install wrk)")
    admin_url = args.pg_url
    name = f"algoways_bench_{uuid.uuid4().hex[:8]}"
    workloads = _workloads(args.only)
    admin = await asyncpg.connect(admin_url)
    await _enough_connections(admin, workloads)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = admin_url.rsplit("/", 1)[0] + "/" + name
    env = {
        "DATABASE_URL": dsn,
        "API_KEY_PEPPER": PEPPER,
        "FERNET_SALT": SALT,
        "SERVICE_TOKENS": f"bench:{TOKEN}:read+write+secrets",
        "LOG_LEVEL": args.log_level,
    }
    command, extra = service_command(1)
    service = Proc("service-w1", command, {**env, **extra})
    sections: list[tuple[str, list[Result]]] = []
    load_before = _loadavg()
    started = time.perf_counter()
    ctx: Context | None = None
    try:
        # The service's bytecode, as a deployed install has it (pip compiles what it installs;
        # this checkout is an editable install, and PYTHONDONTWRITEBYTECODE may be set): without
        # it every start compiles ~110 modules first, 0.8 s of the start-up measure.
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "compileall", "-q", "service", "migrations"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "service", "migrate"],
            cwd=ROOT,
            env={**os.environ, **env},
            check=True,
            capture_output=True,
        )
        await service.start()
        ctx = Context(
            service,
            dsn,
            env,
            client_for(service.base_url),
            args.duration,
            args.rounds,
            args.connections,
            args.quick,
        )
        for module_name, module in workloads:
            print(f"== {module_name}", flush=True)
            results: list[Result] = await module.run(ctx)
            for result in results:
                _print(result)
            sections.append((module_name, results))
    finally:
        if ctx is not None:
            await ctx.client.aclose()
            for proc in ctx.procs.values():
                await proc.stop()
        await service.stop()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
    header = [
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {time.perf_counter() - started:.0f} s",
        f"- command: `python -m bench{' ' + argv if argv else ''}`",
        f"- machine: {_machine()}; load average {load_before} before the run, {_loadavg()} after",
        f"- wrk: 2 threads, {args.connections} connections unless said; each workload beside its"
        f" floor in {args.rounds} round(s) of floor-workload-workload-floor {args.duration} s runs;"
        f" service LOG_LEVEL {args.log_level}",
        f"- uvicorn options of the service, floors and variants alike: `{_uvicorn_options(env)}`",
    ]
    report = render(sections, header, level=3)
    print(report)
    _write(args, report)
    return 0


def _write(args: argparse.Namespace, report: str) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "results-last.md").write_text(report)
    if args.output:
        Path(args.output).write_text(report)
        print(f"wrote {args.output}")
    elif args.record_before or not (args.only or args.quick):
        block = "before" if args.record_before else "latest"
        record(RESULTS, block, report)
        print(f"wrote the {block} section of {RESULTS}")


def record(path: Path, block: str, report: str) -> None:
    """Replace one marked block of bench/results.md (`latest` or `before`), keeping the rest."""
    start, end = f"<!-- {block}:start -->", f"<!-- {block}:end -->"
    text = path.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{path} has no {start} ... {end} block to write into")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{report}{end}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help=f"run only this workload: {', '.join(WORKLOADS)}",
    )
    parser.add_argument("--quick", action="store_true", help="short runs, fewer samples")
    parser.add_argument("--duration", type=int, default=None, help="seconds of one wrk run")
    parser.add_argument("--rounds", type=int, default=None, help="floor-workload rounds per pair")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--log-level", default="INFO", help="the service's LOG_LEVEL (INFO ships)")
    parser.add_argument(
        "--output",
        help="write the tables here; else a full run updates the latest run in bench/results.md"
        " (runs with --only or --quick only print, and leave bench/.work/results-last.md)",
    )
    parser.add_argument(
        "--record-before",
        action="store_true",
        help="write this run into the 'before' section of bench/results.md",
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help="an admin URL of the PostgreSQL server to create the scratch database on",
    )
    args = parser.parse_args()
    if args.duration is None:
        args.duration = 2 if args.quick else 3
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    return asyncio.run(run(args))
