"""A live `python -m service serve` in a child process, started from this checkout with its
configuration in environment variables, on a free port."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.faults.cluster import free_port
from tests.support import FULL_TOKEN, PEPPER, SALT, SERVICE_TOKENS, auth

CHECKOUT = Path(__file__).resolve().parents[2]
GRACEFUL_TIMEOUT_S = 30  # uvicorn's timeout_graceful_shutdown in service/__main__.py


class ServiceProcess:
    def __init__(self, database_url: str, **env: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(CHECKOUT),
            "DATABASE_URL": database_url,
            "API_KEY_PEPPER": PEPPER,
            "FERNET_SALT": SALT,
            "SERVICE_TOKENS": SERVICE_TOKENS,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "LOG_LEVEL": "INFO",
            **env,
        }
        self.env.pop("TEST_DATABASE_URL", None)
        self._output = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve"],
            cwd=CHECKOUT,
            env=self.env,
            stdout=self._output,
            stderr=subprocess.STDOUT,
        )
        return self

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, headers=auth(FULL_TOKEN), **kwargs)

    async def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        async with self.client(timeout=2) as client:
            while time.monotonic() < deadline:
                assert self.process is not None and self.process.poll() is None, self.output()
                try:
                    if (await client.get("/health/ready")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(
            f"the service was not ready within {timeout} s:\n{self.output()}\n"
            f"{await self.diagnose()}"
        )

    async def diagnose(self) -> str:
        """What the database is doing, for a start-up that hangs."""
        url = self.env["DATABASE_URL"]
        if not url.startswith("postgresql"):
            return ""
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine
        from sqlalchemy.pool import NullPool

        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(
                    text(
                        "SELECT pid, application_name, state, wait_event_type, wait_event, "
                        "left(query, 120) FROM pg_stat_activity WHERE datname = current_database()"
                    )
                )
                return "\n".join(str(tuple(row)) for row in rows)
        finally:
            await engine.dispose()

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"still running after {timeout} s:\n{self.output()}")
            await asyncio.sleep(0.05)
        return self.process.returncode

    def output(self) -> str:
        self._output.seek(0)
        return self._output.read().decode(errors="replace")

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self._output.close()
