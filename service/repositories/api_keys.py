"""API keys: stored as a keyed digest, an argon2 hash and a Fernet ciphertext; verified from memory.

Verification (on every order's path) finds the row by its digest, HMAC-SHA256 of the key under
the pepper: one indexed read and one argon2 check, whatever the number of users. What a key
answers is then cached by that digest (never by the key); unknown digests are cached briefly, so
a flood of bad keys costs neither argon2 nor a database read per request.

Every write that changes an answer invalidates the digest it was cached under through
`service.cache.invalidate`: the key's own writes, and broker-token writes of its user (a broker
token belongs to the user whose name it carries, which is the key's `user_id`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.cache import ALL, invalidate
from service.errors import AppError, NotFound
from service.models.auth import ApiKey, BrokerToken
from service.models.base import utcnow
from service.repositories import users as users_repo
from service.security import Keyring, PasswordHasher
from service.state import AppState

logger = logging.getLogger("service.auth")

TOPIC = "api_keys"
UNKNOWN_TTL = 30.0
UNKNOWN_MAX = 10_000


class ApiKeyUnknown(AppError):
    status = 401
    title = "Unknown API key"
    type_ = "api-key-unknown"
    default_detail = "No user has this API key (it may have been rotated or deleted)."


class BrokerTokenMissing(AppError):
    status = 404
    title = "No broker token"
    type_ = "broker-token-missing"
    default_detail = (
        "The key is valid, but its user has no broker token (never logged in to a broker)."
    )


class BrokerTokenRevoked(AppError):
    status = 410
    title = "Broker token revoked"
    type_ = "broker-token-revoked"
    default_detail = (
        "The key is valid, but its user's broker token was revoked: log in to the broker again."
    )


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
    session: AsyncSession, keyring: Keyring, user_id: str, api_key: str | None
) -> tuple[ApiKey, str]:
    """Store a new key for the user (generated when None), replacing the earlier one.

    Returns the row and the plaintext key. The order mode survives the replacement.
    """
    await users_repo.require_user(session, user_id)
    plaintext = api_key or generate_key()
    digest = keyring.pepper.digest(plaintext)
    key_hash = await users_repo.run_argon2(keyring.passwords.hash, plaintext)
    row = await session.scalar(select(ApiKey).where(ApiKey.user_id == user_id).with_for_update())
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
    return row, plaintext


async def get_api_key(session: AsyncSession, keyring: Keyring, user_id: str) -> tuple[ApiKey, str]:
    row = await _get_row(session, user_id)
    return row, keyring.decrypt(row.key_encrypted)


async def delete_api_key(session: AsyncSession, user_id: str) -> None:
    row = await _get_row(session, user_id, lock=True)
    await invalidate(session, TOPIC, row.key_digest)
    await session.delete(row)
    await session.flush()


async def set_order_mode(session: AsyncSession, user_id: str, order_mode: str) -> ApiKey:
    row = await _get_row(session, user_id, lock=True)
    if row.order_mode != order_mode:
        row.order_mode = order_mode
        await session.flush()
        await invalidate(session, TOPIC, row.key_digest)
    return row


# --- verification ------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Lookup:
    """One cold lookup, shared by every request for the same key while it runs."""

    digest: str
    task: asyncio.Future[KeyOwner | None] | None = None
    stale: bool = False


def _retrieve(task: asyncio.Future[object]) -> None:
    """Mark a failed shared lookup's exception as seen, even if every waiter went away."""
    if not task.cancelled():
        task.exception()


@dataclass(frozen=True, slots=True)
class KeyOwner:
    """What a verified key answers. Broker tokens stay encrypted in memory."""

    user_id: str
    order_mode: str
    broker_token: Literal["active", "revoked", "missing"]
    broker: str | None
    auth_token_encrypted: str | None
    feed_token_encrypted: str | None


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
).outerjoin(BrokerToken, BrokerToken.name == ApiKey.user_id)


class ApiKeyVerifier:
    """Answers API-key verification from memory, falling back to one indexed read.

    It opens its own short transactions, and only on a cache miss: the request session would
    begin a write transaction for every POST (on SQLite, the write lock), on every order.
    """

    def __init__(self, state: AppState) -> None:
        self._keyring = state.keyring
        self._sessionmaker = state.sessionmaker
        self._known = state.caches.get("api_keys", topic=TOPIC)
        self._unknown = state.caches.get(
            "api_keys_unknown", topic=TOPIC, ttl=UNKNOWN_TTL, max_size=UNKNOWN_MAX
        )
        # Cold lookups in flight, under every digest the key may be stored as. An invalidation
        # of one of them (or of everything) while it runs means what it read may already be
        # stale: it must not fill the cache, and later requests must not join it. Tracked per
        # digest, so that other users' writes (broker logins at market open) do not keep
        # unrelated answers out of the cache.
        self._in_flight: dict[str, list[_Lookup]] = {}
        self._joinable: dict[str, _Lookup] = {}
        state.bus.subscribe(TOPIC, self._on_invalidate)
        self._older_hashers: dict[int, PasswordHasher] = {}

    def _on_invalidate(self, key: str) -> None:
        if key == ALL:
            lookups = [lookup for group in self._in_flight.values() for lookup in group]
        else:
            lookups = self._in_flight.get(key, [])
        for lookup in lookups:
            lookup.stale = True
            if self._joinable.get(lookup.digest) is lookup:
                del self._joinable[lookup.digest]

    async def verify(self, api_key: str) -> KeyOwner:
        digests = [pepper.digest(api_key) for pepper in self._keyring.peppers]
        digest = digests[0]
        owner: KeyOwner | None = self._known.get(digest)
        if owner is not None:
            return owner
        if self._unknown.get(digest) is not None:
            raise ApiKeyUnknown()
        # Equal digests mean equal keys: concurrent requests for one key share one lookup, so
        # an order burst right after an invalidation costs one argon2 check, not one each.
        lookup = self._joinable.get(digest)
        if lookup is None:
            lookup = _Lookup(digest)
            lookup.task = asyncio.ensure_future(self._resolve(api_key, digests, lookup))
            lookup.task.add_done_callback(_retrieve)  # type: ignore[arg-type]
            self._joinable[digest] = lookup
        assert lookup.task is not None
        owner = await asyncio.shield(lookup.task)
        if owner is None:
            raise ApiKeyUnknown()
        return owner

    async def _resolve(self, api_key: str, digests: list[str], lookup: _Lookup) -> KeyOwner | None:
        for digest in digests:
            self._in_flight.setdefault(digest, []).append(lookup)
        try:
            owner, current = await self._look_up(api_key, digests)
            if not lookup.stale:
                if owner is None:
                    self._unknown.set(lookup.digest, True)
                elif current:  # cached only under the digest its writes invalidate
                    self._known.set(lookup.digest, owner)
            return owner
        finally:
            if self._joinable.get(lookup.digest) is lookup:
                del self._joinable[lookup.digest]
            for digest in digests:
                group = self._in_flight[digest]
                group.remove(lookup)
                if not group:
                    del self._in_flight[digest]

    async def _look_up(self, api_key: str, digests: list[str]) -> tuple[KeyOwner | None, bool]:
        """One indexed read and one argon2 check; (owner, whether its row is under the newest
        pepper), or (None, False) for an unknown key."""
        async with users_repo.short_transaction(self._sessionmaker) as session:
            row = (await session.execute(_LOOKUP.where(ApiKey.key_digest.in_(digests)))).first()
        if row is None:
            return None, False
        index = digests.index(row.key_digest)
        valid, new_hash = await users_repo.run_argon2(self._check, api_key, row.key_hash, index)
        if not valid:
            logger.warning("API key of user %s matched its digest but not its hash", row.user_id)
            return None, False
        current = index == 0
        if new_hash is not None:
            current = await self._rehash(row.id, row.key_digest, digests[0], new_hash)
        owner = KeyOwner(
            user_id=row.user_id,
            order_mode=row.order_mode,
            broker_token=(
                "missing" if row.broker is None else "revoked" if row.revoked else "active"
            ),
            broker=row.broker if row.broker is not None and not row.revoked else None,
            auth_token_encrypted=row.auth_token_encrypted,
            feed_token_encrypted=row.feed_token_encrypted,
        )
        return owner, current

    def _check(self, api_key: str, stored: str, index: int) -> tuple[bool, str | None]:
        """One argon2 check under the pepper whose digest matched; a new hash if stale."""
        if index == 0:
            return self._keyring.passwords.verify(api_key, stored)
        hasher = self._older_hashers.get(index)
        if hasher is None:
            hasher = self._older_hashers[index] = PasswordHasher(
                self._keyring.peppers[index : index + 1]
            )
        valid, _ = hasher.verify(api_key, stored)
        return valid, self._keyring.passwords.hash(api_key) if valid else None

    async def _rehash(self, row_id: int, old_digest: str, digest: str, key_hash: str) -> bool:
        """Move the row to the newest pepper; False if someone changed the key meanwhile."""
        try:
            async with users_repo.short_transaction(self._sessionmaker, write=True) as session:
                result = await session.execute(
                    update(ApiKey)
                    .where(ApiKey.id == row_id, ApiKey.key_digest == old_digest)
                    .values(key_digest=digest, key_hash=key_hash)
                )
        except IntegrityError:
            return False
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def verifier(state: AppState) -> ApiKeyVerifier:
    found: ApiKeyVerifier | None = state.domains.get("api_key_verifier")
    if found is None:
        found = state.domains["api_key_verifier"] = ApiKeyVerifier(state)
    return found


def broker_tokens(
    keyring: Keyring, owner: KeyOwner, *, auth: bool, feed: bool
) -> tuple[str | None, str | None]:
    """The owner's broker tokens in plaintext (each only if asked for), or why there are none."""
    if owner.broker_token == "missing":
        raise BrokerTokenMissing(f"User {owner.user_id!r} has no broker token.")
    if owner.broker_token == "revoked" or owner.auth_token_encrypted is None:
        raise BrokerTokenRevoked(f"The broker token of {owner.user_id!r} is revoked.")
    auth_token = keyring.decrypt(owner.auth_token_encrypted) if auth else None
    feed_token = (
        keyring.decrypt(owner.feed_token_encrypted) if feed and owner.feed_token_encrypted else None
    )
    return auth_token, feed_token


# --- key rotation ------------------------------------------------------------------------------

REDERIVE_BATCH = 50


async def rederive_all(
    sessionmaker: async_sessionmaker[AsyncSession], keyring: Keyring
) -> dict[str, int]:
    """Recompute digest and hash of every key not yet under the newest pepper.

    The plaintext comes from the Fernet ciphertext, so keys nobody used during the rotation keep
    verifying once the previous pepper is dropped. argon2 runs outside any transaction; each row
    is updated only if its digest is still the one read.
    """
    changed = unreadable = 0
    last = 0
    while True:
        async with users_repo.short_transaction(sessionmaker) as session:
            rows = (
                await session.execute(
                    select(ApiKey.id, ApiKey.key_digest, ApiKey.key_encrypted)
                    .where(ApiKey.id > last)
                    .order_by(ApiKey.id)
                    .limit(REDERIVE_BATCH)
                )
            ).all()
        updates = []
        for row in rows:
            try:
                plaintext = keyring.decrypt(row.key_encrypted)
            except AppError:
                unreadable += 1
                continue
            digest = keyring.pepper.digest(plaintext)
            if digest != row.key_digest:
                key_hash = await users_repo.run_argon2(keyring.passwords.hash, plaintext)
                updates.append((row.id, row.key_digest, digest, key_hash))
        if updates:
            async with users_repo.short_transaction(sessionmaker, write=True) as session:
                for row_id, old, digest, key_hash in updates:
                    result = await session.execute(
                        update(ApiKey)
                        .where(ApiKey.id == row_id, ApiKey.key_digest == old)
                        .values(key_digest=digest, key_hash=key_hash)
                    )
                    changed += result.rowcount  # type: ignore[attr-defined]
        if len(rows) < REDERIVE_BATCH:
            break
        last = rows[-1].id
    counts = {"api_keys.key_digest": changed}
    if unreadable:
        counts["api_keys.key_digest.unreadable"] = unreadable
    return counts
