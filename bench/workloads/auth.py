"""P3 cold: POST /api/v1/auth/api-keys/verify missing its cache (one indexed read + argon2);
the warm verify is a hot path (workloads/hot.py). Here also the warm verify that decrypts both
broker tokens, and an unknown key (negative cache), each beside the bare FastAPI floor. Cold: sequential requests, each
made to miss the cache by a write that invalidates it (an order-mode change), with 1 user stored
and again with 10,000; plus 10,000-user misses on distinct keys, each verified once. The 10,000
users are inserted directly (COPY), with one precomputed argon2 hash shared by all but the keys
sampled, since 10,000 hashes through the API would take half an hour.
"""

from __future__ import annotations

import json
import secrets
import statistics
import time

import asyncpg

from bench.harness import BARE, Context, Result, versus
from bench.hotpaths import USER, ensure_api_key
from service.config import load_settings
from service.security import Keyring

VERIFY = "/api/v1/auth/api-keys/verify"
USERS = 10_000
SAMPLES = 40


def _body(**fields: object) -> str:
    return json.dumps(fields, separators=(",", ":"))


async def _cold_by_invalidation(ctx: Context, key: str, samples: int) -> list[float]:
    """Verify latencies (ms), each after a write that evicts the key from the cache."""
    timings = []
    for n in range(samples):
        mode = "semi_auto" if n % 2 == 0 else "auto"
        changed = await ctx.client.put(
            f"/api/v1/auth/api-keys/{USER}/order-mode", json={"order_mode": mode}
        )
        changed.raise_for_status()
        started = time.perf_counter()
        response = await ctx.client.post(VERIFY, json={"api_key": key})
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200 and response.json()["order_mode"] == mode
    return timings


async def _cold_distinct(ctx: Context, keys: list[str]) -> list[float]:
    timings = []
    for key in keys:
        started = time.perf_counter()
        response = await ctx.client.post(VERIFY, json={"api_key": key})
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
    return timings


async def _seed(ctx: Context, keyring: Keyring, count: int, sampled: int) -> list[str]:
    """Insert `count` users with API keys; returns the plaintext of `sampled` verifiable keys."""
    keys = [secrets.token_hex(32) for _ in range(count)]
    shared_hash = keyring.passwords.hash(secrets.token_hex(32))
    hashes = [keyring.passwords.hash(key) for key in keys[:sampled]]
    hashes += [shared_hash] * (count - sampled)
    totp_secret = keyring.encrypt("JBSWY3DPEHPK3PXP")
    names = [f"seed{n:05d}" for n in range(count)]
    conn = await asyncpg.connect(ctx.dsn)
    try:
        now = await conn.fetchval("SELECT now()")
        await conn.copy_records_to_table(
            "users",
            columns=[
                "username",
                "email",
                "password_hash",
                "is_admin",
                "totp_secret_encrypted",
                "totp_enabled",
                "totp_required_for_login",
                "totp_required_for_mcp",
                "totp_required_for_password_reset",
                "updated_at",
                "created_at",
            ],
            records=[
                (name, f"{name}@bench.example", shared_hash, False, totp_secret)
                + (False,) * 4
                + (now, now)
                for name in names
            ],
        )
        await conn.copy_records_to_table(
            "api_keys",
            columns=[
                "user_id",
                "key_digest",
                "key_hash",
                "key_encrypted",
                "order_mode",
                "updated_at",
                "created_at",
            ],
            records=[
                (name, keyring.pepper.digest(key), key_hash, keyring.encrypt(key), "auto", now, now)
                for name, key, key_hash in zip(names, keys, hashes, strict=True)
            ],
        )
        await conn.execute("ANALYZE users; ANALYZE api_keys")
    finally:
        await conn.close()
    return keys[:sampled]


async def _unseed(ctx: Context) -> None:
    conn = await asyncpg.connect(ctx.dsn)
    try:
        await conn.execute("DELETE FROM users WHERE username LIKE 'seed%'")
    finally:
        await conn.close()


async def run(ctx: Context) -> list[Result]:
    env = ctx.env
    keyring = Keyring(
        load_settings(
            DATABASE_URL=ctx.dsn,
            API_KEY_PEPPER=env["API_KEY_PEPPER"],
            FERNET_SALT=env["FERNET_SALT"],
            SERVICE_TOKENS=env["SERVICE_TOKENS"],
            _env_file=None,
        )
    )
    key = await ensure_api_key(ctx)
    token = {"auth_token": secrets.token_hex(32), "feed_token": secrets.token_hex(16)}
    stored = await ctx.client.put(
        f"/api/v1/auth/broker-tokens/{USER}", json={**token, "broker": "zerodha"}
    )
    stored.raise_for_status()

    bare = await ctx.proc("bare")
    with_tokens = [("POST", VERIFY, _body(api_key=key, include_auth=True, include_feed_token=True))]
    warm_auth, floor_auth = await ctx.paired(with_tokens, BARE, bare)
    unknown_key = [("POST", VERIFY, _body(api_key=secrets.token_hex(32)))]
    unknown, floor_unknown = await ctx.paired(unknown_key, BARE, bare)

    samples = 10 if ctx.quick else SAMPLES
    cold_one = statistics.median(await _cold_by_invalidation(ctx, key, samples))
    sampled = await _seed(ctx, keyring, USERS, samples)
    try:
        cold_many = statistics.median(await _cold_by_invalidation(ctx, key, samples))
        cold_distinct = statistics.median(await _cold_distinct(ctx, sampled))
    finally:
        await _unseed(ctx)

    unknown_result = versus(
        "unknown key (negative cache; 401s expected)", unknown, floor_unknown, "bare FastAPI"
    )
    # wrk counts the 401s as status errors; here they are the answer.
    unknown_result.note = ""
    return [
        versus(
            "warm verify with both broker tokens (unsealed per request)",
            warm_auth,
            floor_auth,
            "bare FastAPI",
        ),
        unknown_result,
        Result("cold verify p50, 1 user", cold_one, "ms", note=f"{samples} sequential misses"),
        Result("cold verify p50, 10,000 users", cold_many, "ms", note="same key, same method"),
        Result(
            "  ÷ 1 user (P3 cold)", cold_many / cold_one, "x", "≤ 1.2", cold_many / cold_one <= 1.2
        ),
        Result(
            "cold verify p50, 10,000 users, distinct keys",
            cold_distinct,
            "ms",
            note=f"{cold_distinct / cold_one:.2f} x 1 user; each of {samples} keys verified once",
        ),
    ]
