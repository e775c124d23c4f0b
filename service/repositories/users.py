"""Users: accounts, password checks (argon2 + pepper, rehash on success) and TOTP."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service import audit, totp
from service.errors import Conflict, NotFound
from service.models.auth import ApiKey, BrokerToken
from service.models.base import utcnow
from service.models.users import User, UserPreference
from service.schemas.users import UserCreate, UserUpdate
from service.security import Keyring


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
    session: AsyncSession, *, is_admin: bool | None = None, email: str | None = None, limit: int
) -> list[User]:
    query = select(User).order_by(User.username).limit(limit)
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


async def create_user(
    session: AsyncSession, keyring: Keyring, data: UserCreate, password_hash: str
) -> User:
    """Create a user with a fresh TOTP secret (stored encrypted; TOTP stays off until enabled).

    `password_hash` is computed by the caller before the transaction begins.
    """
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
    now = utcnow()
    user = User(
        created_at=now,
        updated_at=now,
        username=data.username,
        email=data.email,
        password_hash=password_hash,
        is_admin=data.is_admin,
        first_name=data.first_name,
        last_name=data.last_name,
        totp_secret_encrypted=keyring.encrypt(totp.new_secret()),
    )
    session.add(user)
    await session.flush()
    await audit.record(
        session, audit.USER, "create", user.username, after=audit.USER.snapshot(user)
    )
    return user


async def update_user(session: AsyncSession, username: str, data: UserUpdate) -> User:
    user = await get_user(session, username, lock=True)
    changes = data.model_dump(include=data.model_fields_set)
    if "email" in changes and await _email_taken(session, changes["email"], other_than=user.id):
        raise Conflict("A user with this email exists already.")
    before = audit.USER.snapshot(user)
    for field, value in changes.items():
        setattr(user, field, value)
    await session.flush()
    await audit.record(
        session, audit.USER, "update", username, before=before, after=audit.USER.snapshot(user)
    )
    return user


async def set_password(session: AsyncSession, username: str, password_hash: str) -> None:
    user = await get_user(session, username, lock=True)
    before = audit.USER.snapshot(user)
    user.password_hash = password_hash
    await session.flush()
    await audit.record(
        session,
        audit.USER,
        "set_password",
        username,
        before=before,
        after=audit.USER.snapshot(user),
    )


async def delete_user(session: AsyncSession, username: str) -> None:
    """Delete the user; the database cascades to its API key, broker token and sessions.

    The caller invalidates the cached verification of the user's API key in the same
    transaction (`api_keys.invalidate_user`).
    """
    user = await get_user(session, username, lock=True)
    # What the cascade takes with the user is recorded as deleted too.
    key = await session.scalar(select(ApiKey).where(ApiKey.user_id == username))
    token = await session.scalar(select(BrokerToken).where(BrokerToken.name == username))
    gone = [
        (audit.USER, audit.USER.snapshot(user)),
        (audit.API_KEY, audit.API_KEY.snapshot_if(key)),
        (audit.BROKER_TOKEN, audit.BROKER_TOKEN.snapshot_if(token)),
    ]
    await session.delete(user)
    await session.flush()
    for resource, before in gone:
        await audit.record(session, resource, "delete", username, before=before)


async def password_of(session: AsyncSession, username: str) -> Any:
    """(id, password_hash) of the user, or None."""
    return (
        await session.execute(select(User.id, User.password_hash).where(User.username == username))
    ).first()


async def replace_password_hash(session: AsyncSession, user_id: int, old: str, new: str) -> None:
    """Store a re-hashed password, only if no one changed the password meanwhile."""
    await session.execute(
        update(User).where(User.id == user_id, User.password_hash == old).values(password_hash=new)
    )


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


# --- preferences -------------------------------------------------------------------------------


def _no_preference(username: str, key: str) -> NotFound:
    return NotFound(f"User {username!r} has no preference {key!r}.")


async def list_preferences(session: AsyncSession, username: str) -> dict[str, Any]:
    await require_user(session, username)
    rows = await session.execute(
        select(UserPreference.key, UserPreference.value)
        .where(UserPreference.username == username)
        .order_by(UserPreference.key)
    )
    return {row.key: row.value for row in rows}


async def get_preference(session: AsyncSession, username: str, key: str) -> UserPreference:
    await require_user(session, username)
    row = await session.scalar(
        select(UserPreference).where(UserPreference.username == username, UserPreference.key == key)
    )
    if row is None:
        raise _no_preference(username, key)
    return row


async def put_preference(
    session: AsyncSession, username: str, key: str, value: Any
) -> tuple[UserPreference, bool]:
    """Set one preference; (the row, whether it was created). The user row is locked, so two
    first writes of one key cannot both insert."""
    await get_user(session, username, lock=True)
    row = await session.scalar(
        select(UserPreference).where(UserPreference.username == username, UserPreference.key == key)
    )
    created = row is None
    if row is None:
        row = UserPreference(username=username, key=key)
        session.add(row)
    row.value = value
    row.updated_at = utcnow()
    await session.flush()
    return row, created


async def delete_preference(session: AsyncSession, username: str, key: str) -> None:
    await require_user(session, username)
    result = await session.execute(
        delete(UserPreference).where(UserPreference.username == username, UserPreference.key == key)
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise _no_preference(username, key)
