"""Broker tokens, web sessions and login attempts (API keys: service.repositories.api_keys)."""

from __future__ import annotations

import hmac
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service import audit
from service.errors import AppError, NotFound
from service.models.auth import BrokerToken, LoginAttempt, UserSession
from service.models.base import utcnow
from service.pagination import keyset, page
from service.repositories import api_keys as api_keys_repo
from service.repositories import logs as logs_repo
from service.repositories import users as users_repo
from service.schemas.auth import BrokerTokenPut, LoginAttemptCreate, SessionCreate
from service.security import Keyring

MAX_SESSIONS_PER_USER = 5


# --- broker tokens -----------------------------------------------------------------------------


def _no_token(name: str) -> NotFound:
    return NotFound(f"User {name!r} has no broker token.")


async def get_broker_token(session: AsyncSession, name: str, *, lock: bool = False) -> BrokerToken:
    query = select(BrokerToken).where(BrokerToken.name == name)
    if lock:
        query = query.with_for_update()
    row = await session.scalar(query)
    if row is None:
        raise _no_token(name)
    return row


def _utc(at: datetime | None) -> datetime | None:
    return at.astimezone(UTC) if at is not None else None


def _same_secret(keyring: Keyring, ciphertext: str | None, plaintext: str | None) -> bool:
    if ciphertext is None or plaintext is None:
        return ciphertext is None and plaintext is None
    try:
        stored = keyring.decrypt(ciphertext)
    except AppError:  # unreadable under our keys: certainly not what we are storing now
        return False
    return hmac.compare_digest(stored.encode(), plaintext.encode())


async def put_broker_token(
    session: AsyncSession, keyring: Keyring, name: str, data: BrokerTokenPut
) -> tuple[BrokerToken, bool]:
    """Store the user's broker token (a full replacement); returns the row and whether it changed."""
    await users_repo.require_user(session, name)
    row = await session.scalar(
        select(BrokerToken).where(BrokerToken.name == name).with_for_update()
    )
    auth_token = None if data.revoked else data.auth_token.get_secret_value()
    feed_token = (
        None if data.revoked or data.feed_token is None else data.feed_token.get_secret_value()
    )
    refresh_token = (
        None
        if data.revoked or data.refresh_token is None
        else data.refresh_token.get_secret_value()
    )
    # Encrypted again, a token reads as changed by its ciphertext: these are known to be the same.
    same_tokens = (
        []
        if row is None
        else [
            field
            for field, stored, given in (
                ("auth_token", row.auth_token_encrypted, auth_token),
                ("feed_token", row.feed_token_encrypted, feed_token),
                ("refresh_token", row.refresh_token_encrypted, refresh_token),
            )
            if _same_secret(keyring, stored, given)
        ]
    )
    changed = (
        row is None
        or (row.broker, row.user_id, row.revoked, row.expires_at)
        != (data.broker, data.user_id, data.revoked, _utc(data.expires_at))
        or len(same_tokens) < 3
    )
    before = audit.BROKER_TOKEN.snapshot_if(row)
    if row is None:
        row = BrokerToken(name=name)
        session.add(row)
    row.broker = data.broker
    row.user_id = data.user_id
    row.revoked = data.revoked
    row.auth_token_encrypted = keyring.encrypt(auth_token) if auth_token is not None else None
    row.feed_token_encrypted = keyring.encrypt(feed_token) if feed_token is not None else None
    row.refresh_token_encrypted = (
        keyring.encrypt(refresh_token) if refresh_token is not None else None
    )
    # In UTC, as it reads back: the answer, the cached KeyOwner and the audit trail agree.
    row.expires_at = None if data.revoked else _utc(data.expires_at)
    await session.flush()
    await api_keys_repo.invalidate_user(session, name)
    await audit.record(
        session,
        audit.BROKER_TOKEN,
        "create" if before is None else "update",
        name,
        before=before,
        after=audit.BROKER_TOKEN.snapshot(row),
        unchanged=same_tokens,
    )
    return row, changed


async def get_broker_secret(
    session: AsyncSession, keyring: Keyring, name: str
) -> tuple[BrokerToken, str, str | None, str | None]:
    """The row and its auth, feed and refresh tokens in plaintext. An expired token is still
    returned: its refresh token is what renews it."""
    row = await get_broker_token(session, name)
    if row.revoked or row.auth_token_encrypted is None:
        raise NotFound(f"The broker token of {name!r} is revoked.")
    feed, refresh = row.feed_token_encrypted, row.refresh_token_encrypted
    return (
        row,
        keyring.decrypt(row.auth_token_encrypted),
        keyring.decrypt(feed) if feed else None,
        keyring.decrypt(refresh) if refresh else None,
    )


async def revoke_broker_token(session: AsyncSession, name: str) -> BrokerToken:
    """Mark the token revoked and drop the tokens themselves: a revoked row keeps no secret."""
    row = await get_broker_token(session, name, lock=True)
    before = audit.BROKER_TOKEN.snapshot(row)
    row.revoked = True
    row.auth_token_encrypted = None
    row.feed_token_encrypted = None
    row.refresh_token_encrypted = None
    await session.flush()
    await api_keys_repo.invalidate_user(session, name)
    after = audit.BROKER_TOKEN.snapshot(row)
    await audit.record(session, audit.BROKER_TOKEN, "revoke", name, before=before, after=after)
    return row


# --- sessions ----------------------------------------------------------------------------------


def _live(now: datetime) -> ColumnElement[bool]:
    return UserSession.expires_at > now


async def create_session(
    session: AsyncSession, data: SessionCreate, *, lifetime: timedelta
) -> UserSession:
    """Register a login: it replaces the user's session from the same IP, and the oldest goes
    when the user already has the maximum. The user's expired sessions go first: they count
    for nothing.

    Locking the user row serialises logins of one user, so the cap holds under concurrency.
    """
    now = utcnow()
    await users_repo.get_user(session, data.username, lock=True)
    mine = UserSession.username == data.username
    await session.execute(delete(UserSession).where(mine, ~_live(now)))
    if data.ip_address is not None:
        await session.execute(
            delete(UserSession).where(mine, UserSession.ip_address == data.ip_address)
        )
    ids = list(
        await session.scalars(
            select(UserSession.id).where(mine).order_by(UserSession.created_at, UserSession.id)
        )
    )
    surplus = len(ids) - (MAX_SESSIONS_PER_USER - 1)
    if surplus > 0:
        await session.execute(delete(UserSession).where(UserSession.id.in_(ids[:surplus])))
    values = data.model_dump()
    values["expires_at"] = (data.expires_at or now + lifetime).astimezone(UTC)
    row = UserSession(**values, created_at=now, last_seen=now)
    session.add(row)
    await session.flush()
    return row


async def list_sessions(
    session: AsyncSession, username: str | None, *, limit: int
) -> list[UserSession]:
    query = (
        select(UserSession)
        .where(_live(utcnow()))
        .order_by(UserSession.last_seen.desc(), UserSession.id.desc())
        .limit(limit)
    )
    if username is not None:
        query = query.where(UserSession.username == username)
    return list(await session.scalars(query))


def _no_session(session_id: str) -> NotFound:
    return NotFound(f"No session {session_id!r}.")


async def touch_session(session: AsyncSession, session_id: str) -> None:
    """Mark a live session as seen; an expired one is as good as gone (404)."""
    now = utcnow()
    result = await session.execute(
        update(UserSession)
        .where(UserSession.session_id == session_id, _live(now))
        .values(last_seen=now)
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise _no_session(session_id)


async def delete_session(session: AsyncSession, session_id: str) -> None:
    result = await session.execute(delete(UserSession).where(UserSession.session_id == session_id))
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise _no_session(session_id)


async def delete_user_sessions(session: AsyncSession, username: str) -> int:
    result = await session.execute(delete(UserSession).where(UserSession.username == username))
    deleted: int = result.rowcount  # type: ignore[attr-defined]
    return deleted


async def purge_expired_sessions(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    """Delete the sessions past their expiry, in chunks as log retention does; how many went."""
    table = UserSession.__table__
    return await logs_repo.delete_before(
        sessionmaker,
        table,  # type: ignore[arg-type]
        table.c.expires_at,
        utcnow(),
    )


# --- login attempts ----------------------------------------------------------------------------


async def create_login_attempt(session: AsyncSession, data: LoginAttemptCreate) -> LoginAttempt:
    row = LoginAttempt(**data.model_dump(), created_at=utcnow())
    session.add(row)
    await session.flush()
    return row


async def list_login_attempts(
    session: AsyncSession,
    *,
    status: str | None,
    username: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[LoginAttempt], str | None]:
    query = select(LoginAttempt)
    if status is not None:
        query = query.where(LoginAttempt.status == status)
    if username is not None:
        query = query.where(LoginAttempt.username == username)
    query = keyset(query, LoginAttempt.created_at, LoginAttempt.id, cursor=cursor, limit=limit)
    return page(list(await session.scalars(query)), limit, "created_at")


async def delete_login_attempts(session: AsyncSession, before: datetime | None) -> int:
    query = delete(LoginAttempt)
    if before is not None:
        query = query.where(LoginAttempt.created_at < before)
    result = await session.execute(query)
    deleted: int = result.rowcount  # type: ignore[attr-defined]
    return deleted
