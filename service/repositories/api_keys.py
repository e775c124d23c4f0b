"""API keys: stored as a keyed digest, an argon2 hash and a Fernet ciphertext; verified from memory.

Verification (service/runtime/api_keys.py) finds the row by its digest, HMAC-SHA256 of the key
under the pepper: one indexed read (`find_by_digests`) and one argon2 check, whatever the number
of users.

Every write that changes an answer invalidates the digest it was cached under through
`service.cache.invalidate`: the key's own writes, and broker-token writes of its user (a broker
token belongs to the user whose name it carries, which is the key's `user_id`).
"""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service import audit
from service.cache import invalidate
from service.errors import NotFound
from service.models.auth import ApiKey, BrokerToken
from service.models.base import utcnow
from service.repositories import users as users_repo
from service.schemas.audit import AuditAction
from service.security import Keyring

TOPIC = "api_keys"


def generate_key() -> str:
    return secrets.token_hex(32)


def _no_key(user_id: str) -> NotFound:
    return NotFound(f"User {user_id!r} has no API key.")


async def _get_row(session: AsyncSession, user_id: str, *, lock: bool = False) -> ApiKey:
    query = select(ApiKey).where(ApiKey.user_id == user_id)
    if lock:
        query = query.with_for_update()
    row = await session.scalar(query)
    if row is None:
        raise _no_key(user_id)
    return row


async def invalidate_user(session: AsyncSession, user_id: str) -> None:
    """Invalidate the cached verification of `user_id`'s key (e.g. its broker token changed).

    The row is locked so that a concurrent key rotation cannot slip a new digest past us.
    """
    digest = await session.scalar(
        select(ApiKey.key_digest).where(ApiKey.user_id == user_id).with_for_update()
    )
    if digest is not None:
        await invalidate(session, TOPIC, digest)


async def put_api_key(
    session: AsyncSession, keyring: Keyring, user_id: str, plaintext: str, key_hash: str
) -> ApiKey:
    """Store `plaintext` (hashed by the caller, before the transaction) as the user's key,
    replacing the earlier one. The order mode survives the replacement.
    """
    await users_repo.require_user(session, user_id)
    digest = keyring.pepper.digest(plaintext)
    row = await session.scalar(select(ApiKey).where(ApiKey.user_id == user_id).with_for_update())
    before = audit.API_KEY.snapshot_if(row)
    if row is None:
        row = ApiKey(user_id=user_id, order_mode="auto")
        session.add(row)
    else:
        await invalidate(session, TOPIC, row.key_digest)
    row.key_digest = digest
    row.key_hash = key_hash
    row.key_encrypted = keyring.encrypt(plaintext)
    row.created_at = utcnow()
    await session.flush()
    # The new digest may sit in the unknown-key cache, if someone tried it before it existed.
    await invalidate(session, TOPIC, digest)
    action: AuditAction = "create" if before is None else "rotate"
    await audit.record(
        session, audit.API_KEY, action, user_id, before=before, after=audit.API_KEY.snapshot(row)
    )
    return row


async def get_api_key(session: AsyncSession, keyring: Keyring, user_id: str) -> tuple[ApiKey, str]:
    row = await _get_row(session, user_id)
    return row, keyring.decrypt(row.key_encrypted)


async def delete_api_key(session: AsyncSession, user_id: str) -> None:
    row = await _get_row(session, user_id, lock=True)
    await invalidate(session, TOPIC, row.key_digest)
    await session.delete(row)
    await session.flush()
    await audit.record(
        session, audit.API_KEY, "delete", user_id, before=audit.API_KEY.snapshot(row)
    )


async def set_order_mode(session: AsyncSession, user_id: str, order_mode: str) -> ApiKey:
    row = await _get_row(session, user_id, lock=True)
    if row.order_mode != order_mode:
        before = audit.API_KEY.snapshot(row)
        row.order_mode = order_mode
        await session.flush()
        await invalidate(session, TOPIC, row.key_digest)
        after = audit.API_KEY.snapshot(row)
        await audit.record(session, audit.API_KEY, "update", user_id, before=before, after=after)
    return row


# --- what verification reads and writes ------------------------------------------------------

_LOOKUP = select(
    ApiKey.id,
    ApiKey.user_id,
    ApiKey.key_digest,
    ApiKey.key_hash,
    ApiKey.order_mode,
    BrokerToken.broker,
    BrokerToken.revoked,
    BrokerToken.auth_token_encrypted,
    BrokerToken.feed_token_encrypted,
    BrokerToken.expires_at,
).outerjoin(BrokerToken, BrokerToken.name == ApiKey.user_id)


async def find_by_digests(session: AsyncSession, digests: list[str]) -> Any:
    """The key stored under one of `digests`, with its user's broker token (or None)."""
    return (await session.execute(_LOOKUP.where(ApiKey.key_digest.in_(digests)))).first()


async def move_key_digest(
    session: AsyncSession, row_id: int, old_digest: str, digest: str, key_hash: str
) -> bool:
    """Re-key a row under the newest pepper; False if someone changed the key meanwhile."""
    result = await session.execute(
        update(ApiKey)
        .where(ApiKey.id == row_id, ApiKey.key_digest == old_digest)
        .values(key_digest=digest, key_hash=key_hash)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


async def key_page(session: AsyncSession, after_id: int, size: int) -> Any:
    """(id, key_digest, key_encrypted) of up to `size` keys after `after_id`, by id."""
    return (
        await session.execute(
            select(ApiKey.id, ApiKey.key_digest, ApiKey.key_encrypted)
            .where(ApiKey.id > after_id)
            .order_by(ApiKey.id)
            .limit(size)
        )
    ).all()
