"""The fuzzing gate: schemathesis against a live server started from this checkout.

    python -m tests.fuzz.run [--backend sqlite|postgresql|both] [--seconds 180] [--seed 1]

For each backend: a fresh database (a new SQLite file, or a new PostgreSQL database on the
server of --postgres-url, dropped afterwards), migrated; `python -m service serve` on a free
port with generated secrets and one all-scopes token; then `st run` with every check and every
phase (stateful included), a fixed seed and a wall-clock budget. The server is stopped and the
database dropped whatever happens. Exit 0 only when every backend that ran passed; the
PostgreSQL leg is skipped when no server answers, unless REQUIRE_POSTGRES is set.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
# Room for start-up, the last shrink and the report once the fuzzing budget is spent.
GRACE_SECONDS = 120


@dataclass
class Outcome:
    backend: str
    verdict: str  # PASSED, FAILED or SKIPPED
    seconds: float = 0.0
    note: str = ""


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    # SIGTERM unwinds like Ctrl-C, so the server is stopped and the database dropped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    report_root = Path(args.report_dir or tempfile.mkdtemp(prefix="algoways-fuzz-"))
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    outcomes = [_run_backend(b, args, report_root / b) for b in backends]
    print(f"\n== fuzzing gate summary (seed {args.seed}, budget {args.seconds} s per backend) ==")
    for o in outcomes:
        print(f"  {o.backend:<11} {o.verdict:<8} {o.seconds:6.0f} s  {o.note}")
    print(f"  reports: {report_root}")
    counts = {v: sum(o.verdict == v for o in outcomes) for v in ("PASSED", "FAILED", "SKIPPED")}
    print(
        f"fuzz: {counts['PASSED']} passed, {counts['FAILED']} failed"
        + (f", {counts['SKIPPED']} skipped" if counts["SKIPPED"] else "")
    )
    return 1 if counts["FAILED"] else 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--seconds", type=int, default=180, help="fuzzing budget per backend")
    parser.add_argument("--seed", type=int, default=1, help="schemathesis seed (reproducible)")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("TEST_DATABASE_URL") or DEFAULT_PG_URL,
        help="a server where a throw-away database may be created",
    )
    parser.add_argument("--report-dir", help="where schemathesis writes its reports")
    # One worker: a run that a seed reproduces, and no concurrent ast.parse in hypothesis, which
    # CPython 3.11.7 can fail with "AST constructor recursion depth mismatch".
    parser.add_argument("--workers", default="1", help="schemathesis workers")
    return parser.parse_args(argv)


def _run_backend(backend: str, args: argparse.Namespace, report_dir: Path) -> Outcome:
    print(f"\n== fuzzing on {backend} ==", flush=True)
    started = time.monotonic()
    if backend == "postgresql" and not _postgres_answers(args.postgres_url):
        if os.environ.get("REQUIRE_POSTGRES"):
            return Outcome(backend, "FAILED", note="PostgreSQL is required but does not answer")
        print("== SKIPPED the PostgreSQL leg: no server answers (set TEST_DATABASE_URL) ==")
        return Outcome(backend, "SKIPPED", note="no PostgreSQL server answers")
    report_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="algoways-fuzz-") as workdir:
        database = (
            _sqlite_database(Path(workdir))
            if backend == "sqlite"
            else _postgres_database(args.postgres_url)
        )
        with database as url, _server(url, Path(workdir), report_dir) as base_url:
            code = _schemathesis(base_url, args, report_dir)
    elapsed = time.monotonic() - started
    verdict = "PASSED" if code == 0 else "FAILED"
    return Outcome(backend, verdict, elapsed, f"st exit {code}")


# --- databases ---------------------------------------------------------------------------------


@contextmanager
def _sqlite_database(workdir: Path) -> Iterator[str]:
    url = f"sqlite+aiosqlite:///{workdir / 'fuzz.db'}"
    _migrate(url, workdir)
    yield url


@contextmanager
def _postgres_database(server_url: str) -> Iterator[str]:
    admin = make_url(server_url).set(drivername="postgresql")
    name = f"algoways_fuzz_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin_dsn = admin.render_as_string(hide_password=False)
    asyncio.run(_admin(admin_dsn, f'CREATE DATABASE "{name}"'))
    try:
        url = admin.set(database=name).render_as_string(hide_password=False)
        _migrate(url, Path(tempfile.gettempdir()))
        yield url
    finally:
        asyncio.run(_admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        print(f"dropped database {name}")


def _postgres_answers(url: str) -> bool:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        asyncio.run(_admin(dsn, "SELECT 1"))
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        print(f"PostgreSQL at {make_url(url).render_as_string()}: {error}")
        return False
    return True


async def _admin(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _migrate(url: str, workdir: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "service", "migrate"],
        env=_service_env(url, port=0),
        cwd=workdir,
        check=True,
        timeout=120,
    )


# --- the server --------------------------------------------------------------------------------

TOKEN = "fuzz-" + secrets.token_urlsafe(24)


def _service_env(database_url: str, port: int) -> dict[str, str]:
    # Nothing from the caller's environment configures the service: only what is set here.
    env = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
    env.update(
        PYTHONPATH=str(ROOT),  # this checkout's service/, not whatever is installed
        DATABASE_URL=database_url,
        API_KEY_PEPPER=secrets.token_urlsafe(48),
        FERNET_SALT=secrets.token_hex(16),
        SERVICE_TOKENS=f"fuzz:{TOKEN}:read+write+secrets",
        HOST="127.0.0.1",
        PORT=str(port),
        LOG_LEVEL="WARNING",  # tracebacks of 500s, not one access line per case
    )
    return env


@contextmanager
def _server(database_url: str, workdir: Path, report_dir: Path) -> Iterator[str]:
    port = _free_port()
    log_path = report_dir / "server.log"
    with log_path.open("w") as log:
        # cwd is an empty directory, so no stray .env is read.
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve"],
            env=_service_env(database_url, port),
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            base_url = f"http://127.0.0.1:{port}"
            _wait_ready(base_url, process)
            print(f"server pid {process.pid} on {base_url} (log: {log_path})", flush=True)
            yield base_url
        finally:
            process.terminate()
            try:
                process.wait(timeout=35)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            print(f"server stopped (exit {process.returncode})")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(base_url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before it was ready")
        with (
            suppress(OSError),
            urllib.request.urlopen(base_url + "/health/ready", timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.3)
    raise RuntimeError("the server was not ready within 60 s")


# --- schemathesis ------------------------------------------------------------------------------


def _schemathesis(base_url: str, args: argparse.Namespace, report_dir: Path) -> int:
    command = [
        str(Path(sys.executable).parent / "st"),
        "--config-file",
        str(ROOT / "schemathesis.toml"),
        "run",
        f"{base_url}/openapi.json",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        # No `--checks all`: every check is on by default, and naming them on the command line
        # would override the per-operation settings of schemathesis.toml.
        "--mode",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-time",
        str(args.seconds),
        "--seed",
        str(args.seed),
        "--workers",
        str(args.workers),
        "--generation-database",
        "none",  # no examples carried over from earlier runs: the seed alone reproduces
        "--report",
        "junit,ndjson",
        "--report-dir",
        str(report_dir),
        "--no-color",
    ]
    printable = " ".join(
        a if not a.startswith("Authorization") else "'Authorization: Bearer …'" for a in command
    )
    print(f"$ {printable}", flush=True)
    try:
        # Run from the report directory: schemathesis keeps its crash cache (for `st replay <id>`)
        # in .schemathesis/ under its working directory, which belongs with this run's reports.
        return subprocess.run(
            command, cwd=report_dir, env=_schemathesis_env(), timeout=args.seconds + GRACE_SECONDS
        ).returncode
    except subprocess.TimeoutExpired:
        print(f"schemathesis did not finish within {args.seconds + GRACE_SECONDS} s")
        return 124


def _schemathesis_env() -> dict[str, str]:
    """The hooks that teach the generator the rules the descriptions state (tests/fuzz/hooks.py),
    importable from the report directory schemathesis runs in."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "SCHEMATHESIS_HOOKS": "tests.fuzz.hooks"}


if __name__ == "__main__":
    sys.exit(main())
