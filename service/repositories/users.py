"""Users: accounts, password checks (argon2 + pepper, rehash on success) and TOTP."""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from anyio import CapacityLimiter, to_thread
from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service import totp
from service.db import begin_write
from service.errors import Conflict, NotFound
from service.models.users import User
from service.repositories import api_keys as api_keys_repo
from service.schemas.users import UserCreate, UserUpdate
from service.security import Keyring

T = TypeVar("T")

# Each argon2 computation takes 64 MiB and already runs four lanes: more at once than this only
# adds memory, never throughput. Off the event loop, and out of the thread pool others share.
ARGON2_CONCURRENCY = max(1, min(4, os.cpu_count() or 1))
_argon2_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CapacityLimiter] = (
    weakref.WeakKeyDictionary()
)


async def run_argon2(function: Callable[..., T], *args: object) -> T:
    """Run an argon2 hash or check (or a function made of them) in a worker thread."""
    loop = asyncio.get_running_loop()
    limiter = _argon2_limiters.get(loop)
    if limiter is None:
        limiter = _argon2_limiters[loop] = CapacityLimiter(ARGON2_CONCURRENCY)
    return await to_thread.run_sync(function, *args, limiter=limiter)


@asynccontextmanager
async def short_transaction(
    sessionmaker: async_sessionmaker[AsyncSession], *, write: bool = False
) -> AsyncIterator[AsyncSession]:
    """A transaction of its own, for routes that must not hold one across an argon2 check.

    A request session would keep its connection (and on SQLite the write lock) for the ~0.1 s
    an argon2 check takes; these routes read, check with no connection held, then write briefly.
    """
    async with sessionmaker() as session:
        if write:
            await begin_write(session)
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


def user_not_found(username: str) -> NotFound:
    return NotFound(f"No user named {username!r}.")


async def get_user(session: AsyncSession, username: str, *, lock: bool = False) -> User:
    query = select(User).where(User.username == username)
    if lock:
        query = query.with_for_update()
    user = await session.scalar(query)
    if user is None:
        raise user_not_found(username)
    return user


async def require_user(session: AsyncSession, username: str) -> None:
    """404 unless the user exists (what a broker token, API key or session belongs to)."""
    if await session.scalar(select(User.id).where(User.username == username)) is None:
        raise user_not_found(username)


async def list_users(
    session: AsyncSession, *, is_admin: bool | None = None, email: str | None = None
) -> list[User]:
    query = select(User).order_by(User.username)
    if is_admin is not None:
        query = query.where(User.is_admin == is_admin)
    if email is not None:
        query = query.where(User.email == email.strip().lower())
    return list(await session.scalars(query))


async def _email_taken(session: AsyncSession, email: str, *, other_than: int | None) -> bool:
    query = select(User.id).where(User.email == email)
    if other_than is not None:
        query = query.where(User.id != other_than)
    return await session.scalar(query) is not None


async def create_user(session: AsyncSession, keyring: Keyring, data: UserCreate) -> User:
    """Create a user with a fresh TOTP secret (stored encrypted; TOTP stays off until enabled)."""
    taken = (
        await session.execute(
            select(User.username, User.email).where(
                or_(User.username == data.username, User.email == data.email)
            )
        )
    ).first()
    if taken is not None:
        what = "username" if taken.username == data.username else "email"
        raise Conflict(f"A user with this {what} exists already.")
    password_hash = await run_argon2(keyring.passwords.hash, data.password.get_secret_value())
    user = User(
        username=data.username,
        email=data.email,
        password_hash=password_hash,
        is_admin=data.is_admin,
        totp_secret_encrypted=keyring.encrypt(totp.new_secret()),
    )
    session.add(user)
    await session.flush()
    return user


async def update_user(session: AsyncSession, username: str, data: UserUpdate) -> User:
    user = await get_user(session, username, lock=True)
    changes = data.model_dump(include=data.model_fields_set)
    if "email" in changes and await _email_taken(session, changes["email"], other_than=user.id):
        raise Conflict("A user with this email exists already.")
    for field, value in changes.items():
        setattr(user, field, value)
    await session.flush()
    return user


async def set_password(
    session: AsyncSession, keyring: Keyring, username: str, password: str
) -> None:
    user = await get_user(session, username, lock=True)
    user.password_hash = await run_argon2(keyring.passwords.hash, password)
    await session.flush()


async def delete_user(session: AsyncSession, username: str) -> None:
    """Delete the user; the database cascades to its API key, broker token and sessions."""
    user = await get_user(session, username, lock=True)
    await api_keys_repo.invalidate_user(session, username)
    await session.delete(user)
    await session.flush()


async def verify_password(
    sessionmaker: async_sessionmaker[AsyncSession], keyring: Keyring, username: str, password: str
) -> bool:
    """Check a password; unknown users take the same path. A stale hash is replaced on success."""
    async with short_transaction(sessionmaker) as session:
        row = (
            await session.execute(
                select(User.id, User.password_hash).where(User.username == username)
            )
        ).first()
    stored = row.password_hash if row is not None else None
    valid, new_hash = await run_argon2(keyring.passwords.verify, password, stored)
    if valid and new_hash is not None and row is not None:
        async with short_transaction(sessionmaker, write=True) as session:
            # Only if no one changed the password meanwhile.
            await session.execute(
                update(User)
                .where(User.id == row.id, User.password_hash == stored)
                .values(password_hash=new_hash)
            )
    return valid


async def get_totp(session: AsyncSession, keyring: Keyring, username: str) -> tuple[str, str]:
    """The TOTP secret in plaintext and its provisioning URI."""
    user = await get_user(session, username)
    secret = keyring.decrypt(user.totp_secret_encrypted)
    return secret, totp.provisioning_uri(secret, user.username)


async def verify_totp(session: AsyncSession, keyring: Keyring, username: str, code: str) -> bool:
    """Accept a code of the current step ±1, and never a step at or before the last one accepted.

    The accepted step is claimed with one conditional UPDATE, so two requests racing with the
    same code cannot both succeed.
    """
    user = await get_user(session, username)
    step = totp.matching_step(keyring.decrypt(user.totp_secret_encrypted), code)
    if step is None:
        return False
    claimed = await session.execute(
        update(User)
        .where(
            User.id == user.id,
            or_(User.totp_last_step.is_(None), User.totp_last_step < step),
        )
        .values(totp_last_step=step)
        .execution_options(synchronize_session=False)
    )
    return bool(claimed.rowcount == 1)  # type: ignore[attr-defined]
