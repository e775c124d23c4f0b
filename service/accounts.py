"""Credential checks and changes that pay for argon2: the hash or check runs first, in a worker
thread with no transaction open, and the database is touched only briefly around it."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.db import short_transaction
from service.repositories import users as users_repo
from service.security import Keyring, run_argon2


async def hash_secret(keyring: Keyring, secret: str) -> str:
    """The argon2 hash (with the pepper) of a password or API key."""
    return await run_argon2(keyring.passwords.hash, secret)


async def verify_password(
    sessionmaker: async_sessionmaker[AsyncSession], keyring: Keyring, username: str, password: str
) -> bool:
    """Check a password; unknown users take the same path. A stale hash is replaced on success."""
    async with short_transaction(sessionmaker) as session:
        row = await users_repo.password_of(session, username)
    stored = row.password_hash if row is not None else None
    valid, new_hash = await run_argon2(keyring.passwords.verify, password, stored)
    if valid and new_hash is not None and stored is not None:
        async with short_transaction(sessionmaker, write=True) as session:
            await users_repo.replace_password_hash(session, row.id, stored, new_hash)
    return bool(valid)
