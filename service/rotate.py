"""`python -m service rotate-keys`: re-encrypt every stored secret under the newest key.

Each encrypted column is walked by primary key in bounded transactions, so a large table never
holds a long lock, and an interrupted run can simply be started again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from service.config import Settings
from service.db import begin_write, make_engine, short_transaction
from service.errors import AppError
from service.models.auth import ApiKey, BrokerToken
from service.models.settings import PlatformSettings
from service.models.users import User
from service.repositories import api_keys as api_keys_repo
from service.security import Keyring, SecretUnreadable, run_argon2

BATCH = 500

# Every (model, encrypted column names) in the schema. A domain that stores a secret adds itself.
ENCRYPTED: list[tuple[type[Any], tuple[str, ...]]] = [
    (PlatformSettings, ("smtp_password_encrypted",)),
    (User, ("totp_secret_encrypted",)),
    (BrokerToken, ("auth_token_encrypted", "feed_token_encrypted", "refresh_token_encrypted")),
    (ApiKey, ("key_encrypted",)),
]

# Values derived from a secret under the pepper (keyed digests, hashes) that a domain recomputes
# from the decrypted secret, after the re-encryption above; each returns its counts.
Rederive = Callable[[async_sessionmaker[AsyncSession], Keyring], Awaitable[dict[str, int]]]


# --- API keys: digests and hashes under the newest pepper ------------------------------------

REDERIVE_BATCH = 50


async def rederive_api_keys(
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
        async with short_transaction(sessionmaker) as session:
            rows = await api_keys_repo.key_page(session, last, REDERIVE_BATCH)
        updates = []
        for row in rows:
            try:
                plaintext = keyring.decrypt(row.key_encrypted)
            except AppError:
                unreadable += 1
                continue
            digest = keyring.pepper.digest(plaintext)
            if digest != row.key_digest:
                key_hash = await run_argon2(keyring.passwords.hash, plaintext)
                updates.append((row.id, row.key_digest, digest, key_hash))
        if updates:
            async with short_transaction(sessionmaker, write=True) as session:
                for row_id, old, digest, key_hash in updates:
                    changed += await api_keys_repo.move_key_digest(
                        session, row_id, old, digest, key_hash
                    )
        if len(rows) < REDERIVE_BATCH:
            break
        last = rows[-1].id
    counts = {"api_keys.key_digest": changed}
    if unreadable:
        counts["api_keys.key_digest.unreadable"] = unreadable
    return counts


REDERIVED: list[Rederive] = [rederive_api_keys]


async def reencrypt_all(engine: AsyncEngine, keyring: Keyring) -> dict[str, int]:
    counts: dict[str, int] = {}
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    for model, columns in ENCRYPTED:
        pk = model.__mapper__.primary_key[0]
        for column_name in columns:
            column = getattr(model, column_name)
            changed = unreadable = 0
            last: Any = None
            while True:
                async with sessionmaker() as session:
                    await begin_write(session)  # the batch reads, then writes
                    query = select(pk, column).where(column.is_not(None)).order_by(pk).limit(BATCH)
                    if last is not None:
                        query = query.where(pk > last)
                    rows = (await session.execute(query)).all()
                    for key, ciphertext in rows:
                        if not keyring.needs_reencrypt(ciphertext):
                            continue
                        try:
                            renewed = keyring.reencrypt(ciphertext)
                        except SecretUnreadable:  # under no key held: nothing to rotate it to
                            unreadable += 1
                            continue
                        # Only if unchanged: the service may have stored a new secret meanwhile.
                        result = await session.execute(
                            update(model)
                            .where(pk == key, column == ciphertext)
                            .values({column_name: renewed})
                        )
                        changed += result.rowcount  # type: ignore[attr-defined]
                    await session.commit()
                if len(rows) < BATCH:
                    break
                last = rows[-1][0]
            counts[f"{model.__tablename__}.{column_name}"] = changed
            if unreadable:
                counts[f"{model.__tablename__}.{column_name}.unreadable"] = unreadable
    for rederive in REDERIVED:
        counts.update(await rederive(sessionmaker, keyring))
    return counts


async def rotate_keys(settings: Settings) -> dict[str, int]:
    engine = make_engine(settings, null_pool=True)
    try:
        counts = await reencrypt_all(engine, Keyring(settings))
    finally:
        await engine.dispose()
    for name, count in counts.items():
        if name.endswith(".unreadable"):
            print(f"{name.removesuffix('.unreadable')}: {count} under no key held, left as is")
        else:
            print(f"{name}: {count} re-encrypted")
    return counts
