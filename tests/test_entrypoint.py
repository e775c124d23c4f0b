"""The contract's entry point: `uvicorn service.main:app` serves with the environment's settings."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.server import SERVING_YOUNG_THRESHOLD
from tests.support import FULL_TOKEN, PEPPER, SALT, SERVICE_TOKENS, auth


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_uvicorn_serves_service_main_app(database_url: str, tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "API_KEY_PEPPER": PEPPER,
        "FERNET_SALT": SALT,
        "SERVICE_TOKENS": SERVICE_TOKENS,
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "service.main:app", "--port", str(port)],
        cwd=tmp_path,  # no .env there: the settings come from the environment alone
        env={**env, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        ready = None
        while time.monotonic() < deadline:
            try:
                ready = httpx.get(f"{base}/health/ready", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert ready is not None and ready.status_code == 200, ready and ready.text
        settings = httpx.get(f"{base}/api/v1/settings", headers=auth(FULL_TOKEN), timeout=5)
        assert settings.status_code == 200
        assert settings.json()["analyze_mode"] is False
        assert httpx.get(f"{base}/api/v1/settings", timeout=5).status_code == 401
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    # uvicorn's own CLI re-raises the signal once it has shut down cleanly.
    assert server.returncode in (0, -signal.SIGTERM), stderr.decode()
    assert b"Application shutdown complete" in stderr
    assert b"Traceback" not in stderr


def test_the_served_app_collects_young_garbage_at_the_serving_threshold(
    database_url: str, tmp_path: Path
) -> None:
    """`app_from_env` (what `serve` and `service.main:app` build) turns the collector back on
    after the imports with the serving threshold for the youngest generation, and Python's
    thresholds for the two older ones."""
    probe = (
        "import gc; from service.main import app_from_env; from service.server import "
        "pause_collector_for_imports; pause_collector_for_imports(); app_from_env(); "
        "print(gc.isenabled(), *gc.get_threshold())"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={
            **os.environ,
            "DATABASE_URL": database_url,
            "API_KEY_PEPPER": PEPPER,
            "FERNET_SALT": SALT,
            "SERVICE_TOKENS": SERVICE_TOKENS,
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.split() == ["True", str(SERVING_YOUNG_THRESHOLD), "10", "10"]
