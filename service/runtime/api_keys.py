"""API-key verification, on every order's path: answered from memory by the key's digest.

What a key answers is cached by its digest (never by the key); unknown digests are cached
briefly, so a flood of bad keys costs neither argon2 nor a database read per request. The cache
is invalidated through the one invalidation path (topic `api_keys`, key = the digest) by every
write that changes an answer (service/repositories/api_keys.py).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.cache import ALL, CacheRegistry, InvalidationBus
from service.db import short_transaction
from service.errors import AppError
from service.models.base import utcnow
from service.repositories import api_keys as api_keys_repo
from service.repositories.api_keys import TOPIC
from service.security import Keyring, PasswordHasher, run_argon2

logger = logging.getLogger("service.auth")

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


class BrokerTokenExpired(AppError):
    status = 410
    title = "Broker token expired"
    type_ = "broker-token-expired"
    default_detail = (
        "The key is valid, but its user's broker token is past its expiry: log in to the broker "
        "again (or renew it with its refresh token)."
    )


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
    """What a verified key answers. Broker tokens stay encrypted in memory.

    `broker_token` is the state as stored; whether an active token has expired is decided
    against `expires_at` each time an answer is made (`token_state`), never when it is cached.
    """

    user_id: str
    order_mode: str
    broker_token: Literal["active", "revoked", "missing"]
    broker: str | None
    auth_token_encrypted: str | None
    feed_token_encrypted: str | None
    expires_at: datetime | None = None

    def token_state(self) -> Literal["active", "expired", "revoked", "missing"]:
        if (
            self.broker_token == "active"
            and self.expires_at is not None
            and self.expires_at <= utcnow()
        ):
            return "expired"
        return self.broker_token


class ApiKeyVerifier:
    """Answers API-key verification from memory, falling back to one indexed read.

    It opens its own short transactions, and only on a cache miss: the request session would
    begin a write transaction for every POST (on SQLite, the write lock), on every order.
    """

    def __init__(
        self,
        keyring: Keyring,
        sessionmaker: async_sessionmaker[AsyncSession],
        caches: CacheRegistry,
        bus: InvalidationBus,
    ) -> None:
        self._keyring = keyring
        self._sessionmaker = sessionmaker
        self._known = caches.get("api_keys", topic=TOPIC)
        self._unknown = caches.get(
            "api_keys_unknown", topic=TOPIC, ttl=UNKNOWN_TTL, max_size=UNKNOWN_MAX
        )
        # Cold lookups in flight, under every digest the key may be stored as. An invalidation
        # of one of them (or of everything) while it runs means what it read may already be
        # stale: it must not fill the cache, and later requests must not join it. Tracked per
        # digest, so that other users' writes (broker logins at market open) do not keep
        # unrelated answers out of the cache.
        self._in_flight: dict[str, list[_Lookup]] = {}
        self._joinable: dict[str, _Lookup] = {}
        bus.subscribe(TOPIC, self._on_invalidate)
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

    def cached(self, api_key: str) -> KeyOwner | None:
        """The key's owner if its answer is in memory; None says nothing (ask `verify`). Raises
        ApiKeyUnknown when memory holds that no user has the key, as `verify` would."""
        digest = self._keyring.peppers[0].digest(api_key)
        owner: KeyOwner | None = self._known.peek(digest)
        if owner is None and self._unknown.peek(digest) is not None:
            self._known.misses += 1  # counted as `verify` counts it: a miss, then a known unknown
            raise ApiKeyUnknown()
        return owner

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
        async with short_transaction(self._sessionmaker) as session:
            row = await api_keys_repo.find_by_digests(session, digests)
        if row is None:
            return None, False
        index = digests.index(row.key_digest)
        valid, new_hash = await run_argon2(self._check, api_key, row.key_hash, index)
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
            expires_at=_aware(row.expires_at),
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
            async with short_transaction(self._sessionmaker, write=True) as session:
                return await api_keys_repo.move_key_digest(
                    session, row_id, old_digest, digest, key_hash
                )
        except IntegrityError:
            return False


def _aware(at: datetime | None) -> datetime | None:
    # The Core select reads the column through its UTCDateTime type already; a naive value
    # (a driver that skipped it) is UTC, as every stored timestamp is.
    return at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at


def verification(keyring: Keyring, owner: KeyOwner, *, auth: bool, feed: bool) -> dict[str, Any]:
    """The answer of a key verification (ApiKeyVerification's shape): the broker tokens in
    plaintext only when asked for, each field present only when asked for."""
    answer: dict[str, Any] = {
        "user_id": owner.user_id,
        "order_mode": owner.order_mode,
        "broker": owner.broker,
        "broker_token": owner.token_state(),
    }
    if auth or feed:
        auth_token, feed_token = broker_tokens(keyring, owner, auth=auth, feed=feed)
        if auth:
            answer["auth_token"] = auth_token
        if feed:
            answer["feed_token"] = feed_token
    return answer


def broker_tokens(
    keyring: Keyring, owner: KeyOwner, *, auth: bool, feed: bool
) -> tuple[str | None, str | None]:
    """The owner's broker tokens in plaintext (each only if asked for), or why there are none."""
    state = owner.token_state()
    if state == "missing":
        raise BrokerTokenMissing(f"User {owner.user_id!r} has no broker token.")
    if state == "revoked" or owner.auth_token_encrypted is None:
        raise BrokerTokenRevoked(f"The broker token of {owner.user_id!r} is revoked.")
    if state == "expired":
        assert owner.expires_at is not None
        raise BrokerTokenExpired(
            f"The broker token of {owner.user_id!r} expired at {owner.expires_at.isoformat()}."
        )
    auth_token = keyring.decrypt_often(owner.auth_token_encrypted) if auth else None
    feed_token = (
        keyring.decrypt_often(owner.feed_token_encrypted)
        if feed and owner.feed_token_encrypted
        else None
    )
    return auth_token, feed_token
