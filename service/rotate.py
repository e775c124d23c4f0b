"""`python -m service rotate-keys`: re-encrypt every stored secret under the newest key.

Each encrypted column is walked by primary key in bounded transactions, so a large table never
holds a long lock, and an interrupted run can simply be started again.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from service.config import Settings
from service.models.settings import PlatformSettings
from service.security import Keyring

BATCH = 500

# Every (model, encrypted column names) in the schema. A domain that stores a secret adds itself.
ENCRYPTED: list[tuple[type[Any], tuple[str, ...]]] = [
    (PlatformSettings, ("smtp_password_encrypted",)),
]


async def reencrypt_all(engine: AsyncEngine, keyring: Keyring) -> dict[str, int]:
    counts: dict[str, int] = {}
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    for model, columns in ENCRYPTED:
        pk = model.__mapper__.primary_key[0]
        for column_name in columns:
            column = getattr(model, column_name)
            changed = 0
            last: Any = None
            while True:
                async with sessionmaker() as session, session.begin():
                    query = select(pk, column).where(column.is_not(None)).order_by(pk).limit(BATCH)
                    if last is not None:
                        query = query.where(pk > last)
                    rows = (await session.execute(query)).all()
                    for key, ciphertext in rows:
                        if keyring.needs_reencrypt(ciphertext):
                            await session.execute(
                                update(model)
                                .where(pk == key)
                                .values({column_name: keyring.reencrypt(ciphertext)})
                            )
                            changed += 1
                if len(rows) < BATCH:
                    break
                last = rows[-1][0]
            counts[f"{model.__tablename__}.{column_name}"] = changed
    return counts


async def rotate_keys(settings: Settings) -> dict[str, int]:
    from service.db import make_engine

    engine = make_engine(settings, null_pool=True)
    try:
        counts = await reencrypt_all(engine, Keyring(settings))
    finally:
        await engine.dispose()
    for name, count in counts.items():
        print(f"{name}: {count} re-encrypted")
    return counts
