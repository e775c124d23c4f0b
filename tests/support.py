"""Helpers shared by the tests: settings for a test app, tokens, and problem assertions."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from service.config import Settings, load_settings

PEPPER = "test-pepper-0123456789-abcdefghijklmnopqrstuvwxyz"
SALT = "00112233445566778899aabbccddeeff"
FULL_TOKEN = "full-token-0123456789abcdef"
RW_TOKEN = "rw-token-0123456789abcdef"
RO_TOKEN = "ro-token-0123456789abcdef"
WO_TOKEN = "wo-token-0123456789abcdef"
SERVICE_TOKENS = (
    f"full:{FULL_TOKEN}:read+write+secrets,rw:{RW_TOKEN}:read+write,ro:{RO_TOKEN}:read,"
    f"wo:{WO_TOKEN}:write"
)

# Set by the Makefile for the PostgreSQL leg; absent means the SQLite leg.
POSTGRES_URL = os.environ.get("TEST_DATABASE_URL") or None
BACKEND = "postgresql" if POSTGRES_URL else "sqlite"


def auth(token: str = FULL_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "DATABASE_URL": database_url,
        "API_KEY_PEPPER": PEPPER,
        "FERNET_SALT": SALT,
        "SERVICE_TOKENS": SERVICE_TOKENS,
        "DB_POOL_TIMEOUT": 3,
        "_env_file": None,
    }
    values.update(overrides)
    settings: Settings = load_settings(**values)
    return settings


def assert_problem(
    response: httpx.Response, status: int, type_suffix: str | None = None
) -> dict[str, Any]:
    """Assert an RFC 9457 problem with `status` (and problem type) and return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["type"].startswith("https://")
    if type_suffix is not None:
        assert body["type"].endswith("/" + type_suffix), body["type"]
    if status == 422:
        assert body["errors"], body
    return body


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 3.0) -> bool:
    """Poll `check` until it holds (for what crosses instances through LISTEN/NOTIFY)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await check():
            return True
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)


async def add_users(db: Any, *names: str) -> None:
    """Users arranged directly (no argon2 cost), for tests about what hangs off them."""
    from sqlalchemy import text

    async with db.begin() as conn:
        for name in names:
            await conn.execute(
                text(
                    "INSERT INTO users (username, email, password_hash, is_admin, "
                    "totp_secret_encrypted, totp_enabled, totp_required_for_login, "
                    "totp_required_for_mcp, totp_required_for_password_reset, updated_at, "
                    "created_at) VALUES (:u, :e, 'x', false, 'x', false, false, false, false, "
                    "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"u": name, "e": f"{name}@example.com"},
            )
